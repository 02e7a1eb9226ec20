#pragma once
// A plot's still image, kept as a texture between frames. Drawing 152,064 logits takes one
// vertical line per pixel column; under a software rasterizer (Mesa llvmpipe) those 1-pixel
// columns cost more than the rest of the window together, and they only change when the data,
// the range or the size does. So the view records the still part (box, zero line, series) once
// per change into `pending`, in plot-local coordinates, and draws it directly that frame; the
// frame loop renders `pending` into a texture (app/gui_layers.h), and later frames draw the
// texture, one quad, with the live part (hover line, readout) over it.

#include <imgui.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace lockstep::views {

struct PlotLayer {
  uint64_t key = 0;  // what `texture` shows (a hash of data, range, size, scale); 0: nothing
  ImTextureID texture = nullptr;  // owned by the frame loop
  // Recorded by the view for `pending_key`, waiting to be rendered; null when none.
  std::shared_ptr<ImDrawList> pending;
  uint64_t pending_key = 0;
  ImVec2 pending_size{0, 0};  // the plot's size in window pixels
};

// The layers by plot name ("drilldown.logits", ...).
using PlotLayers = std::map<std::string, PlotLayer>;

}  // namespace lockstep::views
