#pragma once
// The frame loop's half of the plots' still images (views/plot_layer.h): renders the geometry a
// view recorded into a texture of its own, offscreen, with the ImGui OpenGL backend, and owns
// those textures. GUI thread only, with the window's GL context current.

#include <imgui.h>

#include <map>
#include <string>

#include "views/plot_layer.h"

namespace lockstep::app {

// The font atlas's sampling: nearest while text is drawn unscaled (ImGui puts glyphs on whole
// pixels, so the pixels are the same, and a software rasterizer reads one texel instead of
// four), linear when the font scale or a high-DPI framebuffer stretches it. Call after the
// backend's NewFrame (which makes the atlas texture); cheap when nothing changes. True when it
// changed the sampling (text drawn before looks different now).
bool update_font_filter(ImVec2 framebuffer_scale, float font_scale);

class PlotLayerTextures {
 public:
  PlotLayerTextures() = default;
  PlotLayerTextures(const PlotLayerTextures&) = delete;
  PlotLayerTextures& operator=(const PlotLayerTextures&) = delete;
  ~PlotLayerTextures();  // frees the textures: call while the context lives

  // After ImGui::Render: every layer with pending geometry gets it rendered into its texture
  // at `scale` framebuffer pixels per window pixel; its key becomes the pending key. A layer
  // that cannot be rendered (no framebuffer object) keeps no texture, and its plot is drawn
  // directly every frame. True when a texture was rendered (its pixels changed while the quads
  // that draw it may not have).
  bool render_pending(views::PlotLayers& layers, ImVec2 scale);

 private:
  struct Texture {
    unsigned id = 0;
    int w = 0, h = 0;
  };
  unsigned framebuffer_ = 0;
  std::map<std::string, Texture> textures_;  // by layer name
};

}  // namespace lockstep::app
