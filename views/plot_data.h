#pragma once
// Precomputed plot data the worker builds and the views draw by selection only: a min/max
// pyramid over a long series (the logits over a 152,064-entry vocabulary) and the logits plot
// of the drill-down. Plain data: no ImGui, no engine.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace lockstep::views {

// One level of a pyramid: the series cut into bins of `bin` consecutive elements (the last bin
// may be shorter).
struct MinMaxLevel {
  uint64_t bin = 0;              // elements per bin: 2, 4, 8, ...
  std::vector<float> lo, hi;     // [bins] min and max over the bin's non-NaN elements; NaN when
                                 // every element of the bin is NaN
  std::vector<uint8_t> nan;      // [bins] 1 when the bin holds a NaN
  std::vector<uint32_t> arg_hi;  // [bins] the index (into the series) of the bin's max
  size_t bins() const { return lo.size(); }
};

// A series and its levels, each halving the previous one's bin count (rounding up) until it
// has at most kPyramidMinBins bins. A plot `columns` pixels wide draws from the coarsest level
// with at least `columns` bins, one vertical min-max line per pixel column.
inline constexpr size_t kPyramidMinBins = 256;
struct MinMaxPyramid {
  std::vector<float> values;                           // [n] the series itself (the level of bin 1)
  std::vector<MinMaxLevel> levels;                     // finest (bin 2) first
  float lo = std::numeric_limits<float>::quiet_NaN();  // over every non-NaN value
  float hi = std::numeric_limits<float>::quiet_NaN();
  // Unique to each pyramid built (app::build_pyramid), never 0: what a plot's still image is
  // keyed by (views/plot_layer.h), where an address could be reused by a later pyramid.
  uint64_t id = 0;
  // The coarsest level with at least `columns` bins; nullptr: draw from `values`.
  const MinMaxLevel* level_for(size_t columns) const {
    for (size_t k = levels.size(); k-- > 0;)
      if (levels[k].bins() >= columns) return &levels[k];
    return nullptr;
  }
};

// The logits of one token position: lane A, lane B and |B - A| over the vocabulary.
struct LogitsRow {
  uint64_t position = 0;  // the token's index in the sequence
  MinMaxPyramid a, b, diff;
};

struct LogitsPlot {
  uint64_t vocab = 0;
  uint64_t positions = 0;       // token positions in the captured logits
  std::vector<LogitsRow> rows;  // the last rows.size() positions, in order
  std::string note;             // why fewer rows than positions, else ""
};

}  // namespace lockstep::views
