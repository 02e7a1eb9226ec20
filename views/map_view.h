#pragma once
// The stage × layer map: a heatmap table of one metric (rows = layers, then the whole-model row;
// columns = stages in plan order), the first divergence outlined in magenta, the selected cell
// in white, "—" where a stage has no cell. Click (or N / P) selects a cell.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

inline constexpr unsigned kFirstDivergenceRgb = 0xFF00FF;  // the outline, for tests and users

void draw_map_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects);

}  // namespace lockstep::views
