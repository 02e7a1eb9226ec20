#include "app/lanes.h"

#include "formats/error.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "cuda/cuda_lane.h"
#endif

namespace lockstep::app {

std::vector<std::string> lane_names() {
  std::vector<std::string> names = engine::cpu_lane_names();
#ifdef LOCKSTEP_HAVE_CUDA
  names.push_back("cuda");
  names.push_back("cuda-graph");
#endif
  return names;
}

std::string lane_list() {
  std::string s;
  for (const std::string& n : lane_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::unique_ptr<engine::Lane> make_lane(std::string_view name, const engine::LaneOptions& options) {
  const bool graphs = name == "cuda-graph";
  if (name != "cuda" && !graphs) {
    for (const std::string& n : engine::cpu_lane_names())
      if (n == name) return engine::make_cpu_lane(name, options);
    throw Error("unknown lane \"" + std::string(name) + "\"; lanes: " + lane_list());
  }
#ifdef LOCKSTEP_HAVE_CUDA
  // cuda-graph runs the cuda lane's node code, so it carries the faults cuda carries.
  if (options.fault) engine::check_fault_lane("cuda", *options.fault);
  return std::make_unique<cuda::CudaLane>(
      cuda::CudaLaneOptions{.fault = options.fault,
                            .graphs = graphs,
                            .weight_budget_bytes = options.gpu_weight_budget});
#else
  throw Error("this lockstep was built without the cuda lane (configure with LOCKSTEP_CUDA=ON "
              "where the CUDA toolkit is installed); lanes: " + lane_list());
#endif
}

}  // namespace lockstep::app
