#include "views/model_view.h"

#include <imgui.h>

#include <cstdio>
#include <string>

#include "engine/faults.h"
#include "views/run_view.h"
#include "views/widgets.h"

namespace lockstep::views {
namespace {

constexpr const char* kDumpPrefix = "dump:";

template <size_t N>
void set_text(std::array<char, N>& field, const std::string& text) {
  std::snprintf(field.data(), N, "%s", text.c_str());
}

void section(const char* title) {
  ImGui::Spacing();
  ImGui::TextDisabled("%s", title);
  ImGui::Separator();
}

bool is_dump(const std::string& lane) {
  return lane.rfind(kDumpPrefix, 0) == 0;
}

// One lane's combo (live lanes, then "dump directory…") and, for a dump, its directory field.
void lane_picker(const char* label, const char* id, std::string& lane, std::array<char, 1024>& dir,
                 const Snapshot& snapshot, RectSink* rects, const char* help) {
  const std::string shown = is_dump(lane) ? "dump directory..." : lane;
  ImGui::SetNextItemWidth(150);
  if (ImGui::BeginCombo(label, shown.c_str())) {
    for (const std::string& name : snapshot.lane_names) {
      if (ImGui::Selectable(name.c_str(), name == lane)) lane = name;
      record(rects, std::string("model.") + id + ".item." + name);
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip("%s", name == "ref"   ? "The float64 oracle: slow, exact"
                                : name == "cpu" ? "The fast CPU engine (float32, SIMD)"
                                                : "A CUDA lane on the first GPU");
    }
    if (ImGui::Selectable("dump directory...", is_dump(lane)))
      lane = kDumpPrefix + std::string(dir.data());
    record(rects, std::string("model.") + id + ".item.dump");
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("Saved traces: an APRT dump directory (Lockstep's or aprender's)");
    ImGui::EndCombo();
  }
  record(rects, std::string("model.") + id);
  tooltip(help);
  if (is_dump(lane)) {
    ImGui::SetNextItemWidth(-1);
    if (ImGui::InputTextWithHint((std::string("##dir.") + id).c_str(), "dump directory", dir.data(),
                                 dir.size()))
      lane = kDumpPrefix + std::string(dir.data());
    record(rects, std::string("model.") + id + ".dir");
    tooltip(
        "The dump's directory (manifest.json and *.aprt or *.npy files); drop one onto the\n"
        "window to fill it in");
  }
}

void fault_picker(UiState& ui, RectSink* rects) {
  ImGui::SetNextItemWidth(-90);
  // The rectangles keep their run-bar names ("run.fault..."): the combo moved here from there.
  if (ImGui::BeginCombo("fault in B", ui.fault.empty() ? "none" : ui.fault.c_str())) {
    if (ImGui::Selectable("none", ui.fault.empty())) ui.fault.clear();
    record(rects, "run.fault.item.none");
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
  tooltip(
      "The bug planted in lane B (only the cpu lane can carry one); lane A, the\n"
      "reference, never carries one");
}

void model_summary(const ModelInfo& m, RectSink* rects) {
  ImGui::TextWrapped("%s", m.path.c_str());
  record(rects, "model.info");
  ImGui::Text("%s  %s, %u layers, vocab %llu", m.kind.c_str(), m.family.c_str(), m.layers,
              static_cast<unsigned long long>(m.vocab));
  if (!m.name.empty()) ImGui::TextDisabled("%s", m.name.c_str());
  ImGui::Text("tokenizer: %s", m.tokenizer.c_str());
  ImGui::Text("chat template: %s", m.has_chat_template ? "yes" : "none");
  const bool hyper = ImGui::TreeNode("Hyperparameters");
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("The model's shape as the file states it (GGUF metadata or config.json)");
  if (hyper) {
    if (ImGui::BeginTable("model.hyper", 2,
                          ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV)) {
      for (const auto& row : m.hyperparameters) {
        ImGui::TableNextRow();
        ImGui::TableNextColumn();
        ImGui::TextUnformatted(row[0].c_str());
        ImGui::TableNextColumn();
        ImGui::TextUnformatted(row[1].c_str());
      }
      ImGui::EndTable();
    }
    ImGui::TreePop();
  }
  ImGui::Text("Tensors: %s", m.tensor_bytes.c_str());
  const ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV |
                                ImGuiTableFlags_ScrollY | ImGuiTableFlags_Resizable |
                                ImGuiTableFlags_SizingFixedFit;
  const float height = ImGui::GetTextLineHeightWithSpacing() * 9;
  if (ImGui::BeginTable("model.tensors", 4, flags, ImVec2(0, height))) {
    ImGui::TableSetupScrollFreeze(0, 1);
    ImGui::TableSetupColumn("name");
    ImGui::TableSetupColumn("type");
    ImGui::TableSetupColumn("shape");
    ImGui::TableSetupColumn("bytes");
    ImGui::TableHeadersRow();
    ImGuiListClipper clipper;
    clipper.Begin(static_cast<int>(m.tensors.size()));
    while (clipper.Step())
      for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
        const auto& t = m.tensors[size_t(i)];
        ImGui::TableNextRow();
        for (const std::string& cell : t) {
          ImGui::TableNextColumn();
          ImGui::TextUnformatted(cell.c_str());
        }
      }
    ImGui::EndTable();
  }
  record(rects, "model.tensors");
  tooltip("Every tensor of the file: name, storage type, shape (outermost first), bytes");
}

}  // namespace

void sync_model_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands) {
  if (snapshot.model && snapshot.model->path != ui.seen_model) {
    ui.seen_model = snapshot.model->path;
    set_text(ui.model_path, ui.seen_model);
    const std::string& problem = snapshot.model->ref_problem;
    if (!problem.empty() && (ui.lane_a == "ref" || ui.lane_b == "ref" || ui.floor_cpu_ref)) {
      if (ui.lane_a == "ref") ui.lane_a = "cpu";
      if (ui.lane_b == "ref") ui.lane_b = "cpu";
      ui.floor_cpu_ref = false;
      commands.push_back(
          LogCommand{"lanes " + ui.lane_a + " and " + ui.lane_b + ", no noise floor: " + problem});
    }
    if (ui.run_when_model_opens) {
      ui.run_when_model_opens = false;
      commands.push_back(run_command(ui));
    }
  }
  if (snapshot.dump_drop_seq == ui.seen_dump_drop) return;
  ui.seen_dump_drop = snapshot.dump_drop_seq;
  const std::vector<std::string>& dirs = snapshot.dump_drop_dirs;
  auto set_lane = [&](bool a, const std::string& dir) {
    (a ? ui.lane_a : ui.lane_b) = kDumpPrefix + dir;
    set_text(a ? ui.dump_dir_a : ui.dump_dir_b, dir);
  };
  if (dirs.size() >= 2) {  // two at once: the first is the reference
    set_lane(true, dirs[0]);
    set_lane(false, dirs[1]);
  } else if (dirs.size() == 1) {
    set_lane(is_dump(ui.lane_b), dirs[0]);
  }
}

void draw_model_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                     RectSink* rects) {
  const bool busy = snapshot.job.running;
  section("Model");
  ImGui::SetNextItemWidth(-1);
  const bool enter = ImGui::InputTextWithHint("##model.path", "model.gguf or a safetensors folder",
                                              ui.model_path.data(), ui.model_path.size(),
                                              ImGuiInputTextFlags_EnterReturnsTrue);
  record(rects, "model.path");
  tooltip("A GGUF file or a safetensors model folder; Enter or Open loads it");
  if (busy) ImGui::BeginDisabled();
  if (ImGui::Button("Open") || (enter && !busy))
    commands.push_back(LoadModelCommand{ui.model_path.data()});
  if (busy) ImGui::EndDisabled();
  record(rects, "model.open");
  tooltip("Open the model at the path above (waits while a job runs)");
  ImGui::SameLine();
  if (ImGui::Button("Browse...")) ui.browser_open = true;
  record(rects, "model.browse");
  tooltip("Pick a model in a file browser (Ctrl+O); or drop a file onto the window");

  if (snapshot.recent && !snapshot.recent->empty() && ImGui::TreeNode("Recent models")) {
    for (size_t i = 0; i < snapshot.recent->size(); ++i) {
      const RecentModel& r = (*snapshot.recent)[i];
      if (!r.exists)
        ImGui::PushStyleColor(ImGuiCol_Text, ImGui::GetStyleColorVec4(ImGuiCol_TextDisabled));
      ImGui::PushID(int(i));
      if (ImGui::Selectable(r.path.c_str(), false) && r.exists && !busy) {
        set_text(ui.model_path, r.path);
        commands.push_back(LoadModelCommand{r.path});
      }
      ImGui::PopID();
      if (!r.exists) ImGui::PopStyleColor();
      record(rects, "model.recent." + std::to_string(i));
      if (ImGui::IsItemHovered())
        ImGui::SetTooltip("%s", r.exists ? "Click to open this model again"
                                         : "This file no longer exists (moved or deleted)");
    }
    ImGui::TreePop();
  }
  if (snapshot.model)
    model_summary(*snapshot.model, rects);
  else
    ImGui::TextDisabled("No model opened: Run uses the embedded demo model");

  section("Lanes");
  lane_picker("lane A", "lane_a", ui.lane_a, ui.dump_dir_a, snapshot, rects,
              "Lane A, the reference the run compares against (usually ref)");
  lane_picker("lane B", "lane_b", ui.lane_b, ui.dump_dir_b, snapshot, rects,
              "Lane B, the lane under test (it carries the fault)");
  fault_picker(ui, rects);
  if (snapshot.model && !snapshot.model->ref_problem.empty()) {
    ImGui::PushStyleColor(ImGuiCol_Text, IM_COL32(240, 190, 80, 255));
    ImGui::PushTextWrapPos(0);
    ImGui::TextUnformatted(snapshot.model->ref_problem.c_str());
    ImGui::PopTextWrapPos();
    ImGui::PopStyleColor();
    record(rects, "model.ref_problem");
  }

  section("Thresholds");
  ImGui::SetNextItemWidth(120);
  ImGui::InputDouble("absolute threshold", &ui.abs_threshold, 0, 0, "%.1e");
  record(rects, "model.abs_threshold");
  tooltip("A cell whose relative RMS (B against A) is at or below this never diverges");
  ImGui::SetNextItemWidth(120);
  ImGui::InputDouble("floor multiplier", &ui.floor_factor, 0, 0, "%.1f");
  record(rects, "model.floor_factor");
  tooltip("Nor does one at or below this many times the cell's noise floor");
  if (ui.abs_threshold < 0) ui.abs_threshold = 0;
  if (ui.floor_factor < 0) ui.floor_factor = 0;
  int floor = ui.floor_cpu_ref ? 1 : 0;
  ImGui::TextUnformatted("noise floor:");
  ImGui::SameLine();
  ImGui::RadioButton("cpu vs ref", &floor, 1);
  record(rects, "model.floor.cpu_ref");
  tooltip(
      "Measure each cell's floor: the clean cpu lane against the float64 ref oracle on the\n"
      "same tokens (slow on a large model)");
  ImGui::SameLine();
  ImGui::RadioButton("none", &floor, 0);
  record(rects, "model.floor.none");
  tooltip("No floor: every cell's threshold is the absolute one");
  ui.floor_cpu_ref = floor == 1;
}

}  // namespace lockstep::views
