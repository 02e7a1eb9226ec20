#pragma once
// The selected cell in depth: both sides' statistics, value and diff histograms, the largest
// divergent elements (sign flips highlighted), per-token and per-head relative RMS, the replay
// verdict with a Replay button, the diagnosis and its evidence, and "Copy values". For the
// logits cell, A, B and |B - A| over the vocabulary for one token position, with a readout.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// `ui` keeps the logits plot's position and readout; a right-click on a plot exports it as PNG
// (views/plot.h png_export_menu).
void draw_drilldown_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                         RectSink* rects);

}  // namespace lockstep::views
