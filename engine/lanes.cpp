#include "engine/lanes.h"

#include "engine/cpu_lane.h"
#include "engine/ref_lane.h"
#include "formats/error.h"

namespace lockstep::engine {

std::vector<std::string> cpu_lane_names() {
  return {"ref", "cpu"};
}

std::unique_ptr<Lane> make_cpu_lane(std::string_view name, const LaneOptions& options) {
  if (name == "ref") return std::make_unique<RefLane>();
  if (name == "cpu") return std::make_unique<CpuLane>(CpuLaneOptions{.threads = options.threads});
  throw Error("unknown lane \"" + std::string(name) + "\"; CPU lanes: ref, cpu");
}

}  // namespace lockstep::engine
