#pragma once
// Bar plots drawn with ImDrawList from precomputed heights (views/snapshot.h's Bars), with a
// hover readout; shared by the drill-down's histograms and per-token/per-head charts.

#include <imgui.h>

#include <vector>

#include "views/plot_data.h"
#include "views/plot_layer.h"
#include "views/snapshot.h"
#include "views/ui_state.h"

namespace lockstep::views {

// Draws `bars` (and `overlay` over it, translucent, when given) in a box of `size`; hovering
// shows the bar's tip. Returns the hovered bar index, or -1.
int draw_bars(const char* id, const Bars& bars, ImVec2 size, ImU32 colour,
              const Bars* overlay = nullptr, ImU32 overlay_colour = 0);

// One series of a min/max plot: its pyramid and colour.
struct MinMaxSeries {
  const MinMaxPyramid* pyramid = nullptr;
  ImU32 colour = 0;
};
// What the pointer is over in a min/max plot: the elements of the hovered pixel column
// [first, last) and the one holding the largest value of the plot's `peak` series.
struct MinMaxHover {
  int64_t first = -1, last = -1, peak = -1;
};
// Draws the series (equal lengths) over one x axis and the y range [lo, hi] in a box of `size`:
// one vertical min-max line per pixel column, from the coarsest pyramid level with at least one
// bin per column (selection only; the worker built the levels). Columns holding a NaN get a red
// tick at the top. Returns the hovered column's elements (first = -1 when not hovered).
// With `layer`, all but the hover line is drawn from the layer's texture when it shows the same
// (views/plot_layer.h), else drawn and recorded for the frame loop to render.
MinMaxHover draw_minmax(const char* id, const std::vector<MinMaxSeries>& series, float lo, float hi,
                        ImVec2 size, const MinMaxPyramid* peak, PlotLayer* layer = nullptr);
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
