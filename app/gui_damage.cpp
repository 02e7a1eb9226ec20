#include "app/gui_damage.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

// backend_scissor and clip_for_scissor mirror the scissor arithmetic of this version's
// imgui_impl_opengl3.cpp (later versions clamp the clip to the framebuffer first): check them
// against the new backend before moving on.
static_assert(IMGUI_VERSION_NUM == 18600, "check backend_scissor against the OpenGL3 backend");

namespace lockstep::app {
namespace {

// Two rectangles this close or closer are merged: a line of text is many glyphs side by side.
constexpr int kJoinGap = 4;

DamageRect intersect(const DamageRect& a, const DamageRect& b) {
  return {std::max(a.x0, b.x0), std::max(a.y0, b.y0), std::min(a.x1, b.x1), std::min(a.y1, b.y1)};
}

DamageRect unite(const DamageRect& a, const DamageRect& b) {
  return {std::min(a.x0, b.x0), std::min(a.y0, b.y0), std::max(a.x1, b.x1), std::max(a.y1, b.y1)};
}

bool near(const DamageRect& a, const DamageRect& b, int gap) {
  return a.x0 <= b.x1 + gap && b.x0 <= a.x1 + gap && a.y0 <= b.y1 + gap && b.y0 <= a.y1 + gap;
}

// Bounding box in framebuffer pixels, one pixel wider on each side than the vertices' extent.
struct Box {
  float x0 = std::numeric_limits<float>::max(), y0 = std::numeric_limits<float>::max();
  float x1 = std::numeric_limits<float>::lowest(), y1 = std::numeric_limits<float>::lowest();
  bool empty() const { return x1 < x0; }
  void add(const ImVec2& p) {
    x0 = std::min(x0, p.x);
    y0 = std::min(y0, p.y);
    x1 = std::max(x1, p.x);
    y1 = std::max(y1, p.y);
  }
};

// The framebuffer pixels a triangle inside `box` (window coordinates) can touch, with a pixel
// to spare on each side.
DamageRect pixels(const Box& box, ImVec2 display_pos, ImVec2 scale) {
  // Clamped before the conversion to int: a vertex may lie far outside the window.
  auto px = [](float v) { return std::clamp(v, -1e6f, 1e6f); };
  return {int(std::floor(px((box.x0 - display_pos.x) * scale.x))) - 1,
          int(std::floor(px((box.y0 - display_pos.y) * scale.y))) - 1,
          int(std::ceil(px((box.x1 - display_pos.x) * scale.x))) + 1,
          int(std::ceil(px((box.y1 - display_pos.y) * scale.y))) + 1};
}

class Accumulator {
 public:
  Accumulator(const DrawFrame& frame, size_t max_rects)
      : frame_(frame), max_(std::max<size_t>(1, max_rects)) {}

  void make_full() { full_ = true; }
  bool full() const { return full_; }

  // The pixels of `box` (window coordinates) inside `scissor`.
  void add(const Box& box, const DamageRect& scissor, const DrawFrame& frame) {
    if (box.empty() || full_) return;
    const DamageRect r = pixels(box, frame.display_pos, frame.scale);
    add_pixels(intersect(intersect(r, scissor), {0, 0, frame_.fb_w, frame_.fb_h}));
  }

  Damage take() {
    Damage d;
    long long area = 0;
    for (const DamageRect& r : rects_) area += r.area();
    if (full_ || double(area) > kFullDamageShare * double(frame_.fb_w) * double(frame_.fb_h))
      d.full = true;
    else
      d.rects = std::move(rects_);
    return d;
  }

 private:
  void add_pixels(DamageRect r) {
    if (r.empty()) return;
    // Merge with every rectangle it meets, until it meets none: the list stays disjoint.
    for (bool merged = true; merged;) {
      merged = false;
      for (size_t i = 0; i < rects_.size(); ++i)
        if (near(rects_[i], r, kJoinGap)) {
          r = unite(r, rects_[i]);
          rects_.erase(rects_.begin() + long(i));
          merged = true;
          break;
        }
    }
    rects_.push_back(r);
    if (rects_.size() <= max_) return;
    // Too many: merge the pair whose union adds the least area.
    size_t bi = 0, bj = 1;
    long long best = std::numeric_limits<long long>::max();
    for (size_t i = 0; i < rects_.size(); ++i)
      for (size_t j = i + 1; j < rects_.size(); ++j) {
        const long long extra =
            unite(rects_[i], rects_[j]).area() - rects_[i].area() - rects_[j].area();
        if (extra < best) {
          best = extra;
          bi = i;
          bj = j;
        }
      }
    const DamageRect u = unite(rects_[bi], rects_[bj]);
    rects_.erase(rects_.begin() + long(bj));
    rects_.erase(rects_.begin() + long(bi));
    add_pixels(u);
  }

  const DrawFrame& frame_;
  size_t max_;
  bool full_ = false;
  std::vector<DamageRect> rects_;
};

// Whether every index of `cmd` and the vertex it names lie inside the list's buffers.
bool indices_valid(const DrawFrame::List& l, const ImDrawCmd& c) {
  if (size_t(c.IdxOffset) + c.ElemCount > l.idx.size() || c.ElemCount % 3 != 0) return false;
  for (unsigned i = 0; i < c.ElemCount; ++i)
    if (size_t(c.VtxOffset) + l.idx[c.IdxOffset + i] >= l.vtx.size()) return false;
  return true;
}

const ImDrawVert& vertex(const DrawFrame::List& l, const ImDrawCmd& c, unsigned element) {
  return l.vtx[c.VtxOffset + l.idx[c.IdxOffset + element]];
}

bool same_vertex(const ImDrawVert& a, const ImDrawVert& b) {
  return std::memcmp(&a, &b, sizeof(ImDrawVert)) == 0;
}

bool same_triangle(const DrawFrame::List& la, const ImDrawCmd& a, const DrawFrame::List& lb,
                   const ImDrawCmd& b, unsigned tri) {
  for (unsigned k = 0; k < 3; ++k)
    if (!same_vertex(vertex(la, a, tri * 3 + k), vertex(lb, b, tri * 3 + k))) return false;
  return true;
}

// The box of triangles [first, last) of a command.
Box triangles_box(const DrawFrame::List& l, const ImDrawCmd& c, unsigned first, unsigned last) {
  Box box;
  for (unsigned e = first * 3; e < last * 3; ++e) box.add(vertex(l, c, e).pos);
  return box;
}

DamageRect scissor_of(const ImDrawCmd& c, const DrawFrame& f) {
  return backend_scissor(c.ClipRect, f.display_pos, f.scale, f.fb_h);
}

// A command of one frame with no partner in the other: all of it.
void damage_whole(Accumulator& acc, const DrawFrame& f, const DrawFrame::List& l,
                  const ImDrawCmd& c) {
  acc.add(triangles_box(l, c, 0, c.ElemCount / 3), scissor_of(c, f), f);
}

bool same_header(const ImDrawCmd& a, const ImDrawCmd& b) {
  return a.TextureId == b.TextureId && a.ElemCount == b.ElemCount &&
         std::memcmp(&a.ClipRect, &b.ClipRect, sizeof(ImVec4)) == 0;
}

void diff_pair(Accumulator& acc, const DrawFrame& fo, const DrawFrame::List& lo, const ImDrawCmd& o,
               const DrawFrame& fn, const DrawFrame::List& ln, const ImDrawCmd& n) {
  const DamageRect so = scissor_of(o, fo), sn = scissor_of(n, fn);
  if (o.TextureId != n.TextureId || so != sn) {
    damage_whole(acc, fo, lo, o);
    damage_whole(acc, fn, ln, n);
    return;
  }
  const unsigned to = o.ElemCount / 3, tn = n.ElemCount / 3;
  if (to == tn) {
    // Runs of differing triangles, one box per run (a changed string is one run).
    Box run_o, run_n;
    auto flush = [&] {
      acc.add(run_o, so, fo);
      acc.add(run_n, sn, fn);
      run_o = run_n = Box{};
    };
    for (unsigned t = 0; t < to; ++t) {
      if (same_triangle(lo, o, ln, n, t)) {
        if (!run_o.empty()) flush();
        continue;
      }
      for (unsigned k = 0; k < 3; ++k) {
        run_o.add(vertex(lo, o, t * 3 + k).pos);
        run_n.add(vertex(ln, n, t * 3 + k).pos);
      }
    }
    flush();
    return;
  }
  // Triangles added or removed: the part between the common prefix and suffix.
  const unsigned shorter = std::min(to, tn);
  unsigned prefix = 0;
  while (prefix < shorter && same_triangle(lo, o, ln, n, prefix)) ++prefix;
  unsigned suffix = 0;
  while (suffix < shorter - prefix) {
    const unsigned a = to - 1 - suffix, b = tn - 1 - suffix;
    bool same = true;
    for (unsigned k = 0; k < 3 && same; ++k)
      same = same_vertex(vertex(lo, o, a * 3 + k), vertex(ln, n, b * 3 + k));
    if (!same) break;
    ++suffix;
  }
  acc.add(triangles_box(lo, o, prefix, to - suffix), so, fo);
  acc.add(triangles_box(ln, n, prefix, tn - suffix), sn, fn);
}

void diff_list(Accumulator& acc, const DrawFrame& fo, const DrawFrame::List& lo,
               const DrawFrame& fn, const DrawFrame::List& ln) {
  const size_t co = lo.cmds.size(), cn = ln.cmds.size();
  // Commands paired in order: all by position when the counts agree, else the common prefix
  // and suffix of commands alike in texture, clip and size; the rest have no partner.
  size_t prefix = std::min(co, cn), suffix = 0;
  if (co != cn) {
    prefix = 0;
    while (prefix < std::min(co, cn) && same_header(lo.cmds[prefix], ln.cmds[prefix])) ++prefix;
    while (suffix < std::min(co, cn) - prefix &&
           same_header(lo.cmds[co - 1 - suffix], ln.cmds[cn - 1 - suffix]))
      ++suffix;
  }
  for (size_t i = 0; i < prefix; ++i) diff_pair(acc, fo, lo, lo.cmds[i], fn, ln, ln.cmds[i]);
  for (size_t i = 0; i < suffix; ++i)
    diff_pair(acc, fo, lo, lo.cmds[co - 1 - i], fn, ln, ln.cmds[cn - 1 - i]);
  for (size_t i = prefix; i < co - suffix; ++i) damage_whole(acc, fo, lo, lo.cmds[i]);
  for (size_t i = prefix; i < cn - suffix; ++i) damage_whole(acc, fn, ln, ln.cmds[i]);
}

// Callbacks draw what the draw data does not show; bad indices cannot be compared.
bool trusted(const DrawFrame& f) {
  if (f.fb_w <= 0 || f.fb_h <= 0) return false;
  // The backend derives its viewport from the draw data: it must be the framebuffer's.
  if (int(f.display_size.x * f.scale.x) != f.fb_w || int(f.display_size.y * f.scale.y) != f.fb_h)
    return false;
  for (const DrawFrame::List& l : f.lists)
    for (const ImDrawCmd& c : l.cmds)
      if (c.UserCallback || !indices_valid(l, c)) return false;
  return true;
}

bool same_vec(ImVec2 a, ImVec2 b) {
  return a.x == b.x && a.y == b.y;
}

}  // namespace

void DrawFrame::assign(const ImDrawData& data, int framebuffer_w, int framebuffer_h) {
  lists.resize(size_t(std::max(data.CmdListsCount, 0)));
  for (size_t i = 0; i < lists.size(); ++i) {
    const ImDrawList& src = *data.CmdLists[i];
    List& l = lists[i];
    l.cmds.assign(src.CmdBuffer.begin(), src.CmdBuffer.end());
    l.vtx.assign(src.VtxBuffer.begin(), src.VtxBuffer.end());
    l.idx.assign(src.IdxBuffer.begin(), src.IdxBuffer.end());
  }
  display_pos = data.DisplayPos;
  display_size = data.DisplaySize;
  scale = data.FramebufferScale;
  fb_w = framebuffer_w;
  fb_h = framebuffer_h;
}

double Damage::fraction(int fb_w, int fb_h) const {
  if (full) return 1.0;
  if (fb_w <= 0 || fb_h <= 0) return 0.0;
  long long area = 0;
  for (const DamageRect& r : rects) area += r.area();
  return double(area) / (double(fb_w) * double(fb_h));
}

Damage diff_frames(const DrawFrame* previous, const DrawFrame& next, size_t max_rects) {
  Accumulator acc(next, max_rects);
  if (!previous || previous->fb_w != next.fb_w || previous->fb_h != next.fb_h ||
      !same_vec(previous->display_pos, next.display_pos) ||
      !same_vec(previous->display_size, next.display_size) ||
      !same_vec(previous->scale, next.scale) || !trusted(*previous) || !trusted(next)) {
    acc.make_full();
    return acc.take();
  }
  const DrawFrame& fo = *previous;
  const size_t n = std::min(fo.lists.size(), next.lists.size());
  for (size_t i = 0; i < n && !acc.full(); ++i)
    diff_list(acc, fo, fo.lists[i], next, next.lists[i]);
  // Lists without a partner (a popup opened or closed), drawn after the paired ones.
  for (size_t i = n; i < fo.lists.size(); ++i)
    for (const ImDrawCmd& c : fo.lists[i].cmds) damage_whole(acc, fo, fo.lists[i], c);
  for (size_t i = n; i < next.lists.size(); ++i)
    for (const ImDrawCmd& c : next.lists[i].cmds) damage_whole(acc, next, next.lists[i], c);
  return acc.take();
}

DamageRect backend_scissor(const ImVec4& clip, ImVec2 display_pos, ImVec2 scale, int fb_h) {
  // As imgui_impl_opengl3.cpp 1.86 computes it (float, then truncation to int).
  const ImVec2 clip_min((clip.x - display_pos.x) * scale.x, (clip.y - display_pos.y) * scale.y);
  const ImVec2 clip_max((clip.z - display_pos.x) * scale.x, (clip.w - display_pos.y) * scale.y);
  if (clip_max.x <= clip_min.x || clip_max.y <= clip_min.y) return {};
  auto to_int = [](float v) { return int(std::clamp(v, -1e9f, 1e9f)); };
  const int x = to_int(clip_min.x), w = to_int(clip_max.x - clip_min.x);
  const int gl_y = to_int(float(fb_h) - clip_max.y), h = to_int(clip_max.y - clip_min.y);
  // GL's rows [gl_y, gl_y + h) counted from the bottom, as rows from the top.
  return {x, fb_h - gl_y - h, x + w, fb_h - gl_y};
}

ImVec4 clip_for_scissor(const DamageRect& p, ImVec2 display_pos, ImVec2 scale) {
  // Framebuffer-space bounds a quarter or half pixel off the integers, so that the backend's
  // truncations land on exactly p's edges despite the float round trip through `scale`:
  // x = int(x0 + .25), w = int(x1 - x0 + .25), GL y = int(fb_h - y1 + .25),
  // h = int(y1 - y0 + .25).
  const float min_x = float(p.x0) + 0.25f, max_x = float(p.x1) + 0.5f;
  const float min_y = float(p.y0) - 0.5f, max_y = float(p.y1) - 0.25f;
  return {min_x / scale.x + display_pos.x, min_y / scale.y + display_pos.y,
          max_x / scale.x + display_pos.x, max_y / scale.y + display_pos.y};
}

void restrict_draw_list(const ImDrawList& list, const std::vector<DamageRect>& damage,
                        ImVec2 display_pos, ImVec2 scale, int fb_h, ImVector<ImDrawCmd>& cmds,
                        ImVector<ImDrawIdx>& idx) {
  cmds.resize(0);
  idx.resize(0);
  std::vector<DamageRect> meets;  // the damage inside this command's scissor
  for (const ImDrawCmd& c : list.CmdBuffer) {
    const DamageRect s = backend_scissor(c.ClipRect, display_pos, scale, fb_h);
    if (s.empty() || c.UserCallback) continue;
    meets.clear();
    for (const DamageRect& d : damage)
      if (const DamageRect r = intersect(s, d); !r.empty()) meets.push_back(r);
    if (meets.empty()) continue;
    const auto first = unsigned(idx.Size);
    for (unsigned e = 0; e + 3 <= c.ElemCount; e += 3) {
      const ImDrawIdx* tri = &list.IdxBuffer[int(c.IdxOffset + e)];
      Box box;
      for (unsigned k = 0; k < 3; ++k) box.add(list.VtxBuffer[int(c.VtxOffset + tri[k])].pos);
      const DamageRect px = pixels(box, display_pos, scale);
      bool keep = false;
      for (const DamageRect& r : meets) keep = keep || !intersect(px, r).empty();
      if (!keep) continue;
      for (unsigned k = 0; k < 3; ++k) idx.push_back(tri[k]);
    }
    if (unsigned(idx.Size) == first) continue;
    for (const DamageRect& r : meets) {
      ImDrawCmd narrowed = c;
      narrowed.ClipRect = clip_for_scissor(r, display_pos, scale);
      narrowed.IdxOffset = first;
      narrowed.ElemCount = unsigned(idx.Size) - first;
      cmds.push_back(narrowed);
    }
  }
}

}  // namespace lockstep::app
