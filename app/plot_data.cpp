#include "app/plot_data.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

namespace lockstep::app {
namespace {

// Folds bin j's pair (2j, 2j + 1) of `finer` into one bin: its lo/hi (NaN = no value), whether
// it holds a NaN and where its max is.
void fold(const views::MinMaxLevel& finer, views::MinMaxLevel& out) {
  const size_t n = (finer.bins() + 1) / 2;
  out.bin = finer.bin * 2;
  out.lo.resize(n);
  out.hi.resize(n);
  out.nan.resize(n);
  out.arg_hi.resize(n);
  for (size_t j = 0; j < n; ++j) {
    const size_t l = 2 * j, r = std::min(2 * j + 1, finer.bins() - 1);
    float lo = finer.lo[l], hi = finer.hi[l];
    uint32_t arg = finer.arg_hi[l];
    if (r != l) {
      if (std::isnan(lo) || finer.lo[r] < lo) lo = finer.lo[r];
      if (std::isnan(hi) || finer.hi[r] > hi) {
        hi = finer.hi[r];
        arg = finer.arg_hi[r];
      }
    }
    out.lo[j] = lo;
    out.hi[j] = hi;
    out.nan[j] = finer.nan[l] | finer.nan[r];
    out.arg_hi[j] = arg;
  }
}

size_t pyramid_bytes(uint64_t n) {
  // values + per level (lo, hi, arg_hi: 4 bytes each; nan: 1) over n/2 + n/4 + ... < n bins
  return size_t(n) * (4 + 13);
}

}  // namespace

views::MinMaxPyramid build_pyramid(std::vector<float> values) {
  static std::atomic<uint64_t> next_id{1};
  views::MinMaxPyramid p;
  p.id = next_id.fetch_add(1, std::memory_order_relaxed);
  p.values = std::move(values);
  const std::vector<float>& v = p.values;
  for (float x : v) {
    if (std::isnan(x)) continue;
    if (std::isnan(p.lo) || x < p.lo) p.lo = x;
    if (std::isnan(p.hi) || x > p.hi) p.hi = x;
  }
  if (v.size() <= views::kPyramidMinBins) return p;
  // The bin-1 level as a view of the values, folded into bin 2, then level by level.
  views::MinMaxLevel ones;
  ones.bin = 1;
  ones.lo.resize(v.size());
  ones.hi.resize(v.size());
  ones.nan.resize(v.size());
  ones.arg_hi.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    ones.nan[i] = std::isnan(v[i]) ? 1 : 0;
    ones.lo[i] = ones.hi[i] = v[i];
    ones.arg_hi[i] = static_cast<uint32_t>(i);
  }
  const views::MinMaxLevel* finer = &ones;
  do {
    views::MinMaxLevel next;
    fold(*finer, next);
    p.levels.push_back(std::move(next));
    finer = &p.levels.back();
  } while (finer->bins() > views::kPyramidMinBins);
  return p;
}

std::shared_ptr<const views::LogitsPlot> build_logits_plot(const std::vector<float>& a,
                                                           const std::vector<float>& b,
                                                           uint64_t vocab, size_t budget_bytes) {
  auto plot = std::make_shared<views::LogitsPlot>();
  if (vocab == 0 || a.size() != b.size() || a.size() % vocab != 0 || a.empty()) return plot;
  plot->vocab = vocab;
  plot->positions = a.size() / vocab;
  const size_t per_row = 3 * pyramid_bytes(vocab);
  const uint64_t keep =
      std::clamp<uint64_t>(budget_bytes / std::max<size_t>(per_row, 1), 1, plot->positions);
  if (keep < plot->positions)
    plot->note = "the last " + std::to_string(keep) + " of " + std::to_string(plot->positions) +
                 " positions (memory budget)";
  for (uint64_t t = plot->positions - keep; t < plot->positions; ++t) {
    const auto row_a = a.begin() + static_cast<std::ptrdiff_t>(t * vocab);
    const auto row_b = b.begin() + static_cast<std::ptrdiff_t>(t * vocab);
    std::vector<float> diff(vocab);
    for (uint64_t i = 0; i < vocab; ++i) diff[i] = std::fabs(row_b[i] - row_a[i]);
    views::LogitsRow row;
    row.position = t;
    row.a = build_pyramid(std::vector<float>(row_a, row_a + static_cast<std::ptrdiff_t>(vocab)));
    row.b = build_pyramid(std::vector<float>(row_b, row_b + static_cast<std::ptrdiff_t>(vocab)));
    row.diff = build_pyramid(std::move(diff));
    plot->rows.push_back(std::move(row));
  }
  return plot;
}

}  // namespace lockstep::app
