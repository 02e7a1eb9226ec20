#include "engine/compare.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>

#include "engine/cpu_kernels.h"
#include "engine/cpu_lane.h"
#include "engine/metrics.h"
#include "engine/ref_lane.h"
#include "tests/engine/lane_test_util.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();
constexpr float kNaNf = std::numeric_limits<float>::quiet_NaN();

Tensor tensor(std::vector<uint64_t> shape, std::vector<float> data) {
  Tensor t;
  t.shape = std::move(shape);
  t.data = std::move(data);
  return t;
}

const Cell kNorm{Stage::AttnNorm, 0};
const Cell kQ{Stage::QPostRope, 1};
const Cell kScores{Stage::AttnScores, 1};
const Cell kLogits{Stage::LmHead, std::nullopt};

CompareOptions threads(unsigned n) {
  CompareOptions o;
  o.threads = n;
  return o;
}

uint64_t sum(const std::vector<uint64_t>& v) {
  return std::accumulate(v.begin(), v.end(), 0ull);
}

TEST(CompareCell, IdenticalTensorsAreExact) {
  Tensor a = tensor({2, 3}, test::random_nonzero(6, 1));
  CellComparison c = compare_cell(kNorm, a, a);
  EXPECT_FALSE(c.shape_mismatch);
  EXPECT_EQ(c.elements, 6u);
  EXPECT_EQ(c.paired, 6u);
  EXPECT_DOUBLE_EQ(c.cosine, 1.0);
  EXPECT_EQ(c.relative_rms, 0.0);
  EXPECT_EQ(c.rms_diff, 0.0);
  EXPECT_EQ(c.max_abs_diff, 0.0);
  EXPECT_EQ(c.max_diff_at.index, 0);
  EXPECT_TRUE(std::isinf(c.sqnr_db) && c.sqnr_db > 0);
  EXPECT_EQ(c.sign_agreement, 1.0);
  EXPECT_EQ(c.diff_histogram.zero, 6u);
}

TEST(CompareCell, CosineOfOrthogonalAndAntiparallelVectors) {
  Tensor a = tensor({1, 2}, {1, 0}), b = tensor({1, 2}, {0, 2});
  CellComparison c = compare_cell(kNorm, a, b);
  EXPECT_DOUBLE_EQ(c.cosine, 0.0);
  EXPECT_DOUBLE_EQ(c.relative_rms, std::sqrt(5.0));  // ‖(-1, 2)‖ / ‖(1, 0)‖
  Tensor x = tensor({1, 3}, {1, -2, 3}), y = tensor({1, 3}, {-2, 4, -6});
  c = compare_cell(kNorm, x, y);
  EXPECT_DOUBLE_EQ(c.cosine, -1.0);
  EXPECT_EQ(c.sign_agreement, 0.0);
  EXPECT_DOUBLE_EQ(c.relative_rms, 3.0);
  EXPECT_DOUBLE_EQ(c.max_abs_diff, 9.0);
  EXPECT_EQ(c.max_diff_at.channel, 2);
}

TEST(CompareCell, SqnrRmsAndRelativeRmsOfAKnownNoise) {
  // ‖a‖² = 25, noise ‖b − a‖² = 0.25: SQNR = 10·log10(100) = 20 dB, relative RMS 0.1.
  Tensor a = tensor({1, 2}, {3, 4}), b = tensor({1, 2}, {3.5f, 4});
  CellComparison c = compare_cell(kNorm, a, b);
  EXPECT_NEAR(c.sqnr_db, 20.0, 1e-12);
  EXPECT_NEAR(c.relative_rms, 0.1, 1e-15);
  EXPECT_NEAR(c.rms_diff, std::sqrt(0.25 / 2), 1e-15);
  EXPECT_NEAR(c.cosine, 26.5 / (5 * std::sqrt(28.25)), 1e-15);
  // Random: the same relative RMS as metrics.h.
  Tensor r = tensor({16, 64}, test::random_nonzero(1024, 2));
  Tensor s = r;
  std::mt19937 rng(3);
  std::normal_distribution<float> noise(0.0f, 1e-3f);
  for (float& v : s.data) v += noise(rng);
  c = compare_cell(kNorm, r, s);
  EXPECT_NEAR(c.relative_rms, relative_rms(s.data, r.data), 1e-12 * c.relative_rms);
  EXPECT_NEAR(c.sqnr_db, -20 * std::log10(c.relative_rms), 1e-9);
}

TEST(CompareCell, PerSideStatistics) {
  Tensor a = tensor({1, 4}, {1, 2, 3, 4}), b = tensor({1, 4}, {-1, kNaNf, kPosInf, 5});
  CellComparison c = compare_cell(kNorm, a, b);
  EXPECT_DOUBLE_EQ(c.a.mean, 2.5);
  EXPECT_DOUBLE_EQ(c.a.std, std::sqrt(1.25));
  EXPECT_EQ(c.a.min, 1.0);
  EXPECT_EQ(c.a.max, 4.0);
  EXPECT_EQ(c.a.finite, 4u);
  EXPECT_EQ(c.b.finite, 2u);
  EXPECT_EQ(c.b.nan, 1u);
  EXPECT_EQ(c.b.pos_inf, 1u);
  EXPECT_DOUBLE_EQ(c.b.mean, 2.0);
  EXPECT_EQ(c.b.min, -1.0);
  EXPECT_EQ(c.b.max, 5.0);
  EXPECT_EQ(c.b.max_abs, 5.0);
  EXPECT_TRUE(std::isnan(c.relative_rms));
  EXPECT_EQ(c.paired, 2u);
  EXPECT_EQ(c.unpaired, 2u);
}

TEST(CompareCell, MaskedScoresAreSkippedAndAOneSidedMaskIsInfinite) {
  // [heads 1, tokens 3, ctx 3], causal mask.
  std::vector<float> s = {1, kNegInf, kNegInf, 2, 3, kNegInf, 4, 5, 6};
  Tensor a = tensor({1, 3, 3}, s), b = a;
  b.data[4] = 3.5f;
  CellComparison c = compare_cell(kScores, a, b);
  EXPECT_EQ(c.masked, 3u);
  EXPECT_EQ(c.paired, 6u);
  EXPECT_EQ(c.unpaired, 0u);
  EXPECT_EQ(c.a.neg_inf, 3u);
  EXPECT_DOUBLE_EQ(c.relative_rms, relative_rms(b.data, a.data));
  EXPECT_TRUE(std::isfinite(c.relative_rms));
  EXPECT_EQ(c.per_token_relative_rms[0], 0.0);
  EXPECT_GT(c.per_token_relative_rms[1], 0.0);
  EXPECT_EQ(c.per_token_relative_rms[2], 0.0);
  // Unmasked in b at a masked position: infinite, like metrics.h, and only for that token.
  b.data[2] = 0.5f;
  c = compare_cell(kScores, a, b);
  EXPECT_EQ(c.unpaired, 1u);
  EXPECT_TRUE(std::isinf(c.relative_rms));
  EXPECT_EQ(relative_rms(b.data, a.data), c.relative_rms);
  EXPECT_TRUE(std::isinf(c.per_token_relative_rms[0]));
  EXPECT_FALSE(std::isinf(c.per_token_relative_rms[2]));
  // NaN wins over inf.
  b.data[8] = kNaNf;
  c = compare_cell(kScores, a, b);
  EXPECT_TRUE(std::isnan(c.relative_rms));
  EXPECT_TRUE(std::isnan(c.per_token_relative_rms[2]));
  EXPECT_EQ(c.b.nan, 1u);
}

TEST(CompareCell, MaxDiffIndexDecodesTokenChannelHead) {
  // [tokens 3, width 8], head_dim 4: (token 2, channel 5) is head 1, flat index 21.
  Tensor a = tensor({3, 8}, test::random_nonzero(24, 4)), b = a;
  b.data[21] += 1.0f;
  CompareOptions o;
  o.head_dim = 4;
  CellComparison c = compare_cell(kQ, a, b, o);
  EXPECT_EQ(c.max_diff_at.index, 21);
  EXPECT_EQ(c.max_diff_at.token, 2);
  EXPECT_EQ(c.max_diff_at.channel, 5);
  EXPECT_EQ(c.max_diff_at.head, 1);
  EXPECT_EQ(c.max_diff_at.a, a.data[21]);
  EXPECT_EQ(c.max_diff_at.b, b.data[21]);
  EXPECT_NEAR(c.max_abs_diff, 1.0, 1e-6);
  // Without head_dim, or on a cell that is not per head: no head.
  EXPECT_EQ(compare_cell(kQ, a, b).max_diff_at.head, -1);
  EXPECT_EQ(compare_cell(kNorm, a, b, o).max_diff_at.head, -1);
  // [heads 2, tokens 3, ctx 3]: head 1, token 2, key 1 is flat 1·9 + 2·3 + 1 = 16.
  Tensor s = tensor({2, 3, 3}, test::random_nonzero(18, 5)), t = s;
  t.data[16] -= 2.0f;
  c = compare_cell(kScores, s, t);
  EXPECT_EQ(c.max_diff_at.index, 16);
  EXPECT_EQ(c.max_diff_at.head, 1);
  EXPECT_EQ(c.max_diff_at.token, 2);
  EXPECT_EQ(c.max_diff_at.channel, 1);
  // Flat: the index is the channel.
  Tensor f = tensor({7}, test::random_nonzero(7, 6)), g = f;
  g.data[5] = 100.0f;
  c = compare_cell(kNorm, f, g);
  EXPECT_EQ(c.max_diff_at.channel, 5);
  EXPECT_EQ(c.max_diff_at.token, -1);
  EXPECT_TRUE(c.per_token_relative_rms.empty());
}

TEST(CompareCell, HeadroomFlagsJustBelowAndAboveTheFactor) {
  // Default factor 4: f16 threshold 65504 / 4 = 16376.
  auto flags = [](float v) {
    Tensor a = tensor({1, 2}, {1.0f, v});
    return compare_cell(kNorm, a, a).a;
  };
  EXPECT_FALSE(flags(16375.0f).near_f16_limit);
  EXPECT_TRUE(flags(16377.0f).near_f16_limit);
  EXPECT_TRUE(flags(-16377.0f).near_f16_limit);
  EXPECT_FALSE(flags(16377.0f).near_bf16_limit);
  const double bf16_threshold = kBf16Max / 4;
  EXPECT_FALSE(flags(static_cast<float>(bf16_threshold * 0.999)).near_bf16_limit);
  EXPECT_TRUE(flags(static_cast<float>(bf16_threshold * 1.001)).near_bf16_limit);
  CompareOptions o;
  o.headroom_factor = 1.0;
  Tensor a = tensor({1, 1}, {60000.0f});
  EXPECT_FALSE(compare_cell(kNorm, a, a, o).a.near_f16_limit);
  o.headroom_factor = 1.1;
  EXPECT_TRUE(compare_cell(kNorm, a, a, o).a.near_f16_limit);
}

TEST(CompareCell, ValueHistogramSharesBinsOverTheJointRange) {
  CompareOptions o;
  o.value_bins = 4;
  Tensor a = tensor({1, 4}, {0, 1, 2, 3}), b = tensor({1, 4}, {-1, 1, 1, 1});
  CellComparison c = compare_cell(kNorm, a, b, o);
  // Range [-1, 3], width 1: [-1,0) [0,1) [1,2) [2,3].
  EXPECT_EQ(c.value_histogram.min, -1.0);
  EXPECT_EQ(c.value_histogram.max, 3.0);
  EXPECT_EQ(c.value_histogram.counts_a, (std::vector<uint64_t>{0, 1, 1, 2}));
  EXPECT_EQ(c.value_histogram.counts_b, (std::vector<uint64_t>{1, 0, 3, 0}));
  // Counts sum to the finite elements, with NaN/Inf present and across chunks.
  Tensor r = tensor({300, 1000}, test::random_nonzero(300000, 7)), s = r;
  for (size_t i = 0; i < s.data.size(); i += 997) s.data[i] = i % 2 ? kNaNf : kPosInf;
  c = compare_cell(kNorm, r, s);
  EXPECT_EQ(sum(c.value_histogram.counts_a), 300000u);
  EXPECT_EQ(sum(c.value_histogram.counts_b), c.b.finite);
  EXPECT_EQ(c.b.finite + c.b.nan + c.b.pos_inf, 300000u);
  EXPECT_EQ(c.value_histogram.counts_a.size(), 64u);
  EXPECT_EQ(sum(c.diff_histogram.negative) + sum(c.diff_histogram.positive) + c.diff_histogram.zero,
            c.paired);
}

TEST(CompareCell, ValueBinsAreTheSameWithAndWithoutTheJointTable) {
  // 64 bins count both sides with one joint table, 128 count each side alone; bins of 128 are
  // halves of those of 64 (scale ×2 is exact), so pairs must add up.
  Tensor a = tensor({300, 1000}, test::random_nonzero(300000, 12)), b = a;
  std::mt19937 rng(13);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  for (float& v : b.data) v += noise(rng);
  b.data[7] = kNaNf;
  CompareOptions o64, o128;
  o128.value_bins = 128;
  CellComparison c64 = compare_cell(kNorm, a, b, o64), c128 = compare_cell(kNorm, a, b, o128);
  for (size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(c64.value_histogram.counts_a[i],
              c128.value_histogram.counts_a[2 * i] + c128.value_histogram.counts_a[2 * i + 1]);
    EXPECT_EQ(c64.value_histogram.counts_b[i],
              c128.value_histogram.counts_b[2 * i] + c128.value_histogram.counts_b[2 * i + 1]);
  }
  EXPECT_EQ(sum(c128.value_histogram.counts_b), 299999u);
  EXPECT_EQ(c64.diff_histogram.positive, c128.diff_histogram.positive);
}

TEST(CompareCell, DiffHistogramPlacesSignedDecades) {
  CompareOptions o;
  o.diff_min_decade = -4;
  o.diff_max_decade = 3;
  // diffs: +0.5, -0.5, +0.005, 0, +200, +1, -1e-7 (below the range), +1e6 (above), and the
  // powers of ten inside a binary octave: +10 (in [8, 16)), -100 (in [64, 128)).
  Tensor a = tensor({1, 10}, {1, 1, 0, 7, 0, 2, 0, 0, 0, 100});
  Tensor b = tensor({1, 10}, {1.5f, 0.5f, 0.005f, 7, 200, 3, -1e-7f, 1e6f, 10, 0});
  CellComparison c = compare_cell(kNorm, a, b, o);
  const DiffHistogram& h = c.diff_histogram;
  ASSERT_EQ(h.positive.size(), 8u);  // decades -4..3
  auto at = [&](int decade) { return static_cast<size_t>(decade - o.diff_min_decade); };
  EXPECT_EQ(h.zero, 1u);
  EXPECT_EQ(h.positive[at(-1)], 1u);  // 0.5
  EXPECT_EQ(h.negative[at(-1)], 1u);  // -0.5
  EXPECT_EQ(h.positive[at(-3)], 1u);  // 0.005
  EXPECT_EQ(h.positive[at(2)], 1u);   // 200
  EXPECT_EQ(h.positive[at(0)], 1u);   // exactly 1: decade 0
  EXPECT_EQ(h.positive[at(1)], 1u);   // exactly 10: decade 1
  EXPECT_EQ(h.negative[at(2)], 1u);   // exactly -100: decade 2
  EXPECT_EQ(h.negative[at(-4)], 1u);  // 1e-7, clamped into the first bucket
  EXPECT_EQ(h.positive[at(3)], 1u);   // 1e6, clamped into the last
  EXPECT_EQ(sum(h.positive) + sum(h.negative) + h.zero, 10u);
}

TEST(CompareCell, PerTokenAndPerHeadBreakdownRiseOnlyWherePerturbed) {
  CompareOptions o;
  o.head_dim = 4;
  Tensor a = tensor({4, 16}, test::random_nonzero(64, 8)), b = a;
  b.data[2 * 16 + 1 * 4 + 3] += 0.25f;  // token 2, head 1
  CellComparison c = compare_cell(kQ, a, b, o);
  ASSERT_EQ(c.per_token_relative_rms.size(), 4u);
  ASSERT_EQ(c.per_head_relative_rms.size(), 4u);
  for (size_t t = 0; t < 4; ++t) EXPECT_EQ(c.per_token_relative_rms[t] > 0, t == 2) << t;
  for (size_t h = 0; h < 4; ++h) EXPECT_EQ(c.per_head_relative_rms[h] > 0, h == 1) << h;
  // The token's value is that row's relative RMS.
  std::span<const float> ra(a.data.data() + 32, 16), rb(b.data.data() + 32, 16);
  EXPECT_DOUBLE_EQ(c.per_token_relative_rms[2], relative_rms(rb, ra));
  // Attention: [heads 3, tokens 2, ctx 2], head 2 perturbed at token 0.
  Tensor s = tensor({3, 2, 2}, test::random_nonzero(12, 9)), t = s;
  t.data[2 * 4 + 1] *= 1.5f;
  c = compare_cell(kScores, s, t);
  EXPECT_EQ(c.per_head_relative_rms.size(), 3u);
  for (size_t h = 0; h < 3; ++h) EXPECT_EQ(c.per_head_relative_rms[h] > 0, h == 2) << h;
  EXPECT_GT(c.per_token_relative_rms[0], 0.0);
  EXPECT_EQ(c.per_token_relative_rms[1], 0.0);
  // A cell that is not per head has no head breakdown.
  EXPECT_TRUE(compare_cell(kNorm, a, b, o).per_head_relative_rms.empty());
}

TEST(CompareCell, LogitsKlTop1AndTopkOverlap) {
  // p = (1/2, 1/2), q = (1/4, 3/4): KL = ½ln2 + ½ln(2/3) = ½ln(4/3). Argmax 0 (tie: lower) vs 1.
  Tensor a = tensor({1, 2}, {0, 0}), b = tensor({1, 2}, {0, static_cast<float>(std::log(3.0))});
  CellComparison c = compare_cell(kLogits, a, b);
  ASSERT_TRUE(c.logits);
  EXPECT_NEAR(c.logits->kl[0], 0.5 * std::log(4.0 / 3.0), 1e-7);
  EXPECT_NEAR(c.logits->mean_kl, 0.5 * std::log(4.0 / 3.0), 1e-7);
  EXPECT_EQ(c.logits->top1_agreement, 0.0);
  EXPECT_EQ(c.logits->k, 2u);  // min(topk, vocab)
  EXPECT_EQ(c.logits->topk_overlap, 1.0);
  // Two tokens, vocab 10, k 3: token 0 tops {9, 8, 7} vs {9, 8, 0}: 2/3; token 1 equal: 1.
  std::vector<float> la(20), lb(20);
  for (int i = 0; i < 10; ++i) la[i] = lb[i] = la[10 + i] = lb[10 + i] = static_cast<float>(i);
  lb[0] = 7.5f;
  CompareOptions o;
  o.topk = 3;
  c = compare_cell(kLogits, tensor({2, 10}, la), tensor({2, 10}, lb), o);
  EXPECT_EQ(c.logits->tokens, 2u);
  EXPECT_EQ(c.logits->top1_agreement, 1.0);
  EXPECT_NEAR(c.logits->topk_overlap, (2.0 / 3 + 1.0) / 2, 1e-15);
  EXPECT_EQ(c.logits->kl[1], 0.0);
  EXPECT_GT(c.logits->kl[0], 0.0);
  EXPECT_FALSE(compare_cell(kNorm, a, b).logits);
}

TEST(CompareCell, KlMatchesMetricsOnRandomLogits) {
  Tensor a = tensor({3, 500}, test::random_nonzero(1500, 14, 8.0f));
  Tensor b = tensor({3, 500}, test::random_nonzero(1500, 15, 8.0f));
  CellComparison c = compare_cell(kLogits, a, b);
  for (uint64_t t = 0; t < 3; ++t) {
    std::span<const float> ra(a.data.data() + t * 500, 500), rb(b.data.data() + t * 500, 500);
    EXPECT_NEAR(c.logits->kl[t], kl_divergence(ra, rb), 1e-12 * kl_divergence(ra, rb)) << t;
  }
  b.data[600] = kNaNf;
  c = compare_cell(kLogits, a, b);
  EXPECT_FALSE(std::isnan(c.logits->kl[0]));
  EXPECT_TRUE(std::isnan(c.logits->kl[1]));
}

TEST(CompareCell, ShapeMismatchIsReportedNotThrown) {
  Tensor a = tensor({2, 3}, test::random_nonzero(6, 10)), b = tensor({3, 2}, a.data);
  CellComparison c = compare_cell(kNorm, a, b);
  EXPECT_TRUE(c.shape_mismatch);
  EXPECT_NE(c.error.find("[2, 3] vs [3, 2]"), std::string::npos) << c.error;
  EXPECT_EQ(to_json(c)["shape_mismatch"], true);
}

TEST(CompareCell, BadOptionsThrow) {
  Tensor a = tensor({1, 1}, {1});
  CompareOptions o;
  o.value_bins = 0;
  test::expect_error([&] { compare_cell(kNorm, a, a, o); });
  o = {};
  o.diff_min_decade = 2;
  o.diff_max_decade = 1;
  test::expect_error([&] { compare_cell(kNorm, a, a, o); });
  o = {};
  o.topk = 0;
  test::expect_error([&] { compare_cell(kNorm, a, a, o); });
}

// A trace with some of everything: masks, NaN, Inf, cells larger than one chunk.
Trace noisy_trace(uint32_t seed, bool perturbed) {
  Trace t;
  t.lane = perturbed ? "b" : "a";
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 1e-2f);
  auto put = [&](Cell c, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    Tensor x = tensor(shape, test::random_nonzero(n, static_cast<uint32_t>(n) + seed));
    if (perturbed)
      for (float& v : x.data) v += noise(rng);
    if (c.stage == Stage::AttnScores)
      for (uint64_t h = 0; h < shape[0]; ++h)
        for (uint64_t q = 0; q < shape[1]; ++q)
          for (uint64_t k = q + 1; k < shape[2]; ++k)
            x.data[(h * shape[1] + q) * shape[2] + k] = kNegInf;
    if (perturbed && c.stage == Stage::FfnUp) x.data[12345] = kNaNf;
    t.put(c, std::move(x));
  };
  for (uint32_t layer = 0; layer < 2; ++layer) {
    put({Stage::AttnNorm, layer}, {100, 1000});
    put({Stage::QPostRope, layer}, {100, 512});
    put({Stage::AttnScores, layer}, {8, 100, 100});
    put({Stage::FfnUp, layer}, {100, 2000});
  }
  put(kLogits, {100, 3000});
  return t;
}

TEST(CompareTraces, BitIdenticalWithOneAndFourThreads) {
  Trace a = noisy_trace(11, false), b = noisy_trace(11, true);
  TraceComparison one = compare_traces(a, b, threads(1));
  TraceComparison four = compare_traces(a, b, threads(4));
  ASSERT_EQ(one.cells.size(), 9u);
  EXPECT_EQ(to_json(one).dump(), to_json(four).dump());
  for (size_t i = 0; i < one.cells.size(); ++i) {
    const CellComparison &x = one.cells[i], &y = four.cells[i];
    EXPECT_EQ(std::memcmp(&x.relative_rms, &y.relative_rms, sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(&x.cosine, &y.cosine, sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(&x.a.std, &y.a.std, sizeof(double)), 0);
    EXPECT_EQ(x.per_token_relative_rms.size(), y.per_token_relative_rms.size());
    for (size_t t = 0; t < x.per_token_relative_rms.size(); ++t)
      EXPECT_EQ(std::memcmp(&x.per_token_relative_rms[t], &y.per_token_relative_rms[t], 8), 0);
  }
  // And the same numbers as metrics.h on every cell, NaN and masks included.
  for (const auto& c : one.cells) {
    double expected = relative_rms(b.find(c.cell)->data, a.find(c.cell)->data);
    if (std::isnan(expected))
      EXPECT_TRUE(std::isnan(c.relative_rms)) << cell_name(c.cell);
    else
      EXPECT_NEAR(c.relative_rms, expected, 1e-12 * expected) << cell_name(c.cell);
  }
  // head_dim derived from attn_scores' 8 heads and q_post_rope's width 512.
  EXPECT_EQ(one.options.head_dim, 64u);
  EXPECT_EQ(one.find({Stage::QPostRope, 0})->per_head_relative_rms.size(), 8u);
}

TEST(CompareTraces, CellsInOneTraceOnlyProgressAndCancel) {
  Trace a, b;
  a.put(kNorm, tensor({1, 2}, {1, 2}));
  b.put(kNorm, tensor({1, 2}, {1, 2.5f}));
  a.put({Stage::FfnOut, 0}, tensor({1, 2}, {1, 2}));
  b.put(kLogits, tensor({1, 2}, {1, 2}));
  b.put(kQ, tensor({2, 1}, {1, 2}));
  a.put(kQ, tensor({1, 2}, {1, 2}));
  std::vector<size_t> seen;
  TraceComparison c =
      compare_traces(a, b, {}, [&](const CompareProgress& p) { seen.push_back(p.cells_done); });
  ASSERT_EQ(c.cells.size(), 2u);
  EXPECT_FALSE(c.cells[0].shape_mismatch);
  EXPECT_TRUE(c.find(kQ)->shape_mismatch);
  ASSERT_EQ(c.only_in_a.size(), 1u);
  EXPECT_EQ(c.only_in_a[0], (Cell{Stage::FfnOut, 0}));
  ASSERT_EQ(c.only_in_b.size(), 1u);
  EXPECT_EQ(c.only_in_b[0], kLogits);
  EXPECT_EQ(seen, (std::vector<size_t>{1, 2}));
  nlohmann::json j = to_json(c);
  EXPECT_EQ(j["format_version"], 1);
  EXPECT_EQ(j["only_in_b"][0], "lm_head");
  EXPECT_EQ(j["cells"][0]["cell"], "attn_norm@0");
  EXPECT_EQ(j["cells"][0]["layer"], 0);
  EXPECT_EQ(j["cells"][0]["value_histogram"]["counts_a"].size(), 64u);
  std::atomic<bool> cancel{true};
  TraceComparison cancelled = compare_traces(a, b, {}, {}, &cancel);
  EXPECT_TRUE(cancelled.cancelled);
  EXPECT_TRUE(cancelled.cells.empty());
}

TEST(CompareTraces, CancelFromProgressKeepsOnlyFinishedCellsInOrder) {
  Trace a = noisy_trace(16, false), b = noisy_trace(16, true);
  for (unsigned t : {1u, 3u}) {
    std::atomic<bool> cancel{false};
    TraceComparison c = compare_traces(
        a, b, threads(t),
        [&](const CompareProgress& p) {
          if (p.cells_done == 2) cancel = true;
        },
        &cancel);
    // One thread stops at the next item; with more, the rest may all be handed out already,
    // and then the comparison completes and says so.
    if (t == 1) {
      EXPECT_TRUE(c.cancelled);
    }
    ASSERT_GE(c.cells.size(), 2u);
    EXPECT_EQ(c.cells.size() < a.size(), c.cancelled);
    TraceComparison full = compare_traces(a, b, threads(1));
    for (size_t i = 0; i < c.cells.size(); ++i)
      EXPECT_EQ(to_json(c.cells[i]).dump(), to_json(full.cells[i]).dump()) << i;
  }
}

TEST(CompareTraces, JsonSpellsNonFiniteNumbersAsStrings) {
  Tensor a = tensor({1, 2}, {1, 2});
  CellComparison c = compare_cell(kNorm, a, a);
  nlohmann::json j = to_json(c);
  EXPECT_EQ(j["sqnr_db"], "inf");
  EXPECT_EQ(j["relative_rms"], 0.0);
  EXPECT_EQ(j["max_diff_at"]["token"], 0);
  Tensor b = tensor({1, 2}, {1, kNaNf});
  EXPECT_EQ(to_json(compare_cell(kNorm, a, b))["relative_rms"], "nan");
}

// Positions of every kind for the block kernels: differences over all decades (subnormal, the
// floats nearest powers of ten, overflowing to inf), zeros, masks, NaN and ±inf in either side,
// lengths that are not a multiple of any vector width, a cell of more than one chunk; logits
// with no NaN (else KL is NaN without any sum), whose exponentials go down to 0 through
// subnormal results.
std::pair<Trace, Trace> kernel_traces(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> decade(-16.0, 9.0);
  Trace a, b;
  a.lane = "a";
  b.lane = "b";
  auto put = [&](Cell c, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    std::vector<float> x = test::random_nonzero(n, rng), y = x;
    for (uint64_t i = 0; i < n; ++i) {
      const float sign = rng() % 2 ? 1.0f : -1.0f;
      std::vector<float>& side = rng() % 2 ? x : y;
      if (c.stage == Stage::LmHead) {
        const uint32_t kind = rng() % 8;
        if (kind == 0) x[i] = y[i] = kNegInf;
        if (kind == 1) side[i] = -700.0f - static_cast<float>(rng() % 60);
        if (kind > 1) y[i] = x[i] + sign * static_cast<float>(std::pow(10.0, decade(rng) / 4));
        continue;
      }
      switch (rng() % 24) {
        case 0: break;  // equal
        case 1: x[i] = y[i] = kNegInf; break;
        case 2: side[i] = kNaNf; break;
        case 3: side[i] = sign * kPosInf; break;
        case 4: side[i] = kNegInf; break;
        case 5:
          x[i] = 0;
          y[i] = sign * static_cast<float>(std::pow(10.0, static_cast<int>(rng() % 60) - 40));
          break;
        case 6: y[i] = x[i] + sign * 1e-42f; break;
        case 7:
          x[i] = -sign * 3e38f;
          y[i] = sign * 3e38f;
          break;
        default: y[i] = x[i] + sign * x[i] * static_cast<float>(std::pow(10.0, decade(rng)));
      }
    }
    a.put(c, tensor(shape, x));
    b.put(c, tensor(shape, y));
  };
  put({Stage::AttnNorm, 0}, {7, 1003});
  put({Stage::QPostRope, 0}, {9, 24});
  put({Stage::AttnScores, 0}, {3, 5, 37});
  put({Stage::FfnUp, 0}, {70001});
  put(kLogits, {4, 333});
  return {std::move(a), std::move(b)};
}

TEST(CompareTraces, SimdAndPortableKernelsGiveTheSameBits) {
  // LOCKSTEP_CPU_ISA forces each kernel this CPU runs: scalar the portable one, avx2 and avx512
  // the SIMD ones. All must give the same JSON, which spells every double to the last bit.
  const auto [a, b] = kernel_traces(21);
  const char* saved = std::getenv("LOCKSTEP_CPU_ISA");
  const std::string restore = saved ? saved : "";
  const std::vector<cpu::Isa> isas = cpu::supported_isas();
  if (isas.size() == 1) std::printf("[simd kernels] this CPU runs only the portable kernel\n");
  std::vector<CompareOptions> options(7);
  options[1].value_bins = 128;  // separate tables, not the joint one
  options[2].value_bins = 1;
  options[3].diff_min_decade = -50;  // decades looked up by gathers (AVX-512), one by one (AVX2)
  options[3].diff_max_decade = 50;
  options[4].diff_min_decade = -45;  // subnormal differences above the first decade
  options[4].diff_max_decade = -30;
  options[5].diff_min_decade = 30;  // the overflow bucket above the last
  options[5].diff_max_decade = 40;
  options[6].diff_min_decade = -3;
  options[6].diff_max_decade = -3;
  for (size_t i = 0; i < options.size(); ++i) {
    CompareOptions& o = options[i];
    o.head_dim = 8;
    o.threads = 2;
    setenv("LOCKSTEP_CPU_ISA", "scalar", 1);
    const nlohmann::json portable = to_json(compare_traces(a, b, o));
    for (cpu::Isa isa : isas) {
      if (isa == cpu::Isa::Scalar) continue;
      setenv("LOCKSTEP_CPU_ISA", std::string(cpu::isa_name(isa)).c_str(), 1);
      const nlohmann::json simd = to_json(compare_traces(a, b, o));
      EXPECT_EQ(portable.dump(), simd.dump()) << "options " << i << ", " << cpu::isa_name(isa);
    }
    // The data reaches every kind of position.
    const nlohmann::json& norm = portable["cells"][0];
    EXPECT_GT(norm["masked"], 0);
    EXPECT_GT(norm["unpaired"], 0);
    EXPECT_GT(norm["diff_histogram"]["zero"], 0);
    EXPECT_GT(norm["diff_histogram"]["negative"][0], 0);
    EXPECT_GT(norm["diff_histogram"]["positive"].back(), 0);
    for (const auto& kl : portable["cells"][4]["logits"]["kl"]) EXPECT_TRUE(kl.is_number()) << kl;
  }
  if (saved)
    setenv("LOCKSTEP_CPU_ISA", restore.c_str(), 1);
  else
    unsetenv("LOCKSTEP_CPU_ISA");
}

// The real pair: the float64 oracle against the fast engine on a full capture.
TEST(CompareTraces, RefAndCpuLanesAgreeOnStories260K) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Model& model = test_lanes::shared_model("stories260K.gguf");
  test_lanes::Reference ref = test_lanes::reference("stories260K");
  RefLane oracle;
  CpuLane lane;
  oracle.load(model);
  lane.load(model);
  Trace a, b;
  test_lanes::prefill(oracle, ref.tokens, CapturePlan::all(), a);
  test_lanes::prefill(lane, ref.tokens, CapturePlan::all(), b);
  TraceComparison c = compare_traces(a, b);
  EXPECT_EQ(c.cells.size(), a.size());
  EXPECT_TRUE(c.only_in_a.empty() && c.only_in_b.empty());
  EXPECT_EQ(c.options.head_dim, model.config.head_dim);
  for (const CellComparison& x : c.cells) {
    SCOPED_TRACE(cell_name(x.cell));
    EXPECT_FALSE(x.shape_mismatch);
    EXPECT_LE(x.relative_rms, 1e-5);
    EXPECT_GE(x.cosine, 0.99999);
    EXPECT_EQ(x.unpaired, 0u);
    EXPECT_EQ(x.a.nan + x.b.nan, 0u);
    EXPECT_FALSE(x.a.near_f16_limit);
  }
  const CellComparison* logits = c.find(kLogits);
  ASSERT_NE(logits, nullptr);
  ASSERT_TRUE(logits->logits);
  EXPECT_EQ(logits->logits->top1_agreement, 1.0);
  EXPECT_LT(logits->logits->mean_kl, 1e-8);
  const CellComparison* scores = c.find({Stage::AttnScores, 0});
  ASSERT_NE(scores, nullptr);
  EXPECT_GT(scores->masked, 0u);  // the causal mask, skipped on both sides
  EXPECT_EQ(scores->per_head_relative_rms.size(), model.config.heads);
  const CellComparison* worst = &c.cells[0];
  for (const CellComparison& x : c.cells)
    if (x.relative_rms > worst->relative_rms) worst = &x;
  std::printf(
      "[compare ref vs cpu] stories260K: %zu cells, worst relative RMS %.2e (cosine %.9f)"
      " at %s, lm_head mean KL %.2e\n",
      c.cells.size(), worst->relative_rms, worst->cosine, cell_name(worst->cell).c_str(),
      logits->logits->mean_kl);
}

}  // namespace
}  // namespace lockstep::engine
