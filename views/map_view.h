#pragma once
// The stage × layer map: a heatmap table of one metric (rows = layers, then the whole-model row;
// columns = stages in plan order), the first divergence outlined in magenta, the selected cell
// in white, "—" where a stage has no cell. Click (or N / P) selects a cell. Rows can be sorted
// worst first (the worker's precomputed order) and filtered to the diverging layers; a text
// filter keeps the stages whose name contains it (rows with no cell left are hidden).

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

inline constexpr unsigned kFirstDivergenceRgb = 0xFF00FF;  // the outline, for tests and users

void draw_map_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects);

}  // namespace lockstep::views
