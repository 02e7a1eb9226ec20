#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "formats/error.h"

namespace lockstep::engine {

int32_t argmax(std::span<const float> logits) {
  int32_t best = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[static_cast<size_t>(best)]) best = static_cast<int32_t>(i);
  }
  return best;
}

Sampler::Sampler(SamplerConfig config) : config_(config), rng_(config.seed) {
  if (!(config.top_p > 0.0f))
    throw Error("sampler: top_p must be > 0, got " + std::to_string(config.top_p));
  if (std::isnan(config.temperature)) throw Error("sampler: temperature is NaN");
}

void Sampler::reseed(uint64_t seed) {
  config_.seed = seed;
  rng_.seed(seed);
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(std::span<const float> logits) const {
  int32_t best = argmax(logits);
  if (best < 0) throw Error("sampler: no finite logit to sample from");
  if (greedy()) return {{best, 1.0}};

  std::vector<std::pair<int32_t, double>> cand;  // [vocab] (token, logit / temperature)
  cand.reserve(logits.size());
  for (size_t i = 0; i < logits.size(); ++i)
    if (!std::isnan(logits[i]))
      cand.emplace_back(static_cast<int32_t>(i), double{logits[i]} / config_.temperature);
  auto by_logit = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  if (config_.top_k > 0 && static_cast<size_t>(config_.top_k) < cand.size()) {
    std::partial_sort(cand.begin(), cand.begin() + config_.top_k, cand.end(), by_logit);
    cand.resize(static_cast<size_t>(config_.top_k));
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }

  // Softmax in double with the maximum subtracted; a -inf logit gets probability 0.
  const double top = cand.front().second;
  double sum = 0.0;
  for (auto& c : cand) sum += (c.second = std::exp(c.second - top));
  for (auto& c : cand) c.second /= sum;

  if (config_.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (always at least one token).
    double mass = 0.0;
    size_t keep = 0;
    while (keep < cand.size() && mass < config_.top_p) mass += cand[keep++].second;
    cand.resize(std::max<size_t>(keep, 1));
    double kept = 0.0;
    for (const auto& c : cand) kept += c.second;
    for (auto& c : cand) c.second /= kept;
  }
  while (cand.size() > 1 && cand.back().second == 0.0) cand.pop_back();
  return cand;
}

int32_t Sampler::sample(std::span<const float> logits) {
  std::vector<std::pair<int32_t, double>> dist = distribution(logits);
  if (dist.size() == 1) return dist.front().first;
  // 53 random bits -> a uniform double in [0, 1), the same on every standard library.
  double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  double cumulative = 0.0;
  for (const auto& [token, p] : dist) {
    cumulative += p;
    if (u < cumulative) return token;
  }
  return dist.back().first;  // u landed in the rounding slack above the last partial sum
}

}  // namespace lockstep::engine
