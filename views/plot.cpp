#include "views/plot.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <string>

namespace lockstep::views {

int draw_bars(const char* id, const Bars& bars, ImVec2 size, ImU32 colour, const Bars* overlay,
              ImU32 overlay_colour) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::InvisibleButton(id, size);
  const ImVec2 p1(p0.x + size.x, p0.y + size.y);
  dl->AddRectFilled(p0, p1, IM_COL32(24, 26, 30, 255));
  dl->AddRect(p0, p1, IM_COL32(70, 74, 82, 255));
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
