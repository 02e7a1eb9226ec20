#pragma once
// How far one tensor or one logit row is from another: the numbers every comparison reports.
// All sums are in double. Masked attention scores are -inf in every lane (see ref_lane.h); a
// position -inf in both tensors is skipped, -inf in only one makes the distance infinite.

#include <cstdint>
#include <span>

namespace lockstep::engine {

// ‖test − ref‖₂ / ‖ref‖₂ over the positions that are finite in both; 0 when both are equal
// there, +inf when the masks differ or ref is all zero while test is not. NaN in either → NaN.
double relative_rms(std::span<const float> test, std::span<const float> ref);
// max |test − ref| / max |ref| over the same positions.
double max_relative_error(std::span<const float> test, std::span<const float> ref);

// KL(softmax(ref) ‖ softmax(test)) in nats, for one row of logits.
double kl_divergence(std::span<const float> ref_logits, std::span<const float> test_logits);

}  // namespace lockstep::engine
