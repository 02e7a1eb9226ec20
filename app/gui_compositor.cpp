#include "app/gui_compositor.h"

#define GL_GLEXT_PROTOTYPES 1
#include <GL/gl.h>
#include <GL/glext.h>
#include <backends/imgui_impl_opengl3.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

namespace lockstep::app {
namespace {

// The pixels of the bound read framebuffer's `buffer`, RGB, rows top first.
std::vector<uint8_t> read_rgb(GLenum buffer, int w, int h) {
  std::vector<uint8_t> bottom_first(size_t(w) * size_t(h) * 3);
  glPixelStorei(GL_PACK_ALIGNMENT, 1);
  glReadBuffer(buffer);
  glReadPixels(0, 0, w, h, GL_RGB, GL_UNSIGNED_BYTE, bottom_first.data());
  std::vector<uint8_t> top_first(bottom_first.size());
  const size_t row = size_t(w) * 3;
  for (int y = 0; y < h; ++y)
    std::copy_n(bottom_first.data() + size_t(h - 1 - y) * row, row,
                top_first.data() + size_t(y) * row);
  return top_first;
}

void clear(const float background[3]) {
  glClearColor(background[0], background[1], background[2], 1.0f);
  glClear(GL_COLOR_BUFFER_BIT);
}

}  // namespace

bool FrameCompositor::partial_from_environment() {
  const char* env = std::getenv("LOCKSTEP_PARTIAL_REDRAW");
  return !env || std::string_view(env) != "0";
}

FrameCompositor::~FrameCompositor() {
  release(composed_);
  release(scratch_);
}

void FrameCompositor::release(Target& t) {
  if (t.framebuffer) glDeleteFramebuffers(1, &t.framebuffer);
  if (t.texture) glDeleteTextures(1, &t.texture);
  t = Target{};
}

bool FrameCompositor::ensure(Target& t, int fb_w, int fb_h, bool& resized) {
  resized = false;
  if (t.framebuffer && t.w == fb_w && t.h == fb_h) return true;
  resized = true;
  GLint texture_before = 0, framebuffer_before = 0;
  glGetIntegerv(GL_TEXTURE_BINDING_2D, &texture_before);
  glGetIntegerv(GL_FRAMEBUFFER_BINDING, &framebuffer_before);
  if (!t.texture) glGenTextures(1, &t.texture);
  glBindTexture(GL_TEXTURE_2D, t.texture);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MIN_FILTER, GL_NEAREST);
  glTexParameteri(GL_TEXTURE_2D, GL_TEXTURE_MAG_FILTER, GL_NEAREST);
  glTexImage2D(GL_TEXTURE_2D, 0, GL_RGBA8, fb_w, fb_h, 0, GL_RGBA, GL_UNSIGNED_BYTE, nullptr);
  if (!t.framebuffer) glGenFramebuffers(1, &t.framebuffer);
  glBindFramebuffer(GL_FRAMEBUFFER, t.framebuffer);
  glFramebufferTexture2D(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_TEXTURE_2D, t.texture, 0);
  const bool complete = glCheckFramebufferStatus(GL_FRAMEBUFFER) == GL_FRAMEBUFFER_COMPLETE;
  glBindFramebuffer(GL_FRAMEBUFFER, GLuint(framebuffer_before));
  glBindTexture(GL_TEXTURE_2D, GLuint(texture_before));
  if (!complete) {
    release(t);
    return false;
  }
  t.w = fb_w;
  t.h = fb_h;
  return true;
}

void FrameCompositor::draw_direct(ImDrawData& data, int fb_w, int fb_h, const float background[3]) {
  glViewport(0, 0, fb_w, fb_h);
  clear(background);
  ImGui_ImplOpenGL3_RenderDrawData(&data);
}

void FrameCompositor::compose(ImDrawData& data, int fb_w, int fb_h, const float background[3],
                              bool invalidate) {
  if (partial_ && !in_back_buffer_ && !default_checked_) {
    // A blit into a multisampled window framebuffer is an error: draw straight into it then.
    GLint samples = 0;
    glBindFramebuffer(GL_FRAMEBUFFER, 0);
    glGetIntegerv(GL_SAMPLE_BUFFERS, &samples);
    partial_ = samples == 0;
    default_checked_ = true;
  }
  bool resized = false;
  if (partial_ && in_back_buffer_ && fb_w > 0 && fb_h > 0) {
    resized = fb_w != back_w_ || fb_h != back_h_;  // a new back buffer: its pixels undefined
    back_w_ = fb_w;
    back_h_ = fb_h;
  } else if (!partial_ || fb_w <= 0 || fb_h <= 0 || !ensure(composed_, fb_w, fb_h, resized)) {
    draw_direct(data, fb_w, fb_h, background);
    stats_.partial = false;
    ++stats_.frames;
    ++stats_.full;
    stats_.damaged_share_sum += 1;
    stats_.last_share = 1;
    damage_ = Damage{.full = true};
    last_ = -1;
    return;
  }
  const int next = last_ == 0 ? 1 : 0;
  frames_[next].assign(data, fb_w, fb_h);
  if (invalidate || resized || last_ < 0)
    damage_ = Damage{.full = true};
  else
    damage_ = diff_frames(&frames_[last_], frames_[next]);
  last_ = next;

  glBindFramebuffer(GL_FRAMEBUFFER, in_back_buffer_ ? 0 : composed_.framebuffer);
  if (damage_.full) {
    glDisable(GL_SCISSOR_TEST);
    draw_direct(data, fb_w, fb_h, background);
  } else if (!damage_.rects.empty()) {
    glViewport(0, 0, fb_w, fb_h);
    glEnable(GL_SCISSOR_TEST);
    for (const DamageRect& r : damage_.rects) {
      glScissor(r.x0, fb_h - r.y1, r.x1 - r.x0, r.y1 - r.y0);
      clear(background);
    }
    glDisable(GL_SCISSOR_TEST);
    // The backend sets each command's scissor from its clip: narrowed clips keep it inside the
    // damage. ImGui leaves the lists alone until the next NewFrame; their commands and
    // indices go back after.
    const auto lists = size_t(data.CmdListsCount);
    restricted_cmds_.resize(lists);
    restricted_idx_.resize(lists);
    const int total_idx = data.TotalIdxCount;
    data.TotalIdxCount = 0;
    for (size_t i = 0; i < lists; ++i) {
      ImDrawList& l = *data.CmdLists[i];
      restrict_draw_list(l, damage_.rects, data.DisplayPos, data.FramebufferScale, fb_h,
                         restricted_cmds_[i], restricted_idx_[i]);
      l.CmdBuffer.swap(restricted_cmds_[i]);
      l.IdxBuffer.swap(restricted_idx_[i]);
      data.TotalIdxCount += l.IdxBuffer.Size;
    }
    ImGui_ImplOpenGL3_RenderDrawData(&data);
    for (size_t i = 0; i < lists; ++i) {
      data.CmdLists[i]->CmdBuffer.swap(restricted_cmds_[i]);
      data.CmdLists[i]->IdxBuffer.swap(restricted_idx_[i]);
    }
    data.TotalIdxCount = total_idx;
  }
  glDisable(GL_SCISSOR_TEST);  // the blit obeys the scissor test
  if (!in_back_buffer_) {
    glBindFramebuffer(GL_READ_FRAMEBUFFER, composed_.framebuffer);
    glBindFramebuffer(GL_DRAW_FRAMEBUFFER, 0);
    glBlitFramebuffer(0, 0, fb_w, fb_h, 0, 0, fb_w, fb_h, GL_COLOR_BUFFER_BIT, GL_NEAREST);
  }
  glBindFramebuffer(GL_FRAMEBUFFER, 0);

  const double share = damage_.fraction(fb_w, fb_h);
  stats_.partial = true;
  ++stats_.frames;
  if (damage_.full) ++stats_.full;
  if (!damage_.full && damage_.rects.empty()) ++stats_.unchanged;
  stats_.damaged_share_sum += share;
  stats_.last_share = share;
}

FrameCompositor::Check FrameCompositor::check_against_full(ImDrawData& data, int fb_w, int fb_h,
                                                           const float background[3]) {
  Check c;
  bool resized = false;
  if (fb_w <= 0 || fb_h <= 0 || !ensure(scratch_, fb_w, fb_h, resized)) return c;
  glBindFramebuffer(GL_FRAMEBUFFER, scratch_.framebuffer);
  glDisable(GL_SCISSOR_TEST);
  draw_direct(data, fb_w, fb_h, background);
  glBindFramebuffer(GL_READ_FRAMEBUFFER, scratch_.framebuffer);
  c.full = read_rgb(GL_COLOR_ATTACHMENT0, fb_w, fb_h);
  glBindFramebuffer(GL_FRAMEBUFFER, 0);
  c.composed = read_rgb(GL_BACK, fb_w, fb_h);
  c.w = fb_w;
  c.h = fb_h;
  for (size_t p = 0; p < c.full.size(); p += 3)
    if (c.full[p] != c.composed[p] || c.full[p + 1] != c.composed[p + 1] ||
        c.full[p + 2] != c.composed[p + 2])
      ++c.differing;
  return c;
}

FrameCompositor::Stats FrameCompositor::take_stats() {
  Stats s = stats_;
  stats_ = Stats{.partial = s.partial, .last_share = s.last_share};
  return s;
}

}  // namespace lockstep::app
