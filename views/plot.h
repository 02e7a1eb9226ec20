#pragma once
// Bar plots drawn with ImDrawList from precomputed heights (views/snapshot.h's Bars), with a
// hover readout; shared by the drill-down's histograms and per-token/per-head charts.

#include <imgui.h>

#include "views/snapshot.h"

namespace lockstep::views {

// Draws `bars` (and `overlay` over it, translucent, when given) in a box of `size`; hovering
// shows the bar's tip. Returns the hovered bar index, or -1.
int draw_bars(const char* id, const Bars& bars, ImVec2 size, ImU32 colour,
              const Bars* overlay = nullptr, ImU32 overlay_colour = 0);

// The heat scale of the map: 0 (agrees) .. 1 (worst); < 0: no value.
ImU32 heat_colour(float t);

}  // namespace lockstep::views
