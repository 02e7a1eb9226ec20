// The drill-down's precomputed plot data (app/plot_data.h): the min/max pyramid against a
// brute-force reference on every level, odd sizes, NaN and Inf, and the logits plot's rows.
#include "app/plot_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace lockstep::app {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Every level against a scan of its bin's elements.
void expect_exact(const views::MinMaxPyramid& p) {
  const std::vector<float>& v = p.values;
  size_t previous = v.size();
  uint64_t bin = 1;
  for (const views::MinMaxLevel& level : p.levels) {
    bin *= 2;
    ASSERT_EQ(level.bin, bin);
    ASSERT_EQ(level.bins(), (previous + 1) / 2) << "each level halves the bin count, rounding up";
    ASSERT_EQ(level.bins(), (v.size() + bin - 1) / bin);
    previous = level.bins();
    for (size_t j = 0; j < level.bins(); ++j) {
      float lo = kNaN, hi = kNaN;
      int64_t arg = -1;
      bool nan = false;
      for (size_t i = j * bin; i < std::min(v.size(), (j + 1) * bin); ++i) {
        if (std::isnan(v[i])) {
          nan = true;
          continue;
        }
        if (std::isnan(lo) || v[i] < lo) lo = v[i];
        if (std::isnan(hi) || v[i] > hi) {
          hi = v[i];
          arg = int64_t(i);
        }
      }
      SCOPED_TRACE("bin " + std::to_string(j) + " of level " + std::to_string(bin));
      EXPECT_EQ(level.nan[j] != 0, nan);
      if (std::isnan(hi)) {
        EXPECT_TRUE(std::isnan(level.lo[j]) && std::isnan(level.hi[j]));
        continue;
      }
      EXPECT_EQ(level.lo[j], lo);
      EXPECT_EQ(level.hi[j], hi);
      EXPECT_EQ(int64_t(level.arg_hi[j]), arg);
    }
  }
  if (!p.levels.empty()) {
    EXPECT_LE(p.levels.back().bins(), views::kPyramidMinBins);
    EXPECT_GT(p.levels.size() == 1 ? v.size() : p.levels[p.levels.size() - 2].bins(),
              views::kPyramidMinBins)
        << "the levels stop at the first with at most kPyramidMinBins bins";
  }
}

TEST(MinMaxPyramid, EveryLevelIsExactForOddAndEvenSizes) {
  for (size_t n : {1u, 2u, 255u, 256u, 257u, 511u, 1000u, 4097u, 152064u}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    const std::vector<float> v = random_values(n, uint32_t(n));
    const views::MinMaxPyramid p = build_pyramid(v);
    EXPECT_EQ(p.values, v);
    EXPECT_EQ(p.lo, *std::min_element(v.begin(), v.end()));
    EXPECT_EQ(p.hi, *std::max_element(v.begin(), v.end()));
    if (n <= views::kPyramidMinBins) {
      EXPECT_TRUE(p.levels.empty());
    }
    expect_exact(p);
  }
}

TEST(MinMaxPyramid, VocabularySizedSeriesHasLevelsDownToAbout256Bins) {
  const views::MinMaxPyramid p = build_pyramid(random_values(152064, 7));
  ASSERT_EQ(p.levels.size(), 10u);  // 76032, 38016, ..., 149 bins
  EXPECT_EQ(p.levels.front().bins(), 76032u);
  EXPECT_EQ(p.levels.back().bins(), 149u);
  // A plot picks the coarsest level with at least one bin per pixel column.
  EXPECT_EQ(p.level_for(1200)->bins(), 2376u);
  EXPECT_EQ(p.level_for(1100)->bins(), 1188u);
  EXPECT_EQ(p.level_for(590)->bins(), 594u);
  EXPECT_EQ(p.level_for(100)->bins(), 149u);
  EXPECT_EQ(p.level_for(100000), nullptr) << "wider than the finest level: the values";
}

TEST(MinMaxPyramid, NaNIsFlaggedAndSkippedInfIsAValue) {
  std::vector<float> v = random_values(1037, 3);
  for (size_t i = 0; i < 8; ++i) v[i] = kNaN;  // a whole bin of 8 and more
  v[100] = kNaN;
  v[513] = kInf;
  v[700] = -kInf;
  v[1036] = kNaN;  // the last, short bin
  const views::MinMaxPyramid p = build_pyramid(v);
  expect_exact(p);
  EXPECT_EQ(p.hi, kInf);
  EXPECT_EQ(p.lo, -kInf);
  ASSERT_GE(p.levels.size(), 3u);
  const views::MinMaxLevel& eights = p.levels[2];
  ASSERT_EQ(eights.bin, 8u);
  EXPECT_TRUE(std::isnan(eights.lo[0]) && std::isnan(eights.hi[0]) && eights.nan[0]);
  EXPECT_TRUE(eights.nan[100 / 8]);
  EXPECT_FALSE(std::isnan(eights.hi[100 / 8])) << "one NaN does not hide the bin's values";
  EXPECT_EQ(eights.hi[513 / 8], kInf);
  EXPECT_EQ(eights.arg_hi[513 / 8], 513u);
  EXPECT_EQ(eights.lo[700 / 8], -kInf);
  EXPECT_TRUE(eights.nan.back());
}

TEST(MinMaxPyramid, AllNaNHasNoRange) {
  const views::MinMaxPyramid p = build_pyramid(std::vector<float>(600, kNaN));
  EXPECT_TRUE(std::isnan(p.lo) && std::isnan(p.hi));
  expect_exact(p);
  for (const views::MinMaxLevel& level : p.levels)
    EXPECT_TRUE(std::all_of(level.nan.begin(), level.nan.end(), [](uint8_t f) { return f; }));
}

TEST(LogitsPlot, RowsHoldAandBandTheirDistancePerPosition) {
  const uint64_t vocab = 1000, positions = 3;
  const std::vector<float> a = random_values(vocab * positions, 11);
  std::vector<float> b = random_values(vocab * positions, 12);
  b[vocab + 5] = kNaN;
  auto plot = build_logits_plot(a, b, vocab);
  ASSERT_EQ(plot->vocab, vocab);
  ASSERT_EQ(plot->positions, positions);
  ASSERT_EQ(plot->rows.size(), positions);
  EXPECT_TRUE(plot->note.empty());
  for (uint64_t t = 0; t < positions; ++t) {
    const views::LogitsRow& row = plot->rows[t];
    EXPECT_EQ(row.position, t);
    ASSERT_EQ(row.diff.values.size(), vocab);
    for (uint64_t i = 0; i < vocab; ++i) {
      EXPECT_EQ(row.a.values[i], a[t * vocab + i]);
      if (std::isnan(b[t * vocab + i]))
        EXPECT_TRUE(std::isnan(row.b.values[i]));
      else
        EXPECT_EQ(row.b.values[i], b[t * vocab + i]);
      if (t == 1 && i == 5)
        EXPECT_TRUE(std::isnan(row.diff.values[i]));
      else
        EXPECT_EQ(row.diff.values[i], std::fabs(b[t * vocab + i] - a[t * vocab + i]));
    }
    expect_exact(row.diff);
  }
}

TEST(LogitsPlot, KeepsTheLastPositionsWithinItsBudget) {
  const uint64_t vocab = 600, positions = 10;
  const std::vector<float> a = random_values(vocab * positions, 1),
                           b = random_values(vocab * positions, 2);
  auto all = build_logits_plot(a, b, vocab);
  auto one_row = build_logits_plot(a, b, vocab, 1);  // below one row: still the last one
  ASSERT_EQ(one_row->rows.size(), 1u);
  EXPECT_EQ(one_row->rows[0].position, positions - 1);
  EXPECT_FALSE(one_row->note.empty());
  auto some = build_logits_plot(a, b, vocab, 3 * 600 * 17 * 4);  // four rows' worth
  ASSERT_EQ(some->rows.size(), 4u);
  EXPECT_EQ(some->rows.front().position, positions - 4);
  EXPECT_EQ(some->rows.back().a.values, all->rows.back().a.values);
}

TEST(LogitsPlot, MismatchedCapturesGiveAnEmptyPlot) {
  EXPECT_TRUE(build_logits_plot({1, 2, 3}, {1, 2}, 3)->rows.empty());
  EXPECT_TRUE(build_logits_plot({1, 2, 3}, {1, 2, 3}, 2)->rows.empty());
  EXPECT_TRUE(build_logits_plot({}, {}, 4)->rows.empty());
}

}  // namespace
}  // namespace lockstep::app
