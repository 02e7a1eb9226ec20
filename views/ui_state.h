#pragma once
// What the views keep between frames that is not data (the chosen metric, the run controls,
// settings), and the screen rectangles of named widgets they report for the GUI tests.

#include <array>
#include <set>
#include <string>
#include <vector>

#include "views/plot_layer.h"

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
  // The workbench layout, dragged with splitters (app/gui_app.cpp) and kept in settings.json:
  // sidebar width, map height (0: fit the map, up to half the height) and log width.
  float sidebar_width = 340, map_height = 0, log_width = 0;
  // The drill-down's logits plot: the position shown (-1: the last) and the hover readout of
  // the last frame ("" when the pointer is elsewhere).
  long logits_position = -1;
  std::string logits_readout;
  // Model & lanes panel (views/model_view.h): the path field, the dump directories typed for
  // lanes A and B, the thresholds and the noise-floor source of a run.
  std::array<char, 1024> model_path{};
  std::array<char, 1024> dump_dir_a{}, dump_dir_b{};
  double abs_threshold = 1e-3, floor_factor = 10.0;
  bool floor_cpu_ref = true;
  uint64_t seen_dump_drop = 0;  // the last dropped dump directory already made a lane
  std::string seen_model;       // the opened model's path, once copied into the path field
  // `lockstep MODEL`: the first run waits until the model is open (its lanes may change).
  bool run_when_model_opens = false;
  // The file browser (views/file_browser_view.h): open request, its directory and filter.
  bool browser_open = false;
  std::string browser_dir;  // "" until the first listing arrives
  std::array<char, 128> browser_filter{};
  std::array<char, 1024> browser_path{};  // the browser's folder field
  std::string browser_selected;           // path of the entry clicked once
  // Run panel: the input (a prompt, or token ids as text), the chat template, and what the
  // map keeps (stage names, none = all; a layer range).
  std::array<char, 4096> prompt{};
  std::array<char, 1024> token_ids{};
  bool use_token_ids = false;
  bool chat = false;
  std::vector<std::string> stages;
  std::array<char, 32> layers{'a', 'l', 'l'};
  DumpsForm dumps;
  PngRequest png;
  PlotLayers plot_layers;  // the still images of the drill-down's min/max plots
};

struct NamedRect {
  std::string name;                      // "map.cell.lm_head", "panel.drilldown"
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // window pixels
};
using RectSink = std::vector<NamedRect>;

}  // namespace lockstep::views
