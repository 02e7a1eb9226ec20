#include "engine/lanes.h"

#include <algorithm>

#include "engine/cpu_lane.h"
#include "engine/ref_lane.h"
#include "formats/error.h"

namespace lockstep::engine {

void check_fault_lane(std::string_view lane, const FaultSpec& fault) {
  const FaultInfo& info = fault_info(fault.kind);
  if (std::find(info.lanes.begin(), info.lanes.end(), lane) != info.lanes.end()) return;
  std::string lanes;
  for (std::string_view l : info.lanes) lanes += (lanes.empty() ? "" : ", ") + std::string(l);
  throw Error("the " + std::string(lane) + " lane cannot carry fault " + std::string(info.name) +
              (lane == "ref" ? " (ref is the oracle and never takes faults)" : "") +
              "; lanes that can: " + lanes);
}

std::vector<std::string> cpu_lane_names() {
  return {"ref", "cpu"};
}

std::unique_ptr<Lane> make_cpu_lane(std::string_view name, const LaneOptions& options) {
  if (name != "ref" && name != "cpu")
    throw Error("unknown lane \"" + std::string(name) + "\"; CPU lanes: ref, cpu");
  if (options.fault) check_fault_lane(name, *options.fault);
  if (name == "ref") return std::make_unique<RefLane>();
  return std::make_unique<CpuLane>(
      CpuLaneOptions{.threads = options.threads, .isa = std::nullopt, .fault = options.fault});
}

}  // namespace lockstep::engine
