#include "views/plot.h"

#include <algorithm>

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
