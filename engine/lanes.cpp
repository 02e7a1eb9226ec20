#include "engine/lanes.h"

#include "engine/ref_lane.h"
#include "formats/error.h"

namespace lockstep::engine {

std::vector<std::string> cpu_lane_names() {
  return {"ref"};
}

std::unique_ptr<Lane> make_cpu_lane(std::string_view name, const LaneOptions& options) {
  if (name == "ref") return std::make_unique<RefLane>();
  (void)options;
  throw Error("unknown lane \"" + std::string(name) + "\"; CPU lanes: ref");
}

}  // namespace lockstep::engine
