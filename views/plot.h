#pragma once
// Bar plots drawn with ImDrawList from precomputed heights (views/snapshot.h's Bars), with a
// hover readout; shared by the drill-down's histograms and per-token/per-head charts.

#include <imgui.h>

#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// Draws `bars` (and `overlay` over it, translucent, when given) in a box of `size`; hovering
// shows the bar's tip. Returns the hovered bar index, or -1.
int draw_bars(const char* id, const Bars& bars, ImVec2 size, ImU32 colour,
              const Bars* overlay = nullptr, ImU32 overlay_colour = 0);

// Right-click on [p0, p1] (a plot, the map) opens "Export PNG…": a path field (default
// ~/lockstep-<widget>-<time>.png) and a button that asks the frame loop to capture the widget
// (UiState::png). While a capture of `widget` is pending, reports where it is drawn; with
// `rects`, records "png.<widget>" (its rectangle) and "png.path", "png.save" (the popup's).
void png_export_menu(const char* widget, ImVec2 p0, ImVec2 p1, UiState& ui, CommandSink& commands,
                     RectSink* rects);
// The same over the last item.
void png_export_menu(const char* widget, UiState& ui, CommandSink& commands, RectSink* rects);

// The heat scale of the map: 0 (agrees) .. 1 (worst); < 0: no value.
ImU32 heat_colour(float t);

}  // namespace lockstep::views
