#pragma once
// The CPU lanes by name, for commands and the session: "ref" and "cpu". (CUDA lanes live in
// cuda/ and are added by the app, which links both.)

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/faults.h"
#include "engine/lane.h"

namespace lockstep::engine {

struct LaneOptions {
  unsigned threads = 0;  // cpu lane: 0 = one per hardware thread
  // A planted bug (engine/faults.h); only lanes the fault lists can carry one (today: cpu).
  std::optional<FaultSpec> fault;
  // cuda lanes: device bytes the weights may take before layers are streamed from host memory;
  // 0 = the free device memory less a margin.
  uint64_t gpu_weight_budget = 0;
};

std::vector<std::string> cpu_lane_names();  // {"ref", "cpu"}
// Throws lockstep::Error listing the known names for any other name, and for a fault on a lane
// that cannot carry it (ref, the oracle, never does).
std::unique_ptr<Lane> make_cpu_lane(std::string_view name, const LaneOptions& options = {});

// Throws lockstep::Error unless the fault's registry entry lists `lane` (ref never takes one).
void check_fault_lane(std::string_view lane, const FaultSpec& fault);

}  // namespace lockstep::engine
