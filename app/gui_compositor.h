#pragma once
// Partial redraw, the GL half (the diff is app/gui_damage.h). The last composed frame lives in
// the back buffer itself when the window is presented by copying rectangles out of it
// (app/gui_present.h), else in an offscreen colour target the framebuffer's size that is copied
// to the back buffer each frame. Each frame only the pixels whose draw data changed are cleared
// and drawn again (each command's clip narrowed to the damage), so whatever reads the back
// buffer (screenshots, PNG export) reads the composed frame. Under Mesa's llvmpipe a frame's cost
// is mostly raster over the whole window; most frames change a few hundred pixels.
//
// LOCKSTEP_PARTIAL_REDRAW=0 in the environment draws every frame in full, straight into the
// back buffer, as before (to compare). GUI thread only, with the window's GL context current.

#include <imgui.h>

#include <cstdint>
#include <vector>

#include "app/gui_damage.h"

namespace lockstep::app {

class FrameCompositor {
 public:
  static bool partial_from_environment();  // false when LOCKSTEP_PARTIAL_REDRAW=0
  explicit FrameCompositor(bool partial) : partial_(partial) {}
  bool partial() const { return partial_; }
  // Compose in the back buffer itself, which nothing but this class draws into and which is
  // never swapped (app/gui_present.h); call before the first compose.
  void compose_in_back_buffer(bool on) { in_back_buffer_ = on; }
  FrameCompositor(const FrameCompositor&) = delete;
  FrameCompositor& operator=(const FrameCompositor&) = delete;
  ~FrameCompositor();  // frees the targets: call while the context lives

  // After ImGui::Render: draws `data` into the back buffer of the default framebuffer
  // (fb_w x fb_h), over `background`. `invalidate`: something the draw data cannot show
  // changed (a texture's content or sampling), so the whole frame is drawn again.
  void compose(ImDrawData& data, int fb_w, int fb_h, const float background[3], bool invalidate);

  // The test hooks' check, after compose and before the swap: `data` drawn again in full into
  // a second target, compared with the back buffer pixel by pixel.
  struct Check {
    int w = 0, h = 0;
    long long differing = 0;              // pixels whose RGB differ
    std::vector<uint8_t> composed, full;  // [h, w, 3], rows top first
  };
  Check check_against_full(ImDrawData& data, int fb_w, int fb_h, const float background[3]);

  // What compose redrew, since the last take_stats.
  struct Stats {
    bool partial = false;          // partial redraw on (and its target available)
    long long frames = 0;          // composed
    long long full = 0;            // of those, drawn in full
    long long unchanged = 0;       // of those, nothing to draw
    double damaged_share_sum = 0;  // sum over frames of the share redrawn (1 when full)
    double last_share = 1;         // the last frame's share
  };
  Stats take_stats();
  const Damage& last_damage() const { return damage_; }

 private:
  struct Target {
    unsigned framebuffer = 0, texture = 0;
    int w = 0, h = 0;
  };
  // Makes `t` fb_w x fb_h; false when no complete framebuffer object can be had.
  static bool ensure(Target& t, int fb_w, int fb_h, bool& resized);
  static void release(Target& t);
  void draw_direct(ImDrawData& data, int fb_w, int fb_h, const float background[3]);

  bool partial_;
  bool in_back_buffer_ = false;
  int back_w_ = 0, back_h_ = 0;   // in the back buffer: the size of the last composed frame
  bool default_checked_ = false;  // whether the window's framebuffer can take the blit
  Target composed_, scratch_;
  DrawFrame frames_[2];  // the last composed frame's draw data and this one's
  int last_ = -1;        // which of frames_ holds the last composed frame; -1 none
  Damage damage_;
  // Per list, its commands and indices narrowed to the damage.
  std::vector<ImVector<ImDrawCmd>> restricted_cmds_;
  std::vector<ImVector<ImDrawIdx>> restricted_idx_;
  Stats stats_;
};

}  // namespace lockstep::app
