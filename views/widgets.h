#pragma once
// Two helpers every panel uses on the item it just drew: report its screen rectangle under a
// name (for the GUI tests; `rects` is null outside them) and give it a tooltip, shown even when
// the item is disabled.

#include <imgui.h>

#include <string>

#include "views/ui_state.h"

namespace lockstep::views {

inline void record(RectSink* rects, const std::string& name) {
  if (!rects) return;
  const ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
  rects->push_back({name, a.x, a.y, b.x, b.y});
}

inline void tooltip(const char* text) {
  if (ImGui::IsItemHovered(ImGuiHoveredFlags_AllowWhenDisabled)) ImGui::SetTooltip("%s", text);
}

}  // namespace lockstep::views
