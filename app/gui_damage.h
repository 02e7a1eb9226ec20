#pragma once
// Partial redraw's bookkeeping: which framebuffer pixels can differ between two frames' draw
// data. Pure CPU work on copies of ImDrawData (no GL), so the diff is unit-testable; the frame
// loop's GL half is app/gui_compositor.h.
//
// Why it is safe: a pixel's colour is the background blended with, in order, every triangle
// that covers it (inside its command's scissor), each with its texture. Commands of the two
// frames are paired in order (draw lists by index; within a list a common prefix and suffix of
// commands); every command without a partner damages its whole box, and a pair damages the box
// of each triangle that differs (vertices byte for byte, through the indices), or all of both
// when the texture or the scissor differs. A pixel outside the damage then sees the same
// triangles in the same order in both frames. Anything the draw data cannot show (a texture's
// content, a draw callback, a bad index) makes the damage full.

#include <imgui.h>

#include <cstddef>
#include <vector>

namespace lockstep::app {

// Framebuffer pixels [x0, x1) x [y0, y1), top-left origin.
struct DamageRect {
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
  bool empty() const { return x1 <= x0 || y1 <= y0; }
  long long area() const { return empty() ? 0 : (long long)(x1 - x0) * (y1 - y0); }
  bool operator==(const DamageRect&) const = default;
};

// What a frame's draw data draws: copies of every list's commands, vertices and indices
// (ImGui reuses its buffers the next frame), plus what maps them onto the framebuffer.
struct DrawFrame {
  struct List {
    std::vector<ImDrawCmd> cmds;
    std::vector<ImDrawVert> vtx;
    std::vector<ImDrawIdx> idx;
  };
  std::vector<List> lists;
  ImVec2 display_pos{0, 0}, display_size{0, 0}, scale{1, 1};
  int fb_w = 0, fb_h = 0;  // the framebuffer the frame is drawn into

  // Reuses this object's buffers.
  void assign(const ImDrawData& data, int framebuffer_w, int framebuffer_h);
};

struct Damage {
  bool full = false;
  std::vector<DamageRect> rects;  // disjoint; empty and not full: nothing to draw

  // The share of the framebuffer to redraw: 1 when full.
  double fraction(int fb_w, int fb_h) const;
};

// At most this many damage rectangles: each costs one more set of commands to submit.
constexpr size_t kMaxDamageRects = 8;
// Damage over this share of the framebuffer is made full (one plain pass instead).
constexpr double kFullDamageShare = 0.6;

// The pixels that may differ between `previous` and `next`; full when there is no previous
// frame, the framebuffer's size or scale changed, or the draw data cannot be trusted.
Damage diff_frames(const DrawFrame* previous, const DrawFrame& next,
                   size_t max_rects = kMaxDamageRects);

// The integer scissor box Dear ImGui 1.86's OpenGL3 backend sets for `clip`, top-left origin,
// not clipped to the framebuffer; empty when the backend skips the command.
DamageRect backend_scissor(const ImVec4& clip, ImVec2 display_pos, ImVec2 scale, int fb_h);

// A clip rectangle for which the backend's scissor is exactly `pixels` (non-empty, inside the
// framebuffer): how a command is drawn only inside one damage rectangle.
ImVec4 clip_for_scissor(const DamageRect& pixels, ImVec2 display_pos, ImVec2 scale);

// What to render of a draw list to paint only inside `damage`: each command once per damage
// rectangle its scissor meets, its clip narrowed to the intersection, drawing only its
// triangles whose box meets a damage rectangle (the others paint no damaged pixel; a software
// rasteriser sets every submitted triangle up). `cmds` and `idx` are cleared first; the
// commands index `idx` and keep their vertex offsets into the list's vertices.
void restrict_draw_list(const ImDrawList& list, const std::vector<DamageRect>& damage,
                        ImVec2 display_pos, ImVec2 scale, int fb_h, ImVector<ImDrawCmd>& cmds,
                        ImVector<ImDrawIdx>& idx);

}  // namespace lockstep::app
