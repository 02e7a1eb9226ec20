#pragma once
// The selected cell in depth: both sides' statistics, value and diff histograms, the largest
// divergent elements (sign flips highlighted), per-token and per-head relative RMS, the replay
// verdict with a Replay button, the diagnosis and its evidence, and "Copy values".

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

void draw_drilldown_view(const Snapshot& snapshot, CommandSink& commands, RectSink* rects);

}  // namespace lockstep::views
