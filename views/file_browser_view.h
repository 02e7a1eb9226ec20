#pragma once
// A small modal file browser for opening a model: the current folder (listed by the worker,
// ListDirCommand → Snapshot::listing), Up, a folder field, a name filter, directories first;
// model files and folders are highlighted. Double-click enters a folder or opens a model;
// Ctrl+O (while no text field is active) or the panel's Browse button opens it.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// Call once per frame from the top-level window, whichever tab is shown.
void draw_file_browser(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                       RectSink* rects);

}  // namespace lockstep::views
