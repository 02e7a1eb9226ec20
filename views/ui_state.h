#pragma once
// What the views keep between frames that is not data (the chosen metric, the run controls,
// settings), and the screen rectangles of named widgets they report for the GUI tests.

#include <array>
#include <set>
#include <string>
#include <vector>

namespace lockstep::views {

// A PNG export of one widget (right-click → Export PNG…, views/plot.h): the view names the
// widget and the path; while it is pending the widget reports where it was drawn, and the
// frame loop reads those pixels back once the popup has gone (app/gui_png_capture.h).
struct PngRequest {
  std::string widget;  // "" = none pending
  std::string path;
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // the widget this frame, window pixels
  int frames = 0;                        // frames drawn since the request
};

// The Dumps tab's form (views/dumps_view.h).
struct DumpsForm {
  std::array<char, 512> dir_a{}, dir_b{}, export_dest{};
  int scope = 0;                 // export 0: every cell, 1: the ticked cells, 2: the selected one
  std::set<std::string> ticked;  // cell names ticked in the checklist
  bool aprt = true, npy = true, json = true, markdown = true, csv = true;
  bool overwrite = false;
  std::array<char, 512> png_path{};  // the Export PNG popup's path field
};

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
  DumpsForm dumps;
  PngRequest png;
};

struct NamedRect {
  std::string name;                      // "map.cell.lm_head", "panel.drilldown"
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // window pixels
};
using RectSink = std::vector<NamedRect>;

}  // namespace lockstep::views
