#pragma once
// The Model & lanes panel: the model's path (typed, from the recent list, from the file
// browser, or dropped onto the window), its hyperparameters and tensor table; lanes A and B
// (a live lane or a dump directory), the fault planted in lane B, and the divergence
// thresholds of a run. Everything shown was read by the worker (ModelInfo, RecentModel).

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

void draw_model_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects);

// Every frame, whichever tab is shown: a dump directory dropped onto the window becomes lane B
// (lane A when B already is a dump); a model opened some other way (dropped, recent, browser,
// command line) fills the path field. A model opened that lane ref cannot hold (its f32 weights
// exceed the free memory) turns lane ref into cpu and the noise floor off, with a log line; then
// the run UiState::run_when_model_opens waits for is posted.
void sync_model_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands);

}  // namespace lockstep::views
