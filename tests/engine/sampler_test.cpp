// Sampler: greedy limits of every knob, determinism per seed, and draw frequencies against the
// softmax computed independently here in float64.
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "tests/test_util.h"

namespace lockstep {
namespace {

using engine::Sampler;
using engine::SamplerConfig;

std::vector<float> fresh_logits(size_t n, std::mt19937& rng) {
  return test::random_nonzero(n, rng, 4.0f);
}

TEST(Sampler, GreedyIsArgmax) {
  std::mt19937 rng(std::random_device{}());
  for (int round = 0; round < 20; ++round) {
    std::vector<float> logits = fresh_logits(1000, rng);
    auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();
    Sampler s(SamplerConfig{});
    EXPECT_EQ(s.sample(logits), best);
    EXPECT_EQ(engine::argmax(logits), best);
  }
  std::vector<float> ties = {1.0f, NAN, 3.0f, 3.0f};
  EXPECT_EQ(engine::argmax(ties), 2);
}

TEST(Sampler, LimitsOfEachKnobAreGreedy) {
  std::mt19937 rng(std::random_device{}());
  for (int round = 0; round < 20; ++round) {
    std::vector<float> logits = fresh_logits(500, rng);
    int32_t best = engine::argmax(logits);
    // Random top-two gaps go down to float spacing, which a temperature of 1e-6 does not
    // resolve (a 5e-6 gap leaves the runner-up e^-5 of the mass): keep the best one clear.
    logits[best] += 0.1f;
    uint64_t seed = rng();
    Sampler top_k1({.temperature = 1.0f, .top_k = 1, .seed = seed});
    Sampler tiny_p({.temperature = 1.0f, .top_p = 1e-6f, .seed = seed});
    Sampler cold({.temperature = 1e-6f, .seed = seed});
    for (int draw = 0; draw < 50; ++draw) {
      EXPECT_EQ(top_k1.sample(logits), best);
      EXPECT_EQ(tiny_p.sample(logits), best);
      EXPECT_EQ(cold.sample(logits), best);
    }
  }
}

TEST(Sampler, SameSeedSameSequence) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = fresh_logits(64, rng);
  uint64_t seed = rng();
  SamplerConfig cfg{.temperature = 1.3f, .top_k = 40, .top_p = 0.95f, .seed = seed};
  Sampler a(cfg), b(cfg);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 200; ++i) {
    sa.push_back(a.sample(logits));
    sb.push_back(b.sample(logits));
  }
  EXPECT_EQ(sa, sb);
  Sampler c({.temperature = 1.3f, .top_k = 40, .top_p = 0.95f, .seed = seed + 1});
  std::vector<int32_t> sc;
  for (int i = 0; i < 200; ++i) sc.push_back(c.sample(logits));
  EXPECT_NE(sa, sc);  // 200 draws over ~40 tokens: equal only with negligible probability
  a.reseed(seed);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(a.sample(logits), sa[static_cast<size_t>(i)]);
}

// Pearson's chi-square over many draws against its 1 - 1e-6 quantile (Wilson-Hilferty), so a
// correct sampler fails about once in a million runs while one whose probability for a common
// token is 5% off (relative) fails nearly always at 200,000 draws.
void expect_frequencies_match(const std::vector<float>& logits, SamplerConfig cfg,
                              const std::vector<double>& expected) {
  Sampler s(cfg);
  const int draws = 200000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[static_cast<size_t>(s.sample(logits))];
  double chi2 = 0.0;
  int cells = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " lies outside top-k/top-p";
      continue;
    }
    double e = expected[i] * draws;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  const double dof = cells - 1;
  const double z = 4.753;  // standard normal quantile at 1 - 1e-6
  const double bound =
      dof * std::pow(1.0 - 2.0 / (9.0 * dof) + z * std::sqrt(2.0 / (9.0 * dof)), 3);
  EXPECT_LT(chi2, bound) << "cells " << cells;
}

TEST(Sampler, FrequenciesMatchSoftmax) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = test::random_nonzero(8, rng, 1.5f);
  const double temperature = 0.8;
  double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp((logits[i] - top) / temperature);
  for (double& v : p) v /= sum;
  expect_frequencies_match(logits, {.temperature = 0.8f, .seed = rng()}, p);
}

TEST(Sampler, TopKAndTopPKeepTheRightTokens) {
  std::mt19937 rng(std::random_device{}());
  std::vector<float> logits = test::random_nonzero(10, rng, 2.0f);
  std::vector<size_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });

  // top-k = 4 at temperature 1: softmax over the four largest only.
  std::vector<double> pk(logits.size(), 0.0);
  double sum = 0.0;
  for (size_t r = 0; r < 4; ++r) sum += pk[order[r]] = std::exp(double{logits[order[r]]});
  for (double& v : pk) v /= sum;
  expect_frequencies_match(logits, {.temperature = 1.0f, .top_k = 4, .seed = rng()}, pk);

  // top-p = 0.6: the smallest most-probable prefix with mass >= 0.6, renormalised.
  std::vector<double> full(logits.size());
  sum = 0.0;
  for (size_t i = 0; i < full.size(); ++i) sum += full[i] = std::exp(double{logits[i]});
  for (double& v : full) v /= sum;
  std::vector<double> pp(logits.size(), 0.0);
  double mass = 0.0;
  for (size_t r = 0; r < order.size() && mass < 0.6; ++r) mass += pp[order[r]] = full[order[r]];
  for (double& v : pp) v /= mass;
  expect_frequencies_match(logits, {.temperature = 1.0f, .top_p = 0.6f, .seed = rng()}, pp);

  Sampler s({.temperature = 1.0f, .top_p = 0.6f});
  double total = 0.0;
  for (const auto& [token, prob] : s.distribution(logits)) {
    EXPECT_NEAR(prob, pp[static_cast<size_t>(token)], 1e-12);
    total += prob;
  }
  EXPECT_NEAR(total, 1.0, 1e-12);
}

TEST(Sampler, RejectsBadInput) {
  test::expect_error([] { Sampler({.temperature = 1.0f, .top_p = 0.0f}); });
  Sampler s({.temperature = 1.0f});
  std::vector<float> nan_only = {NAN, NAN};
  test::expect_error([&] { s.sample(nan_only); });
  test::expect_error([&] { s.sample(std::span<const float>()); });
}

}  // namespace
}  // namespace lockstep
