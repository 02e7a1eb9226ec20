#pragma once
// Next-token sampling: greedy, or temperature / top-k / top-p over a softmax, drawn from a
// seeded std::mt19937_64 so that one seed always gives one sequence (on every platform: the
// uniform draw is computed here, not by a standard distribution whose algorithm may vary).

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace lockstep::engine {

struct SamplerConfig {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int32_t top_k = 0;         // <= 0: no top-k cut
  float top_p = 1.0f;        // >= 1: no nucleus cut
  uint64_t seed = 0;
};

// Index of the largest logit (the lowest index among ties); NaN logits are never chosen.
// -1 for an empty or all-NaN span.
int32_t argmax(std::span<const float> logits);

class Sampler {
 public:
  explicit Sampler(SamplerConfig config);

  const SamplerConfig& config() const { return config_; }
  // Greedy when config().temperature <= 0 or top_k == 1; otherwise one random draw.
  int32_t sample(std::span<const float> logits);
  // The distribution sample() draws from: (token, probability) after temperature, top-k and
  // top-p, renormalised, most probable first. Greedy configs give the argmax with 1.
  std::vector<std::pair<int32_t, double>> distribution(std::span<const float> logits) const;
  // Restarts the sequence of draws from `seed`.
  void reseed(uint64_t seed);

 private:
  bool greedy() const { return config_.temperature <= 0.0f || config_.top_k == 1; }
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

}  // namespace lockstep::engine
