#include "views/file_browser_view.h"

#include <imgui.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>

#include "views/widgets.h"

namespace lockstep::views {
namespace {

constexpr const char* kTitle = "Open a model";

bool contains_folded(const std::string& text, const char* needle) {
  if (!*needle) return true;
  auto lower = [](unsigned char c) { return char(std::tolower(c)); };
  std::string a(text), b(needle);
  std::transform(a.begin(), a.end(), a.begin(), lower);
  std::transform(b.begin(), b.end(), b.begin(), lower);
  return a.find(b) != std::string::npos;
}

void list(UiState& ui, CommandSink& commands, const std::string& dir) {
  ui.browser_dir = dir;
  ui.browser_selected.clear();
  commands.push_back(ListDirCommand{dir});
}

void choose(UiState& ui, CommandSink& commands, const DirEntry& e) {
  if (e.is_dir && !e.is_model) {
    list(ui, commands, e.path);
    return;
  }
  std::snprintf(ui.model_path.data(), ui.model_path.size(), "%s", e.path.c_str());
  commands.push_back(LoadModelCommand{e.path});
  ui.browser_open = false;
  ImGui::CloseCurrentPopup();
}

}  // namespace

void draw_file_browser(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                       RectSink* rects) {
  const ImGuiIO& io = ImGui::GetIO();
  const bool any_popup =
      ImGui::IsPopupOpen("", ImGuiPopupFlags_AnyPopupId | ImGuiPopupFlags_AnyPopupLevel);
  if (!io.WantTextInput && !any_popup && io.KeyCtrl && ImGui::IsKeyPressed('O'))
    ui.browser_open = true;  // GLFW letter keys are ASCII
  if (ui.browser_open && !ImGui::IsPopupOpen(kTitle)) {
    // Start where the listing was, else beside the model path typed, else the working folder.
    std::string start = ui.browser_dir;
    if (start.empty() && ui.model_path[0]) {
      start = ui.model_path.data();
      start = start.substr(
          0, start.find_last_of('/') == std::string::npos ? 0 : start.find_last_of('/'));
    }
    list(ui, commands, start);
    ImGui::OpenPopup(kTitle);
  }
  const ImGuiViewport* vp = ImGui::GetMainViewport();
  ImGui::SetNextWindowSize(
      ImVec2(std::min(760.0f, vp->WorkSize.x - 40), std::min(560.0f, vp->WorkSize.y - 40)),
      ImGuiCond_Appearing);
  ImGui::SetNextWindowPos(
      ImVec2(vp->WorkPos.x + vp->WorkSize.x / 2, vp->WorkPos.y + vp->WorkSize.y / 2),
      ImGuiCond_Appearing, ImVec2(0.5f, 0.5f));
  bool open = true;
  if (!ImGui::BeginPopupModal(kTitle, &open)) {
    ui.browser_open = false;
    return;
  }
  ui.browser_open = true;
  if (!open) {  // the title bar's close button
    ui.browser_open = false;
    ImGui::CloseCurrentPopup();
    ImGui::EndPopup();
    return;
  }
  const DirListing* l = snapshot.listing.get();
  // The listing shown is the latest the worker published (it resolves the folder: absolute,
  // canonical); a newer one replaces it within a frame or two of being asked for.
  if (l) ui.browser_dir = l->dir;
  const bool current = l != nullptr;

  if (ImGui::Button("Up") && current && !l->parent.empty()) list(ui, commands, l->parent);
  record(rects, "browser.up");
  tooltip("The parent folder");
  ImGui::SameLine();
  ImGui::SetNextItemWidth(-1);
  if (ImGui::InputTextWithHint("##browser.path", current ? l->dir.c_str() : "folder",
                               ui.browser_path.data(), ui.browser_path.size(),
                               ImGuiInputTextFlags_EnterReturnsTrue)) {
    list(ui, commands, ui.browser_path.data());
    ui.browser_path[0] = 0;
  }
  record(rects, "browser.path");
  tooltip("Type a folder and press Enter to list it (the hint shows the current one)");
  ImGui::SetNextItemWidth(240);
  ImGui::InputTextWithHint("##browser.filter", "filter names", ui.browser_filter.data(),
                           ui.browser_filter.size());
  record(rects, "browser.filter");
  tooltip("Show only the entries whose name contains this text (any case)");
  ImGui::SameLine();
  ImGui::TextDisabled("%s", current ? l->dir.c_str() : "listing...");

  const float footer = ImGui::GetFrameHeightWithSpacing() + 4;
  ImGui::BeginChild("browser.entries", ImVec2(0, -footer), true);
  record(rects, "browser.entries");
  if (current && !l->error.empty())
    ImGui::TextColored(ImVec4(1, 0.4f, 0.4f, 1), "%s", l->error.c_str());
  const DirEntry* chosen = nullptr;
  if (current)
    for (const DirEntry& e : l->entries) {
      if (!contains_folded(e.name, ui.browser_filter.data())) continue;
      const ImVec4 color = e.is_model ? ImVec4(0.45f, 0.9f, 0.45f, 1)
                           : e.is_dir ? ImVec4(0.95f, 0.8f, 0.4f, 1)
                                      : ImGui::GetStyleColorVec4(ImGuiCol_TextDisabled);
      ImGui::PushStyleColor(ImGuiCol_Text, color);
      const std::string label = (e.is_dir ? "[dir] " : "      ") + e.name;
      if (ImGui::Selectable(
              label.c_str(), ui.browser_selected == e.path,
              ImGuiSelectableFlags_AllowDoubleClick | ImGuiSelectableFlags_DontClosePopups)) {
        ui.browser_selected = e.path;
        if (ImGui::IsMouseDoubleClicked(ImGuiMouseButton_Left)) chosen = &e;
      }
      ImGui::PopStyleColor();
      record(rects, "browser.entry." + e.name);
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip("%s%s\n%s", e.path.c_str(), e.size.empty() ? "" : ("  " + e.size).c_str(),
                          e.is_model ? "a model: double-click to open it"
                          : e.is_dir ? "a folder: double-click to enter it"
                                     : "not a model file (.gguf, .safetensors)");
    }
  ImGui::EndChild();
  if (chosen) {
    const DirEntry e = *chosen;  // choose() may post a listing that replaces `l`
    choose(ui, commands, e);
  }

  const DirEntry* selected = nullptr;
  if (current)
    for (const DirEntry& e : l->entries)
      if (e.path == ui.browser_selected) selected = &e;
  if (!selected) ImGui::BeginDisabled();
  if (ImGui::Button("Open") && selected) {
    const DirEntry e = *selected;
    choose(ui, commands, e);
  }
  if (!selected) ImGui::EndDisabled();
  record(rects, "browser.open");
  tooltip("Open the selected model, or enter the selected folder");
  ImGui::SameLine();
  if (ImGui::Button("Cancel") || ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Escape))) {
    ui.browser_open = false;
    ImGui::CloseCurrentPopup();
  }
  record(rects, "browser.cancel");
  tooltip("Close the browser without opening anything (Esc)");
  ImGui::EndPopup();
}

}  // namespace lockstep::views
