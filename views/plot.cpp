#include "views/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <utility>

namespace lockstep::views {
namespace {

// A plot's background (opaque: a plot's still image needs nothing from below) and border.
void plot_box(ImDrawList* dl, ImVec2 p0, ImVec2 p1) {
  dl->AddRectFilled(p0, p1, IM_COL32(24, 26, 30, 255));
  dl->AddRect(p0, p1, IM_COL32(70, 74, 82, 255));
}

// A plot's box: an item of `size` (hover and clicks), its background and border; returns its
// corners.
std::pair<ImVec2, ImVec2> plot_frame(const char* id, ImVec2 size) {
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::InvisibleButton(id, size);
  const ImVec2 p1(p0.x + size.x, p0.y + size.y);
  plot_box(ImGui::GetWindowDrawList(), p0, p1);
  return {p0, p1};
}

}  // namespace

int draw_bars(const char* id, const Bars& bars, ImVec2 size, ImU32 colour, const Bars* overlay,
              ImU32 overlay_colour) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const auto [p0, p1] = plot_frame(id, size);
  const size_t n = std::max(bars.heights.size(), overlay ? overlay->heights.size() : size_t{0});
  if (n == 0) {
    dl->AddText(ImVec2(p0.x + 6, p0.y + 4), IM_COL32(150, 150, 150, 255), "no data");
    return -1;
  }
  const float w = size.x / float(n);
  auto draw = [&](const Bars& b, ImU32 c) {
    for (size_t i = 0; i < b.heights.size(); ++i) {
      const float h = std::clamp(b.heights[i], 0.0f, 1.0f) * (size.y - 2);
      if (h <= 0) continue;
      const float x = p0.x + w * float(i);
      dl->AddRectFilled(ImVec2(x + (w > 3 ? 0.5f : 0.0f), p1.y - 1 - h),
                        ImVec2(x + std::max(w - 0.5f, 1.0f), p1.y - 1), c);
    }
  };
  draw(bars, colour);
  if (overlay) draw(*overlay, overlay_colour);
  if (!ImGui::IsItemHovered()) return -1;
  const int i = std::clamp(int((ImGui::GetIO().MousePos.x - p0.x) / w), 0, int(n) - 1);
  const float x = p0.x + w * float(i);
  dl->AddRect(ImVec2(x, p0.y), ImVec2(x + std::max(w, 1.0f), p1.y), IM_COL32(255, 255, 255, 160));
  const Bars& tips = size_t(i) < bars.tips.size() ? bars : *overlay;
  if (size_t(i) < tips.tips.size()) ImGui::SetTooltip("%s", tips.tips[size_t(i)].c_str());
  return i;
}

namespace {

// The extent of bins [b0, b1) of a level (or of the values when `level` is null): the values
// are already reduced per bin, a pixel column spans one or two bins.
struct Span {
  float lo = NAN, hi = NAN;
  bool nan = false;
  int64_t arg_hi = -1;
};
Span span_of(const MinMaxPyramid& p, const MinMaxLevel* level, size_t b0, size_t b1) {
  Span s;
  for (size_t k = b0; k < b1; ++k) {
    const float lo = level ? level->lo[k] : p.values[k];
    const float hi = level ? level->hi[k] : p.values[k];
    s.nan = s.nan || (level ? level->nan[k] != 0 : std::isnan(p.values[k]));
    if (std::isnan(hi)) continue;
    if (std::isnan(s.lo) || lo < s.lo) s.lo = lo;
    if (std::isnan(s.hi) || hi > s.hi) {
      s.hi = hi;
      s.arg_hi = level ? int64_t(level->arg_hi[k]) : int64_t(k);
    }
  }
  return s;
}

}  // namespace

namespace {

// The still part of a min/max plot, in the box [p0, p1] of `dl`: its background and border,
// the zero line, one vertical min-max line per pixel column of each series, and a red tick
// over the columns holding a NaN.
void draw_minmax_still(ImDrawList* dl, ImVec2 p0, ImVec2 p1,
                       const std::vector<MinMaxSeries>& series, float lo, float hi, size_t n,
                       size_t columns) {
  plot_box(dl, p0, p1);
  const float range = hi > lo ? hi - lo : 1.0f, h = p1.y - p0.y - 4;
  auto y_of = [&](float v) {
    return std::clamp(p1.y - 2 - (v - lo) / range * h, p0.y + 2, p1.y - 2);
  };
  if (lo < 0 && hi > 0)  // the zero line
    dl->AddLine(ImVec2(p0.x + 1, y_of(0)), ImVec2(p1.x - 1, y_of(0)), IM_COL32(90, 94, 100, 255));
  dl->PushClipRect(p0, p1, true);
  for (const MinMaxSeries& s : series) {
    if (!s.pyramid || s.pyramid->values.size() != n) continue;
    const MinMaxLevel* level = s.pyramid->level_for(columns);
    const size_t bins = level ? level->bins() : n;
    float prev_top = NAN, prev_bottom = NAN;  // the previous column's line, in pixels
    for (size_t x = 0; x < columns; ++x) {
      const size_t b0 = x * bins / columns;
      const size_t b1 = std::max(b0 + 1, (x + 1) * bins / columns);
      const Span sp = span_of(*s.pyramid, level, b0, std::min(b1, bins));
      const float px = p0.x + 1.5f + float(x);
      if (sp.nan)
        dl->AddLine(ImVec2(px, p0.y + 1), ImVec2(px, p0.y + 5), IM_COL32(255, 60, 60, 255));
      if (std::isnan(sp.hi)) {
        prev_top = prev_bottom = NAN;
        continue;
      }
      float top = y_of(sp.hi), bottom = y_of(sp.lo);
      // Reach the previous column's line, so a series with fewer bins than columns (or a steep
      // one) reads as a trace, not as dots.
      if (!std::isnan(prev_top)) {
        top = std::min(top, prev_bottom);
        bottom = std::max(bottom, prev_top);
      }
      prev_top = y_of(sp.hi);
      prev_bottom = y_of(sp.lo);
      dl->AddLine(ImVec2(px, top), ImVec2(px, std::max(bottom, top + 1)), s.colour);
    }
  }
  dl->PopClipRect();
}

// What a min/max plot's still part shows: its series (by pyramid id) and colours, the range,
// the size and the framebuffer scale (FNV-1a over their bytes).
uint64_t minmax_key(const std::vector<MinMaxSeries>& series, float lo, float hi, ImVec2 size) {
  uint64_t h = 14695981039346656037ull;
  auto mix = [&h](const void* p, size_t bytes) {
    for (size_t i = 0; i < bytes; ++i) {
      h ^= static_cast<const unsigned char*>(p)[i];
      h *= 1099511628211ull;
    }
  };
  for (const MinMaxSeries& s : series) {
    const uint64_t id = s.pyramid ? s.pyramid->id : 0;
    mix(&id, sizeof id);
    mix(&s.colour, sizeof s.colour);
  }
  const ImVec2 scale = ImGui::GetIO().DisplayFramebufferScale;
  for (float f : {lo, hi, size.x, size.y, scale.x, scale.y}) mix(&f, sizeof f);
  return h == 0 ? 1 : h;
}

}  // namespace

MinMaxHover draw_minmax(const char* id, const std::vector<MinMaxSeries>& series, float lo, float hi,
                        ImVec2 size, const MinMaxPyramid* peak, PlotLayer* layer) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::InvisibleButton(id, size);
  const ImVec2 p1(p0.x + size.x, p0.y + size.y);
  MinMaxHover hover;
  const size_t n = series.empty() || !series[0].pyramid ? 0 : series[0].pyramid->values.size();
  const size_t columns = size_t(std::max(size.x - 2, 1.0f));
  if (n == 0 || !std::isfinite(lo) || !std::isfinite(hi)) {
    plot_box(dl, p0, p1);
    dl->AddText(ImVec2(p0.x + 6, p0.y + 4), IM_COL32(150, 150, 150, 255), "no finite values");
    return hover;
  }
  const uint64_t key = layer ? minmax_key(series, lo, hi, size) : 0;
  if (layer && layer->key == key && layer->texture) {
    // The texture's first row is the plot's bottom (it was rendered upside down).
    dl->AddImage(layer->texture, p0, p1, ImVec2(0, 1), ImVec2(1, 0));
  } else {
    draw_minmax_still(dl, p0, p1, series, lo, hi, n, columns);
    if (layer && layer->pending_key != key) {  // record it once for the frame loop to render
      auto list = std::make_shared<ImDrawList>(ImGui::GetDrawListSharedData());
      list->_ResetForNewFrame();
      list->PushClipRect(ImVec2(0, 0), size);
      list->PushTextureID(ImGui::GetIO().Fonts->TexID);
      draw_minmax_still(list.get(), ImVec2(0, 0), size, series, lo, hi, n, columns);
      layer->pending = std::move(list);
      layer->pending_key = key;
      layer->pending_size = size;
    }
  }
  if (!ImGui::IsItemHovered()) return hover;
  const size_t x =
      size_t(std::clamp(ImGui::GetIO().MousePos.x - p0.x - 1, 0.0f, float(columns - 1)));
  const float px = p0.x + 1.5f + float(x);
  dl->AddLine(ImVec2(px, p0.y), ImVec2(px, p1.y), IM_COL32(255, 255, 255, 140));
  hover.first = int64_t(x * n / columns);
  hover.last = int64_t(std::max(size_t(hover.first) + 1, (x + 1) * n / columns));
  if (peak && peak->values.size() == n) {
    const MinMaxLevel* level = peak->level_for(columns);
    const size_t bins = level ? level->bins() : n;
    const size_t b0 = x * bins / columns, b1 = std::max(b0 + 1, (x + 1) * bins / columns);
    hover.peak = span_of(*peak, level, b0, std::min(b1, bins)).arg_hi;
    if (level) {  // the column's elements are its bins' elements
      hover.first = int64_t(b0 * level->bin);
      hover.last = int64_t(std::min(n, std::min(b1, bins) * level->bin));
    }
  }
  if (hover.peak < 0) hover.peak = hover.first;
  return hover;
}

void png_export_menu(const char* widget, ImVec2 p0, ImVec2 p1, UiState& ui, CommandSink& commands,
                     RectSink* rects) {
  if (ui.png.widget == widget) {
    ui.png.x0 = p0.x;
    ui.png.y0 = p0.y;
    ui.png.x1 = p1.x;
    ui.png.y1 = p1.y;
  }
  const std::string name(widget);
  if (rects) rects->push_back({"png." + name, p0.x, p0.y, p1.x, p1.y});
  const std::string popup = "export_png##" + name;
  if (ImGui::IsMouseReleased(ImGuiMouseButton_Right) && ImGui::IsMouseHoveringRect(p0, p1) &&
      ImGui::IsWindowHovered(ImGuiHoveredFlags_ChildWindows)) {
    // A fresh default name each time the menu opens.
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
    std::snprintf(ui.dumps.png_path.data(), ui.dumps.png_path.size(), "~/lockstep-%s-%s.png",
                  widget, stamp);
    ImGui::OpenPopup(popup.c_str());
  }
  if (!ImGui::BeginPopup(popup.c_str())) return;
  auto record = [&](const char* rect_name) {
    if (!rects) return;
    const ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
    rects->push_back({rect_name, a.x, a.y, b.x, b.y});
  };
  ImGui::Text("Export PNG of %s", widget);
  ImGui::SetNextItemWidth(420);
  ImGui::InputText("##png_path", ui.dumps.png_path.data(), ui.dumps.png_path.size());
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip(
        "Where to write the PNG (~/ is your home directory); an existing file is "
        "not replaced");
  record("png.path");
  const bool busy = !ui.png.widget.empty();
  if (busy) ImGui::BeginDisabled();
  if (ImGui::Button("Export PNG...")) {
    ui.png = PngRequest{};
    ui.png.widget = name;
    ui.png.path = ui.dumps.png_path.data();
    commands.push_back(LogCommand{"PNG export of " + name + " requested"});
    ImGui::CloseCurrentPopup();
  }
  if (busy) ImGui::EndDisabled();
  record("png.save");
  if (ImGui::IsItemHovered(ImGuiHoveredFlags_AllowWhenDisabled))
    ImGui::SetTooltip("Capture this widget as it is drawn and write it as a PNG");
  ImGui::SameLine();
  if (ImGui::Button("Close")) ImGui::CloseCurrentPopup();
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Close without exporting");
  ImGui::EndPopup();
}

void png_export_menu(const char* widget, UiState& ui, CommandSink& commands, RectSink* rects) {
  png_export_menu(widget, ImGui::GetItemRectMin(), ImGui::GetItemRectMax(), ui, commands, rects);
}

ImU32 heat_colour(float t) {
  if (t < 0) return IM_COL32(60, 62, 66, 255);
  // Dark teal (agrees) → amber → red (worst); no magenta, which outlines the first divergence.
  const float lo[3] = {28, 74, 92}, mid[3] = {196, 160, 40}, hi[3] = {210, 38, 38};
  float c[3];
  for (int k = 0; k < 3; ++k)
    c[k] = t < 0.5f ? lo[k] + (mid[k] - lo[k]) * (t * 2) : mid[k] + (hi[k] - mid[k]) * (t * 2 - 1);
  return IM_COL32(int(c[0]), int(c[1]), int(c[2]), 255);
}

}  // namespace lockstep::views
