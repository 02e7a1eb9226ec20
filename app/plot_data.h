#pragma once
// Builds the drill-down's precomputed plot data (views/plot_data.h) on the worker.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "views/plot_data.h"

namespace lockstep::app {

// The pyramid of `values`: min and max per bin over the non-NaN elements (±Inf count as
// values), the index of each bin's max (the first one on ties), and whether a bin holds a NaN.
views::MinMaxPyramid build_pyramid(std::vector<float> values);

// The logits plot of a [positions, vocab] pair of captures (row-major, equal sizes): A, B and
// |B - A| per position. Keeps the last positions whose pyramids fit in `budget_bytes` (at least
// one).
inline constexpr size_t kLogitsPlotBudget = size_t{128} << 20;
std::shared_ptr<const views::LogitsPlot> build_logits_plot(const std::vector<float>& a,
                                                           const std::vector<float>& b,
                                                           uint64_t vocab,
                                                           size_t budget_bytes = kLogitsPlotBudget);

}  // namespace lockstep::app
