#include "views/log_view.h"

#include <imgui.h>

namespace lockstep::views {

void draw_log_view(const Snapshot& snapshot, uint64_t& seen_error) {
  const std::vector<LogEntry>& log = *snapshot.log;
  const ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_ScrollY |
                                ImGuiTableFlags_BordersInnerV | ImGuiTableFlags_SizingFixedFit;
  if (ImGui::BeginTable("log", 2, flags)) {
    ImGui::TableSetupColumn("time");
    ImGui::TableSetupColumn("message", ImGuiTableColumnFlags_WidthStretch);
    ImGuiListClipper clipper;
    clipper.Begin(int(log.size()));
    while (clipper.Step()) {
      for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
        const LogEntry& e = log[size_t(i)];
        ImGui::TableNextRow();
        ImGui::TableNextColumn();
        ImGui::TextDisabled("%s", e.time.c_str());
        ImGui::TableNextColumn();
        const ImVec4 colour = e.level == LogEntry::Level::Error ? ImVec4(1, 0.4f, 0.4f, 1)
                              : e.level == LogEntry::Level::Warning
                                  ? ImVec4(1, 0.8f, 0.3f, 1)
                                  : ImVec4(0.85f, 0.85f, 0.85f, 1);
        ImGui::PushStyleColor(ImGuiCol_Text, colour);
        ImGui::TextWrapped("%s", e.text.c_str());
        ImGui::PopStyleColor();
      }
    }
    if (ImGui::GetScrollY() >= ImGui::GetScrollMaxY() - 4) ImGui::SetScrollHereY(1.0f);
    ImGui::EndTable();
  }

  if (snapshot.error_seq > seen_error) {
    seen_error = snapshot.error_seq;
    ImGui::OpenPopup("Something failed");
  }
  ImGui::SetNextWindowSize(ImVec2(560, 0), ImGuiCond_Appearing);
  if (ImGui::BeginPopupModal("Something failed", nullptr, ImGuiWindowFlags_NoSavedSettings)) {
    ImGui::TextColored(ImVec4(1, 0.5f, 0.5f, 1), "%s", snapshot.error_title.c_str());
    ImGui::Separator();
    ImGui::TextWrapped("%s", snapshot.error_text.c_str());
    ImGui::Spacing();
    ImGui::TextWrapped(
        "The workbench keeps running: the map and drill-down still show the last "
        "result. Pick another fault or mode and run again; the log keeps this "
        "message.");
    if (ImGui::Button("OK", ImVec2(120, 0)) ||
        ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Enter)))
      ImGui::CloseCurrentPopup();
    ImGui::EndPopup();
  }
}

}  // namespace lockstep::views
