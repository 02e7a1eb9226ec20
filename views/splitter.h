#pragma once
// A draggable bar between two panes (this ImGui has no docking): the caller lays out the panes
// with its sizes and applies the returned drag.

#include <imgui.h>

#include "views/ui_state.h"

namespace lockstep::views {

// A bar of `size` at the cursor; `vertical`: the bar stands between a left and a right pane and
// drags along x, else between an upper and a lower pane along y. Returns the pointer's movement
// along that axis this frame while the bar is dragged, else 0. Records the bar as `name`.
float draw_splitter(const char* name, bool vertical, ImVec2 size, const char* tooltip,
                    RectSink* rects);

}  // namespace lockstep::views
