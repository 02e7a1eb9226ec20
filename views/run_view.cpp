#include "views/run_view.h"

#include <imgui.h>

#include <string>

#include "engine/faults.h"

namespace lockstep::views {
namespace {

void record(RectSink* rects, const std::string& name) {
  if (!rects) return;
  const ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
  rects->push_back({name, a.x, a.y, b.x, b.y});
}

}  // namespace

void draw_run_view(const Snapshot& snapshot, UiState& ui, double now, CommandSink& commands,
                   RectSink* rects) {
  const bool running = snapshot.job.running;
  const ImGuiIO& io = ImGui::GetIO();
  auto run = [&] {
    commands.push_back(RunCommand{ui.fault, ui.decode});  // the worker logs it
  };

  ImGui::SetNextItemWidth(260);
  if (ImGui::BeginCombo("fault in lane cpu", ui.fault.empty() ? "none" : ui.fault.c_str())) {
    if (ImGui::Selectable("none", ui.fault.empty())) ui.fault.clear();
    for (const engine::FaultInfo& f : engine::fault_registry()) {
      const std::string spec = engine::FaultSpec::defaults(f.kind).str();
      if (ImGui::Selectable(spec.c_str(), spec == ui.fault)) ui.fault = spec;
      record(rects, "run.fault.item." + spec);
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip("%.*s\nexpected diagnosis: %.*s", int(f.description.size()),
                          f.description.data(), int(engine::bug_class_label(f.diagnosis).size()),
                          engine::bug_class_label(f.diagnosis).data());
    }
    ImGui::EndCombo();
  }
  record(rects, "run.fault");
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip(
        "The bug planted in lane cpu (the fast CPU engine); lane ref, the float64\n"
        "oracle, never carries one");
  ImGui::SameLine();
  int mode = ui.decode ? 1 : 0;
  ImGui::RadioButton("prefill", &mode, 0);
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("All tokens in one forward from position 0");
  ImGui::SameLine();
  ImGui::RadioButton("decode", &mode, 1);
  record(rects, "run.decode");
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("One token per forward over the KV cache, stitched into one trace");
  ui.decode = mode == 1;
  ImGui::SameLine(0, 20);
  if (running) ImGui::BeginDisabled();
  if (ImGui::Button("Run")) run();
  if (running) ImGui::EndDisabled();
  record(rects, "run.run");
  if (ImGui::IsItemHovered(ImGuiHoveredFlags_AllowWhenDisabled))
    ImGui::SetTooltip("Bisect lane cpu against lane ref on the demo model (Ctrl+R)");
  ImGui::SameLine();
  if (!running) ImGui::BeginDisabled();
  if (ImGui::Button("Cancel")) commands.emplace_back(std::in_place_type<CancelCommand>);
  if (!running) ImGui::EndDisabled();
  if (ImGui::IsItemHovered(ImGuiHoveredFlags_AllowWhenDisabled))
    ImGui::SetTooltip("Stop the job under way (Esc); the map keeps the last result");

  const bool popup =
      ImGui::IsPopupOpen("", ImGuiPopupFlags_AnyPopupId | ImGuiPopupFlags_AnyPopupLevel);
  if (!io.WantTextInput && !popup) {
    if (io.KeyCtrl && ImGui::IsKeyPressed('R') && !running) run();  // GLFW letter keys are ASCII
    if (running && ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Escape)))
      commands.emplace_back(std::in_place_type<CancelCommand>);
  }

  ImGui::SameLine(0, 20);
  ImGui::SetNextItemWidth(110);
  if (ImGui::SliderFloat("font scale", &ui.font_scale, 0.75f, 2.5f, "%.2f")) {
    ui.settings_changed = true;
  }
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Text size (saved in settings.json); Ctrl+click to type");

  const JobStatus& job = snapshot.job;
  char overlay[256];
  if (job.running)
    std::snprintf(overlay, sizeof overlay, "%s  (%.1f s)", job.message.c_str(), now - job.started);
  else
    std::snprintf(overlay, sizeof overlay, "%s", snapshot.map ? "idle" : "waiting");
  ImGui::ProgressBar(job.running ? float(job.fraction) : (snapshot.map ? 1.0f : 0.0f),
                     ImVec2(-1, 0), overlay);
  record(rects, "run.progress");
  ImGui::TextDisabled("%s", snapshot.title.c_str());
}

}  // namespace lockstep::views
