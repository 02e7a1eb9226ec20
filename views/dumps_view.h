#pragma once
// The Dumps tab: open one or two APRT dump directories (typed or pasted paths) and list their
// cells (shape, size, status: ok, missing, malformed with the parser's message), use them as
// lanes A and B, and export the current run (every cell, the ticked ones, or the selected one)
// as APRT + manifest, NPY, and the comparison as JSON, Markdown and CSV. The listing and the
// export run on the worker (engine/dump_export.h); this view only draws and posts commands.

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

void draw_dumps_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects);

}  // namespace lockstep::views
