#pragma once
// The run bar: the input (a prompt, or token ids), the chat template, prefill or decode, which
// stages and layers the map keeps, Run (Ctrl+R) / Cancel (Esc), a progress bar with the job's
// message (stage and layer while a lane runs) and elapsed time, and the font scale setting.
// The lanes, the fault and the thresholds of a run come from the Model & lanes panel.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// `now`: seconds on the steady clock (the elapsed time is now − job.started).
void draw_run_view(const Snapshot& snapshot, UiState& ui, double now, CommandSink& commands,
                   RectSink* rects);

// The run the current settings describe (lanes, fault, input, thresholds, stages, layers).
RunCommand run_command(const UiState& ui);

}  // namespace lockstep::views
