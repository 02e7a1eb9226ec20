// The partial redraw's diff (app/gui_damage.h): which pixels two frames' draw data may paint
// differently. Frames are built by hand: quads of two triangles, as ImGui records rectangles
// and glyphs.

#include "app/gui_damage.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>

namespace lockstep::app {
namespace {

constexpr int kW = 400, kH = 300;
const ImTextureID kFont = reinterpret_cast<ImTextureID>(intptr_t(1));
const ImTextureID kPlot = reinterpret_cast<ImTextureID>(intptr_t(2));

ImDrawCmd command(ImVec4 clip = {0, 0, kW, kH}, ImTextureID tex = kFont) {
  ImDrawCmd c;
  c.ClipRect = clip;
  c.TextureId = tex;
  return c;
}

// Appends a quad [x0, x1) x [y0, y1) of `col` to the list's last command.
void quad(DrawFrame::List& l, float x0, float y0, float x1, float y1, ImU32 col = 0xff00ff00) {
  if (l.cmds.empty()) l.cmds.push_back(command());
  ImDrawCmd& c = l.cmds.back();
  if (c.ElemCount == 0) {
    c.IdxOffset = unsigned(l.idx.size());
    c.VtxOffset = unsigned(l.vtx.size());
  }
  const auto base = ImDrawIdx(l.vtx.size() - c.VtxOffset);
  for (ImVec2 p : {ImVec2(x0, y0), ImVec2(x1, y0), ImVec2(x1, y1), ImVec2(x0, y1)})
    l.vtx.push_back(ImDrawVert{p, ImVec2(0, 0), col});
  for (int k : {0, 1, 2, 0, 2, 3}) l.idx.push_back(ImDrawIdx(base + k));
  c.ElemCount += 6;
}

DrawFrame frame(int lists = 1) {
  DrawFrame f;
  f.lists.resize(size_t(lists));
  f.display_size = ImVec2(kW, kH);
  f.fb_w = kW;
  f.fb_h = kH;
  return f;
}

// A window-like list: a panel, then 40 "glyphs" in a row, then a far-away box.
DrawFrame window_frame() {
  DrawFrame f = frame();
  DrawFrame::List& l = f.lists[0];
  quad(l, 10, 10, 390, 290, 0xff202020);
  for (int i = 0; i < 40; ++i) quad(l, 20 + 8 * i, 20, 26 + 8 * i, 32, 0xffffffff);
  quad(l, 300, 200, 340, 240, 0xff0000ff);
  return f;
}

bool covers(const Damage& d, const DamageRect& r) {
  if (d.full) return true;
  for (int y = r.y0; y < r.y1; ++y)
    for (int x = r.x0; x < r.x1; ++x) {
      bool in = false;
      for (const DamageRect& q : d.rects)
        in = in || (x >= q.x0 && x < q.x1 && y >= q.y0 && y < q.y1);
      if (!in) return false;
    }
  return true;
}

bool touches(const Damage& d, const DamageRect& r) {
  if (d.full) return true;
  for (const DamageRect& q : d.rects)
    if (q.x0 < r.x1 && r.x0 < q.x1 && q.y0 < r.y1 && r.y0 < q.y1) return true;
  return false;
}

bool disjoint(const Damage& d) {
  for (size_t i = 0; i < d.rects.size(); ++i)
    for (size_t j = i + 1; j < d.rects.size(); ++j) {
      const DamageRect &a = d.rects[i], &b = d.rects[j];
      if (a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1) return false;
    }
  return true;
}

TEST(GuiDamage, IdenticalFramesDamageNothing) {
  const DrawFrame a = window_frame(), b = window_frame();
  const Damage d = diff_frames(&a, b);
  EXPECT_FALSE(d.full);
  EXPECT_TRUE(d.rects.empty());
  EXPECT_EQ(d.fraction(kW, kH), 0.0);
}

TEST(GuiDamage, NoPreviousFrameOrAChangedFramebufferIsFullDamage) {
  const DrawFrame a = window_frame();
  EXPECT_TRUE(diff_frames(nullptr, a).full);
  DrawFrame b = window_frame();
  b.fb_w = b.fb_w + 1;
  b.display_size.x += 1;
  EXPECT_TRUE(diff_frames(&a, b).full);
  DrawFrame c = window_frame();
  c.scale = ImVec2(2, 2);
  c.fb_w *= 2;
  c.fb_h *= 2;
  EXPECT_TRUE(diff_frames(&a, c).full);
  DrawFrame e = window_frame();
  e.display_pos = ImVec2(1, 0);
  EXPECT_TRUE(diff_frames(&a, e).full);
}

TEST(GuiDamage, OneVertexColourDamagesThatQuadOnly) {
  const DrawFrame a = window_frame();
  DrawFrame b = window_frame();
  // The far box's third vertex (its last quad): both its triangles use it.
  b.lists[0].vtx[b.lists[0].vtx.size() - 2].col = 0xff00ffff;
  const Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{299, 199, 341, 241}));  // the box, a pixel around it
}

TEST(GuiDamage, AChangedGlyphDamagesItsNeighbourhoodNotThePanel) {
  const DrawFrame a = window_frame();
  DrawFrame b = window_frame();
  // Glyph 5's colour: quads are 4 vertices each, the panel first.
  for (int k = 0; k < 4; ++k) b.lists[0].vtx[4 * 6 + k].col = 0xff0000ff;
  const Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  // The glyph's triangles differ; the panel's under it do not (they are the same triangles in
  // the same order), so only the glyph's box is drawn again, the panel within it included.
  EXPECT_EQ(d.rects[0], (DamageRect{59, 19, 67, 33}));
}

TEST(GuiDamage, AMovedClipRectDamagesOldAndNew) {
  DrawFrame a = frame(), b = frame();
  a.lists[0].cmds.push_back(command({0, 0, 100, 100}));
  quad(a.lists[0], 0, 0, 200, 200);
  b.lists[0].cmds.push_back(command({50, 120, 150, 220}));
  quad(b.lists[0], 0, 0, 200, 200);
  const Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  EXPECT_TRUE(covers(d, {0, 0, 100, 100}));
  EXPECT_TRUE(covers(d, {50, 120, 150, 200}));  // the quad ends at y = 200
  EXPECT_FALSE(touches(d, {250, 0, 400, 300})) << "nothing right of the quad";
  EXPECT_FALSE(touches(d, {0, 202, 400, 300})) << "nothing below the quad";
  EXPECT_TRUE(disjoint(d));
}

TEST(GuiDamage, AChangedTextureDamagesTheWholeCommand) {
  DrawFrame a = frame(), b = frame();
  for (DrawFrame* f : {&a, &b}) {
    f->lists[0].cmds.push_back(command());
    quad(f->lists[0], 10, 10, 50, 50);
    f->lists[0].cmds.push_back(command({0, 0, kW, kH}, f == &a ? kPlot : kFont));
    quad(f->lists[0], 100, 100, 180, 160);
  }
  const Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{99, 99, 181, 161}));
}

TEST(GuiDamage, AnAddedOrRemovedCommandDamagesItsBox) {
  DrawFrame a = frame(), b = frame();
  for (DrawFrame* f : {&a, &b}) {
    f->lists[0].cmds.push_back(command({0, 0, 200, kH}));
    quad(f->lists[0], 10, 10, 50, 50);
  }
  // b has a second command (another clip), then both have a third alike.
  b.lists[0].cmds.push_back(command({200, 0, kW, kH}));
  quad(b.lists[0], 150, 100, 260, 120);  // clipped at x = 200
  for (DrawFrame* f : {&a, &b}) {
    f->lists[0].cmds.push_back(command({0, 0, kW, 100}, kPlot));
    quad(f->lists[0], 300, 10, 320, 30);
  }
  Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{200, 99, 261, 121}));
  d = diff_frames(&b, a);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{200, 99, 261, 121}));
}

TEST(GuiDamage, ALongerTextDamagesOnlyWhatFollowsTheCommonPrefixAndSuffix) {
  DrawFrame a = frame(), b = frame();
  for (DrawFrame* f : {&a, &b}) {
    quad(f->lists[0], 10, 10, 390, 290, 0xff202020);
    for (int i = 0; i < 10; ++i) quad(f->lists[0], 20 + 8 * i, 20, 26 + 8 * i, 32);
  }
  quad(b.lists[0], 100, 20, 106, 32);  // one glyph more at the end
  const Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{99, 19, 107, 33}));
}

TEST(GuiDamage, APopupListDamagesItsBox) {
  DrawFrame a = window_frame(), b = window_frame();
  b.lists.emplace_back();
  quad(b.lists[1], 120, 60, 220, 140, 0xff404040);
  Damage d = diff_frames(&a, b);
  ASSERT_FALSE(d.full);
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{119, 59, 221, 141}));
  d = diff_frames(&b, a);  // closed again
  ASSERT_EQ(d.rects.size(), 1u);
  EXPECT_EQ(d.rects[0], (DamageRect{119, 59, 221, 141}));
}

TEST(GuiDamage, CallbacksAndBadIndicesAreFullDamage) {
  const DrawFrame a = window_frame();
  DrawFrame b = window_frame();
  b.lists[0].cmds.push_back(command());
  b.lists[0].cmds.back().UserCallback = [](const ImDrawList*, const ImDrawCmd*) {};
  EXPECT_TRUE(diff_frames(&a, b).full);
  DrawFrame c = window_frame();
  c.lists[0].idx[7] = ImDrawIdx(c.lists[0].vtx.size());  // past the vertices
  EXPECT_TRUE(diff_frames(&a, c).full);
  DrawFrame e = window_frame();
  e.lists[0].cmds[0].ElemCount += 6;  // past the indices
  EXPECT_TRUE(diff_frames(&a, e).full);
}

TEST(GuiDamage, DamageOverMostOfTheFramebufferIsFull) {
  const DrawFrame a = window_frame();
  DrawFrame b = window_frame();
  b.lists[0].vtx[0].col = 0xff303030;  // the panel
  EXPECT_TRUE(diff_frames(&a, b).full);
}

TEST(GuiDamage, ScatteredChangesStayFewDisjointAndCoverEveryChange) {
  std::mt19937 rng(std::random_device{}());
  int partial = 0;
  for (int trial = 0; trial < 50; ++trial) {
    DrawFrame a = frame();
    std::uniform_real_distribution<float> x(0, kW - 12), y(0, kH - 12), size(1, 12);
    std::vector<std::array<float, 4>> quads;
    for (int i = 0; i < 300; ++i) {
      const float x0 = x(rng), y0 = y(rng);
      quads.push_back({x0, y0, x0 + size(rng), y0 + size(rng)});
      quad(a.lists[0], quads.back()[0], quads.back()[1], quads.back()[2], quads.back()[3]);
    }
    DrawFrame b = a;
    std::vector<DamageRect> changed;
    std::vector<size_t> order(quads.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    for (int k = 0; k < 12; ++k) {
      const size_t q = order[size_t(k)];  // 12 different quads
      b.lists[0].vtx[q * 4 + 1].col ^= 0x00ffffffu;
      const auto& r = quads[q];
      changed.push_back({int(r[0]), int(r[1]), int(std::ceil(r[2])), int(std::ceil(r[3]))});
    }
    const Damage d = diff_frames(&a, b, 4);
    if (d.full) continue;
    ++partial;
    EXPECT_LE(d.rects.size(), 4u);
    EXPECT_TRUE(disjoint(d));
    for (const DamageRect& r : changed) EXPECT_TRUE(covers(d, r));
  }
  EXPECT_GT(partial, 10) << "most trials should not need a full redraw";
}

TEST(GuiDamage, ClipForScissorGivesTheBackendExactlyThosePixels) {
  std::mt19937 rng(std::random_device{}());
  for (float s : {1.0f, 1.25f, 1.5f, 2.0f, 3.0f}) {
    const int fb_w = int(1440 * s), fb_h = int(900 * s);
    const ImVec2 scale(s, s), pos = s == 1.0f ? ImVec2(0, 0) : ImVec2(3.5f, -7.25f);
    for (int trial = 0; trial < 2000; ++trial) {
      std::uniform_int_distribution<int> xs(0, fb_w), ys(0, fb_h);
      int x0 = xs(rng), x1 = xs(rng), y0 = ys(rng), y1 = ys(rng);
      if (x0 > x1) std::swap(x0, x1);
      if (y0 > y1) std::swap(y0, y1);
      if (x0 == x1 || y0 == y1) continue;
      const DamageRect want{x0, y0, x1, y1};
      EXPECT_EQ(backend_scissor(clip_for_scissor(want, pos, scale), pos, scale, fb_h), want)
          << "scale " << s << ": " << x0 << "," << y0 << " " << x1 << "," << y1;
    }
  }
}

TEST(GuiDamage, BackendScissorTruncatesAsTheBackendDoes) {
  // x = int(10.5) = 10, w = int(30.7 - 10.5) = 20; GL y = int(100 - 60.9) = 39,
  // h = int(60.9 - 20.2) = 40: rows [39, 79) from the bottom are [21, 61) from the top.
  EXPECT_EQ(backend_scissor({10.5f, 20.2f, 30.7f, 60.9f}, ImVec2(0, 0), ImVec2(1, 1), 100),
            (DamageRect{10, 21, 30, 61}));
  EXPECT_TRUE(backend_scissor({10, 20, 10, 60}, ImVec2(0, 0), ImVec2(1, 1), 100).empty());
}

TEST(GuiDamage, RestrictDrawListNarrowsClipsAndKeepsOnlyTrianglesMeetingTheDamage) {
  // Built as a DrawFrame list, then moved into an ImDrawList.
  DrawFrame f = frame();
  DrawFrame::List& l = f.lists[0];
  l.cmds.push_back(command({0, 0, 200, 300}));
  quad(l, 20, 20, 40, 30);      // inside the first damage rectangle
  quad(l, 100, 200, 120, 220);  // in no damage rectangle
  quad(l, 150, 90, 170, 101);   // its lower edge reaches the second one
  l.cmds.push_back(command({250, 0, 400, 50}, kPlot));
  quad(l, 260, 10, 300, 40);
  ImDrawList list(nullptr);
  for (const ImDrawCmd& c : l.cmds) list.CmdBuffer.push_back(c);
  for (const ImDrawVert& v : l.vtx) list.VtxBuffer.push_back(v);
  for (ImDrawIdx i : l.idx) list.IdxBuffer.push_back(i);

  const std::vector<DamageRect> damage = {{10, 10, 60, 40}, {150, 100, 300, 120}};
  ImVector<ImDrawCmd> cmds;
  ImVector<ImDrawIdx> idx;
  restrict_draw_list(list, damage, ImVec2(0, 0), ImVec2(1, 1), kH, cmds, idx);
  // Command 0 meets both rectangles; command 1 neither (its clip ends at y = 50, above the
  // second, and starts right of the first).
  ASSERT_EQ(cmds.Size, 2);
  EXPECT_EQ(backend_scissor(cmds[0].ClipRect, ImVec2(0, 0), ImVec2(1, 1), kH),
            (DamageRect{10, 10, 60, 40}));
  EXPECT_EQ(backend_scissor(cmds[1].ClipRect, ImVec2(0, 0), ImVec2(1, 1), kH),
            (DamageRect{150, 100, 200, 120}));
  for (const ImDrawCmd& c : cmds) {
    EXPECT_EQ(c.TextureId, kFont);
    EXPECT_EQ(c.IdxOffset, 0u);
    EXPECT_EQ(c.ElemCount, 12u) << "the first and third quads";
  }
  ASSERT_EQ(idx.Size, 12);
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(idx[k], l.idx[size_t(k)]);
    EXPECT_EQ(idx[6 + k], l.idx[size_t(12 + k)]);
  }
}

TEST(GuiDamage, AssignCopiesTheDrawData) {
  ImDrawList list(nullptr);
  list.CmdBuffer.push_back(command({1, 2, 3, 4}));
  list.VtxBuffer.push_back(ImDrawVert{ImVec2(5, 6), ImVec2(0, 0), 0xffffffff});
  list.IdxBuffer.push_back(0);
  ImDrawList* lists[] = {&list};
  ImDrawData data;
  data.CmdLists = lists;
  data.CmdListsCount = 1;
  data.DisplaySize = ImVec2(kW, kH);
  data.FramebufferScale = ImVec2(1, 1);
  DrawFrame f;
  f.assign(data, kW, kH);
  ASSERT_EQ(f.lists.size(), 1u);
  EXPECT_EQ(f.lists[0].cmds.size(), 1u);
  EXPECT_EQ(f.lists[0].cmds[0].ClipRect.w, 4.0f);
  EXPECT_EQ(f.lists[0].vtx[0].pos.y, 6.0f);
  list.VtxBuffer[0].pos.y = 7;  // a copy: ImGui reuses its buffers
  EXPECT_EQ(f.lists[0].vtx[0].pos.y, 6.0f);
  data.CmdLists = nullptr;
}

}  // namespace
}  // namespace lockstep::app
