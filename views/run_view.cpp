#include "views/run_view.h"

#include <imgui.h>

#include <algorithm>
#include <string>

#include "engine/stages.h"
#include "views/widgets.h"

namespace lockstep::views {
namespace {

// The stage checklist (none ticked: all) in a combo.
void stage_picker(UiState& ui, RectSink* rects) {
  const std::string preview =
      ui.stages.empty() ? "all stages" : std::to_string(ui.stages.size()) + " stages";
  ImGui::SetNextItemWidth(150);
  if (ImGui::BeginCombo("##run.stages", preview.c_str(), ImGuiComboFlags_HeightLarge)) {
    if (ImGui::Selectable("all stages", ui.stages.empty(), ImGuiSelectableFlags_DontClosePopups))
      ui.stages.clear();
    for (const engine::StageInfo& s : engine::kStages) {
      if (s.reserved) continue;
      const std::string name(s.name);
      bool on = std::find(ui.stages.begin(), ui.stages.end(), name) != ui.stages.end();
      if (ImGui::Checkbox(name.c_str(), &on)) {
        std::erase(ui.stages, name);
        if (on) ui.stages.push_back(name);
      }
      record(rects, "run.stages.item." + name);
      tooltip(s.per_layer ? "A per-layer stage" : "A whole-model stage");
    }
    ImGui::EndCombo();
  }
  record(rects, "run.stages");
  tooltip(
      "Which stages to capture for the map, the drill-down and the exports (none ticked: all).\n"
      "The bisection itself still compares every stage: finding the first divergence and\n"
      "replaying it need them all");
}

}  // namespace

RunCommand run_command(const UiState& ui) {
  RunCommand r;
  r.fault = ui.fault;
  r.decode = ui.decode;
  r.lane_a = ui.lane_a;
  r.lane_b = ui.lane_b;
  r.prompt = ui.prompt.data();
  r.token_ids = ui.token_ids.data();
  r.use_token_ids = ui.use_token_ids;
  r.chat = ui.chat;
  r.abs_threshold = ui.abs_threshold;
  r.floor_factor = ui.floor_factor;
  r.floor_cpu_ref = ui.floor_cpu_ref;
  r.stages = ui.stages;
  r.layers = ui.layers.data();
  return r;
}

void draw_run_view(const Snapshot& snapshot, UiState& ui, double now, CommandSink& commands,
                   RectSink* rects) {
  const bool running = snapshot.job.running;
  const ImGuiIO& io = ImGui::GetIO();
  auto run = [&] {
    commands.push_back(run_command(ui));  // the worker logs it
  };

  int input = ui.use_token_ids ? 1 : 0;
  ImGui::RadioButton("prompt", &input, 0);
  record(rects, "run.input.prompt");
  tooltip("Run text, encoded with the model's tokenizer (empty: the default prompt)");
  ImGui::SameLine();
  ImGui::RadioButton("token ids", &input, 1);
  record(rects, "run.input.tokens");
  tooltip("Run token ids given directly: 1, 2, 3 (commas or spaces)");
  ui.use_token_ids = input == 1;
  ImGui::SameLine();
  const bool has_template = snapshot.model && snapshot.model->has_chat_template;
  const bool chat_usable = has_template && !ui.use_token_ids;
  if (!chat_usable) ImGui::BeginDisabled();
  bool chat = ui.chat && chat_usable;
  if (ImGui::Checkbox("chat", &chat)) ui.chat = chat;
  if (!chat_usable) ImGui::EndDisabled();
  record(rects, "run.chat");
  tooltip(has_template ? "Wrap the prompt as one ChatML user turn (the model has a chat template)"
          : snapshot.model ? "The model has no chat template: the prompt runs as plain text"
                           : "The demo model has no chat template: the prompt runs as plain text");

  ImGui::SameLine(0, 20);
  int mode = ui.decode ? 1 : 0;
  ImGui::RadioButton("prefill", &mode, 0);
  tooltip("All tokens in one forward from position 0");
  ImGui::SameLine();
  ImGui::RadioButton("decode", &mode, 1);
  record(rects, "run.decode");
  tooltip("One token per forward over the KV cache, stitched into one trace");
  ui.decode = mode == 1;
  ImGui::SameLine(0, 20);
  if (running) ImGui::BeginDisabled();
  if (ImGui::Button("Run")) run();
  if (running) ImGui::EndDisabled();
  record(rects, "run.run");
  tooltip("Bisect lane B against lane A (Model & lanes) on the open model, or the demo (Ctrl+R)");
  ImGui::SameLine();
  if (!running) ImGui::BeginDisabled();
  if (ImGui::Button("Cancel")) commands.emplace_back(std::in_place_type<CancelCommand>);
  if (!running) ImGui::EndDisabled();
  record(rects, "run.cancel");
  tooltip("Stop the job under way (Esc); the map keeps the last result");

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
  tooltip("Text size (saved in settings.json); Ctrl+click to type");

  // The input, and beside it what the map keeps.
  const float side = 330;
  const ImVec2 box(std::max(120.0f, ImGui::GetContentRegionAvail().x - side),
                   ImGui::GetTextLineHeight() * 2 + ImGui::GetStyle().FramePadding.y * 2);
  if (ui.use_token_ids) {
    ImGui::InputTextMultiline("##run.token_ids", ui.token_ids.data(), ui.token_ids.size(), box);
    record(rects, "run.token_ids");
    tooltip("Token ids, separated by commas or spaces (empty: the model's default tokens)");
  } else {
    ImGui::InputTextMultiline("##run.prompt", ui.prompt.data(), ui.prompt.size(), box);
    record(rects, "run.prompt");
    tooltip("The prompt (empty: the demo's sentence, or the model's default tokens)");
  }
  ImGui::SameLine();
  ImGui::BeginGroup();
  stage_picker(ui, rects);
  ImGui::SetNextItemWidth(150);
  ImGui::InputTextWithHint("layers", "all, 3 or 2-5", ui.layers.data(), ui.layers.size());
  record(rects, "run.layers");
  tooltip(
      "Which layers to capture for the map, the drill-down and the exports: all, one (3) or a\n"
      "range (2-5). The bisection itself still runs and compares every layer");
  ImGui::EndGroup();

  const JobStatus& job = snapshot.job;
  char overlay[256];
  if (job.running)
    std::snprintf(overlay, sizeof overlay, "%s  (%.1f s)", job.message.c_str(), now - job.started);
  else
    std::snprintf(overlay, sizeof overlay, "%s", snapshot.map ? "idle" : "waiting");
  ImGui::ProgressBar(job.running ? float(job.fraction) : (snapshot.map ? 1.0f : 0.0f),
                     ImVec2(-1, 0), overlay);
  record(rects, "run.progress");
  tooltip("The job under way: what it does now, and the time since it started");
  ImGui::TextDisabled("%s", snapshot.title.c_str());
}

}  // namespace lockstep::views
