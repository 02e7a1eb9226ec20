#pragma once
// RoPE frequencies shared by every lane: radians per position for each rotated pair.

#include <vector>

#include "engine/weights.h"

namespace lockstep::engine {

// [rope_dims / 2]: base^(-2i/rope_dims), then the config's scaling ("linear", "llama3") and
// rope_freqs divisors (read from `weights` when config.rope_freq_factors). Throws
// lockstep::Error for a scaling type no lane computes, or rope_freqs of the wrong size.
std::vector<double> rope_inv_freq(const ModelConfig& config, const Weights& weights);

}  // namespace lockstep::engine
