#pragma once
// The run bar: the fault planted in lane cpu, prefill or decode, Run (Ctrl+R) / Cancel (Esc), a
// progress bar with the job's message and elapsed time, and the font scale setting.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// `now`: seconds on the steady clock (the elapsed time is now − job.started).
void draw_run_view(const Snapshot& snapshot, UiState& ui, double now, CommandSink& commands,
                   RectSink* rects);

}  // namespace lockstep::views
