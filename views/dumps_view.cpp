#include "views/dumps_view.h"

#include <imgui.h>

#include <cfloat>
#include <string>
#include <vector>

#include "views/widgets.h"

namespace lockstep::views {
namespace {

const ImVec4 kOk(0.55f, 0.8f, 0.55f, 1), kMissing(0.95f, 0.75f, 0.3f, 1),
    kMalformed(1.0f, 0.4f, 0.4f, 1);

void path_field(const char* id, const char* hint, std::array<char, 512>& buf, const char* help,
                RectSink* rects, const std::string& rect) {
  ImGui::SetNextItemWidth(-FLT_MIN);
  ImGui::InputTextWithHint(id, hint, buf.data(), buf.size());
  tooltip(help);
  record(rects, rect);
}

// One directory's cells: a clipped table; a malformed or missing row explains itself on hover.
void draw_listing(const engine::DumpListing& l, const char* side, RectSink* rects) {
  ImGui::Text("%s: %s", side, l.dir.c_str());
  if (l.has_manifest)
    ImGui::TextWrapped("lane %s, %s tokens, model %s", l.lane.empty() ? "?" : l.lane.c_str(),
                       l.tokens ? std::to_string(*l.tokens).c_str() : "?",
                       l.model.empty() ? "?" : l.model.c_str());
  else
    ImGui::TextDisabled("no manifest.json: shapes are flat");
  ImGui::TextColored(kOk, "%zu ok", l.ok);
  ImGui::SameLine();
  ImGui::TextColored(l.missing ? kMissing : kOk, "%zu missing", l.missing);
  ImGui::SameLine();
  ImGui::TextColored(l.malformed ? kMalformed : kOk, "%zu malformed", l.malformed);
  record(rects, std::string("dumps.") + side + ".counts");
  const ImGuiTableFlags flags = ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV |
                                ImGuiTableFlags_ScrollY | ImGuiTableFlags_SizingStretchProp;
  const float h = ImGui::GetTextLineHeightWithSpacing() * 9;
  if (ImGui::BeginTable((std::string("cells_") + side).c_str(), 4, flags, ImVec2(0, h))) {
    ImGui::TableSetupScrollFreeze(0, 1);
    ImGui::TableSetupColumn("cell", 0, 1.4f);
    ImGui::TableSetupColumn("shape", 0, 1.0f);
    ImGui::TableSetupColumn("bytes", 0, 0.7f);
    ImGui::TableSetupColumn("status", 0, 0.8f);
    ImGui::TableHeadersRow();
    ImGuiListClipper clipper;
    clipper.Begin(int(l.rows.size()));
    while (clipper.Step()) {
      for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
        const engine::DumpListingRow& r = l.rows[size_t(i)];
        ImGui::TableNextRow();
        ImGui::TableNextColumn();
        ImGui::TextUnformatted(r.name.c_str());
        record(rects, std::string("dumps.cell.") + side + "." + r.name);
        if (ImGui::IsItemHovered())
          ImGui::SetTooltip("%s%s%s", r.rel_path.c_str(), r.dtype.empty() ? "" : ", ",
                            r.dtype.c_str());
        ImGui::TableNextColumn();
        ImGui::TextUnformatted(r.shape.empty() ? "-" : r.shape.c_str());
        ImGui::TableNextColumn();
        if (r.bytes)
          ImGui::Text("%llu", static_cast<unsigned long long>(r.bytes));
        else
          ImGui::TextUnformatted("-");
        ImGui::TableNextColumn();
        const ImVec4 colour = r.status == engine::DumpCellStatus::Ok        ? kOk
                              : r.status == engine::DumpCellStatus::Missing ? kMissing
                                                                            : kMalformed;
        ImGui::TextColored(colour, "%s",
                           std::string(engine::dump_cell_status_name(r.status)).c_str());
        if (ImGui::IsItemHovered())
          ImGui::SetTooltip("%s", r.detail.empty() ? "a readable f32 APRT file" : r.detail.c_str());
      }
    }
    ImGui::EndTable();
  }
  if (!l.notes.empty() &&
      ImGui::TreeNode((std::string("notes_") + side).c_str(), "%zu other issues", l.notes.size())) {
    for (const std::string& n : l.notes) ImGui::BulletText("%s", n.c_str());
    ImGui::TreePop();
  }
}

// The cells of the current run, each with a tick box; clipped.
void draw_checklist(const MapData& map, DumpsForm& form, RectSink* rects) {
  if (ImGui::SmallButton("tick all"))
    for (const MapCell& c : map.cells)
      if (c.present) form.ticked.insert(c.name);
  tooltip("Tick every cell of the current run");
  ImGui::SameLine();
  if (ImGui::SmallButton("tick none")) form.ticked.clear();
  tooltip("Untick every cell");
  ImGui::SameLine();
  ImGui::Text("%zu ticked", form.ticked.size());
  std::vector<const MapCell*> present;
  for (const MapCell& c : map.cells)
    if (c.present) present.push_back(&c);
  if (!ImGui::BeginChild("checklist", ImVec2(0, ImGui::GetTextLineHeightWithSpacing() * 7), true)) {
    ImGui::EndChild();
    return;
  }
  ImGuiListClipper clipper;
  clipper.Begin(int(present.size()));
  while (clipper.Step()) {
    for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
      const MapCell& c = *present[size_t(i)];
      bool on = form.ticked.count(c.name) > 0;
      if (ImGui::Checkbox(c.name.c_str(), &on)) {
        if (on)
          form.ticked.insert(c.name);
        else
          form.ticked.erase(c.name);
      }
      tooltip("Export this cell");
      record(rects, "export.tick." + c.name);
    }
  }
  ImGui::EndChild();
}

void draw_export(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects) {
  DumpsForm& form = ui.dumps;
  ImGui::TextUnformatted("Export the current run");
  path_field("##export_dest", "new directory for the export", form.export_dest,
             "The directory to create: a/ and b/ (APRT + manifest.json per lane), npy/, and\n"
             "comparison.json / .md / .csv. It must not exist unless \"overwrite\" is ticked.",
             rects, "export.dest");
  ImGui::RadioButton("all cells", &form.scope, 0);
  tooltip("Every cell both lanes captured");
  record(rects, "export.all");
  ImGui::SameLine();
  ImGui::RadioButton("ticked", &form.scope, 1);
  tooltip("Only the cells ticked in the list below");
  record(rects, "export.ticked");
  ImGui::SameLine();
  ImGui::RadioButton("selected", &form.scope, 2);
  tooltip("Only the cell selected in the map");
  record(rects, "export.selected");
  if (form.scope == 1 && snapshot.map) draw_checklist(*snapshot.map, form, rects);

  ImGui::Checkbox("APRT", &form.aprt);
  tooltip("a/ and b/: APRT files + manifest.json, as `lockstep dump` writes (readable by\n"
      "`lockstep diff` and aprender's `apr diff --values`)");
  record(rects, "export.aprt");
  ImGui::SameLine();
  ImGui::Checkbox("NPY", &form.npy);
  tooltip("npy/a/ and npy/b/: one NumPy .npy per cell (np.load)");
  record(rects, "export.npy");
  ImGui::SameLine();
  ImGui::Checkbox("JSON", &form.json);
  tooltip("comparison.json: the bisection report (lockstep bisect --json's schema)");
  record(rects, "export.json");
  ImGui::Checkbox("Markdown", &form.markdown);
  tooltip("comparison.md: the bisection report for people");
  record(rects, "export.markdown");
  ImGui::SameLine();
  ImGui::Checkbox("CSV", &form.csv);
  tooltip("comparison.csv: one row per cell with every metric, full precision");
  record(rects, "export.csv");
  ImGui::SameLine();
  ImGui::Checkbox("overwrite", &form.overwrite);
  tooltip("Replace an existing export at the destination (only a directory an export wrote;\n"
      "it is replaced once the new one is complete)");
  record(rects, "export.overwrite");

  const bool busy = snapshot.job.running;
  const bool can = snapshot.map && form.export_dest[0] != '\0' &&
                   (form.scope != 2 || snapshot.detail) &&
                   (form.scope != 1 || !form.ticked.empty());
  if (busy || !can) ImGui::BeginDisabled();
  if (ImGui::Button("Export", ImVec2(-FLT_MIN, 0))) {
    ExportCommand e;
    e.dest = form.export_dest.data();
    e.overwrite = form.overwrite;
    e.formats = {form.aprt, form.npy, form.json, form.markdown, form.csv};
    if (form.scope == 2 && snapshot.detail) e.cells.push_back(snapshot.detail->cell);
    if (form.scope == 1)
      for (const MapCell& c : snapshot.map->cells)
        if (c.present && form.ticked.count(c.name)) e.cells.push_back(c.cell);
    commands.push_back(LogCommand{"export to " + e.dest + " requested"});
    commands.push_back(std::move(e));
  }
  if (busy || !can) ImGui::EndDisabled();
  record(rects, "export.run");
  tooltip(!snapshot.map ? "Nothing to export yet: run first (Ctrl+R)"
      : !can        ? "Type a destination directory (and tick cells, or select one)"
                    : "Write the export on the worker; Esc cancels it");
  if (snapshot.exported && !snapshot.exported->empty()) {
    const std::vector<std::string>& files = *snapshot.exported;
    if (ImGui::TreeNode("last_export", "last export: %zu files in %s", files.size() - 1,
                        files[0].c_str())) {
      for (size_t i = 1; i < files.size(); ++i) ImGui::TextUnformatted(files[i].c_str());
      ImGui::TreePop();
    }
  }
  if (!snapshot.last_png.empty()) ImGui::TextWrapped("last PNG: %s", snapshot.last_png.c_str());
}

}  // namespace

void draw_dumps_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                     RectSink* rects) {
  DumpsForm& form = ui.dumps;
  ImGui::TextUnformatted("Dump directories");
  path_field("##dump_a", "dump A (reference): a directory", form.dir_a,
             "An APRT dump directory (lockstep dump, aprender's apr trace --save-tensor):\n"
             "layer-<N>/<stage>.bin files and an optional manifest.json",
             rects, "dumps.path_a");
  path_field("##dump_b", "dump B (optional)", form.dir_b,
             "A second dump directory to compare with A (optional)", rects, "dumps.path_b");
  const bool busy = snapshot.job.running;
  const bool has_a = form.dir_a[0] != '\0';
  if (busy || !has_a) ImGui::BeginDisabled();
  if (ImGui::Button("Open")) {
    commands.push_back(LogCommand{"open dumps requested"});
    commands.push_back(OpenDumpsCommand{form.dir_a.data(), form.dir_b.data()});
  }
  if (busy || !has_a) ImGui::EndDisabled();
  record(rects, "dumps.open");
  tooltip("List the cells of the directories: shapes, sizes, and missing or malformed files");
  ImGui::SameLine();
  const bool has_both = snapshot.dumps && snapshot.dumps->size() == 2;
  if (!has_both) ImGui::BeginDisabled();
  if (ImGui::Button("Use as lanes")) {
    ui.lane_a = "dump:" + (*snapshot.dumps)[0].dir;
    ui.lane_b = "dump:" + (*snapshot.dumps)[1].dir;
    commands.push_back(LogCommand{"lanes: A = " + ui.lane_a + ", B = " + ui.lane_b});
  }
  if (!has_both) ImGui::EndDisabled();
  record(rects, "dumps.use_as_lanes");
  tooltip("Compare these two dumps on the next run: lane A = dump A, lane B = dump B");
  if (snapshot.dumps)
    for (size_t i = 0; i < snapshot.dumps->size(); ++i) {
      ImGui::Separator();
      ImGui::PushID(int(i));
      draw_listing((*snapshot.dumps)[i], i == 0 ? "a" : "b", rects);
      ImGui::PopID();
    }
  ImGui::Separator();
  draw_export(snapshot, ui, commands, rects);
}

}  // namespace lockstep::views
