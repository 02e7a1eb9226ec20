#include "views/splitter.h"

namespace lockstep::views {

float draw_splitter(const char* name, bool vertical, ImVec2 size, const char* tooltip,
                    RectSink* rects) {
  const ImVec2 p0 = ImGui::GetCursorScreenPos();
  ImGui::InvisibleButton(name, size);
  const ImVec2 p1(p0.x + size.x, p0.y + size.y);
  if (rects) rects->push_back({name, p0.x, p0.y, p1.x, p1.y});
  const bool active = ImGui::IsItemActive(), hovered = ImGui::IsItemHovered();
  if (active || hovered)
    ImGui::SetMouseCursor(vertical ? ImGuiMouseCursor_ResizeEW : ImGuiMouseCursor_ResizeNS);
  if (hovered && !active) ImGui::SetTooltip("%s", tooltip);
  const ImU32 colour = active    ? IM_COL32(120, 160, 220, 255)
                       : hovered ? IM_COL32(90, 110, 140, 255)
                                 : IM_COL32(50, 54, 60, 255);
  // A thin line in the bar's middle; the whole bar takes the pointer.
  ImDrawList* dl = ImGui::GetWindowDrawList();
  if (vertical) {
    const float x = (p0.x + p1.x) / 2;
    dl->AddLine(ImVec2(x, p0.y + 2), ImVec2(x, p1.y - 2), colour, active || hovered ? 3.0f : 1.0f);
  } else {
    const float y = (p0.y + p1.y) / 2;
    dl->AddLine(ImVec2(p0.x + 2, y), ImVec2(p1.x - 2, y), colour, active || hovered ? 3.0f : 1.0f);
  }
  if (!active) return 0.0f;
  const ImVec2 d = ImGui::GetIO().MouseDelta;
  return vertical ? d.x : d.y;
}

}  // namespace lockstep::views
