#pragma once
// What the views keep between frames that is not data (the chosen metric, the run controls,
// settings), and the screen rectangles of named widgets they report for the GUI tests.

#include <array>
#include <string>
#include <vector>

namespace lockstep::views {

struct UiState {
  size_t metric = 0;  // index into kMetrics
  // The map's row order and filters: worst row first; only rows with a divergent cell; only
  // stages whose name contains the filter text.
  bool sort_by_worst = false;
  bool diverging_rows_only = false;
  std::array<char, 64> stage_filter{};
  // The two lanes a run compares: a lane name (app::lane_names(): "ref", "cpu", "cuda",
  // "cuda-graph") or "dump:" followed by an APRT dump directory. Lane A is the reference.
  std::string lane_a = "ref", lane_b = "cpu";
  std::string fault;  // FaultSpec text, planted in lane B; "" = none
  bool decode = false;
  float font_scale = 1.0f;
  bool settings_changed = false;  // set by a view when a persisted setting changed
  // The workbench layout, dragged with splitters (app/gui_app.cpp) and kept in settings.json:
  // sidebar width, map height (0: fit the map, up to half the height) and log width.
  float sidebar_width = 340, map_height = 0, log_width = 0;
  // The drill-down's logits plot: the position shown (-1: the last) and the hover readout of
  // the last frame ("" when the pointer is elsewhere).
  long logits_position = -1;
  std::string logits_readout;
};

struct NamedRect {
  std::string name;                      // "map.cell.lm_head", "panel.drilldown"
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // window pixels
};
using RectSink = std::vector<NamedRect>;

}  // namespace lockstep::views
