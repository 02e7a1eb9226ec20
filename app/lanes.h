#pragma once
// Every lane this build can run, by name: the engine's CPU lanes, and "cuda" when the CUDA
// library is built (the engine itself knows nothing of CUDA).

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/lanes.h"

namespace lockstep::app {

std::vector<std::string> lane_names();  // "ref", "cpu"[, "cuda"]
std::string lane_list();                // the same, comma-separated, for help and errors
// Throws lockstep::Error for an unknown name (listing the known ones), a fault the lane cannot
// carry, "cuda" in a build without CUDA, or a CUDA device that cannot be used.
std::unique_ptr<engine::Lane> make_lane(std::string_view name, const engine::LaneOptions& options);

}  // namespace lockstep::app
