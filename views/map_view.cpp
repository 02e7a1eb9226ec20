#include "views/map_view.h"

#include <imgui.h>

#include <algorithm>
#include <string>
#include <vector>

#include "views/plot.h"

namespace lockstep::views {
namespace {

// "post_attn_residual" → "post\nattn\nresidual": narrow columns, readable headers.
std::string header_label(const std::string& stage) {
  std::string s = stage;
  std::replace(s.begin(), s.end(), '_', '\n');
  return s;
}

void draw_legend(const MapData& map, size_t metric) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  ImGui::TextUnformatted(map.legend_low[metric].c_str());
  ImGui::SameLine();
  const ImVec2 p = ImGui::GetCursorScreenPos();
  const float w = 160, h = ImGui::GetTextLineHeight();
  for (int i = 0; i < 32; ++i)
    dl->AddRectFilled(ImVec2(p.x + w * float(i) / 32, p.y),
                      ImVec2(p.x + w * float(i + 1) / 32, p.y + h), heat_colour(float(i) / 31));
  ImGui::Dummy(ImVec2(w, h));
  ImGui::SameLine();
  ImGui::TextUnformatted(map.legend_high[metric].c_str());
  ImGui::SameLine();
  const ImVec2 q = ImGui::GetCursorScreenPos();
  dl->AddRect(ImVec2(q.x + 8, q.y), ImVec2(q.x + 8 + h, q.y + h), IM_COL32(255, 0, 255, 255), 0, 0,
              3);
  ImGui::Dummy(ImVec2(h + 12, h));
  ImGui::SameLine();
  ImGui::TextUnformatted("first divergence");
}

// Whether [p0, p1] is wholly in sight: the table scrolls under its frozen header row and layer
// column, and the GUI tests click only what they can see.
bool in_sight(ImVec2 p0, ImVec2 p1) {
  return ImGui::IsRectVisible(p0, ImVec2(p0.x + 1, p0.y + 1)) &&
         ImGui::IsRectVisible(ImVec2(p1.x - 1, p1.y - 1), p1);
}

// 0, 1, ..., n - 1: the rows in plan order.
std::vector<size_t> plan_order(size_t n) {
  std::vector<size_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

}  // namespace

void draw_map_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands, RectSink* rects) {
  ImGui::SetNextItemWidth(240);
  const std::string preview(engine::map_metric_label(kMetrics[ui.metric]));
  if (ImGui::BeginCombo("metric", preview.c_str())) {
    for (size_t k = 0; k < kMetricCount; ++k) {
      const std::string label(engine::map_metric_label(kMetrics[k]));
      if (ImGui::Selectable(label.c_str(), k == ui.metric)) {
        ui.metric = k;
        ui.settings_changed = true;
      }
    }
    ImGui::EndCombo();
  }
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip(
        "The per-cell number the map colours and shows. Local error is each cell's\n"
        "node replayed on lane A's inputs (what it introduces itself).");
  const MapData* map = snapshot.map.get();
  if (!map) {
    ImGui::SameLine();
    ImGui::TextDisabled(snapshot.job.running ? "  running the first bisection..."
                                             : "  nothing yet: press Run (Ctrl+R)");
    return;
  }
  ImGui::SameLine(0, 24);
  draw_legend(*map, ui.metric);
  ImGui::SameLine(0, 24);
  ImGui::TextUnformatted(map->headline.c_str());

  const CellDetail* selected = snapshot.detail.get();
  // N / P: next / previous diverging cell in plan order.
  const bool popup =
      ImGui::IsPopupOpen("", ImGuiPopupFlags_AnyPopupId | ImGuiPopupFlags_AnyPopupLevel);
  if (!ImGui::GetIO().WantTextInput && !popup && !map->divergent.empty() &&
      !ImGui::GetIO().KeyCtrl) {
    const bool next = ImGui::IsKeyPressed('N'), prev = ImGui::IsKeyPressed('P');
    if (next || prev) {
      long at = -1;
      for (size_t i = 0; i < map->divergent.size(); ++i)
        if (selected && map->cells[map->divergent[i]].cell == selected->cell) at = long(i);
      const long n = long(map->divergent.size());
      const long to = at < 0 ? (next ? 0 : n - 1) : (at + (next ? 1 : n - 1)) % n;
      commands.push_back(SelectCommand{map->cells[map->divergent[size_t(to)]].cell});
    }
  }

  // Sort and filters: which rows in which order, which stage columns.
  auto report = [&](const std::string& name) {
    if (!rects) return;
    const ImVec2 a = ImGui::GetItemRectMin(), b = ImGui::GetItemRectMax();
    rects->push_back({name, a.x, a.y, b.x, b.y});
  };
  if (ImGui::Checkbox("sort by worst", &ui.sort_by_worst))
    commands.push_back(
        LogCommand{ui.sort_by_worst ? "map sorted by worst layer" : "map in plan order"});
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Rows ordered by their worst cell in the chosen metric, worst first");
  report("map.sort");
  ImGui::SameLine(0, 16);
  if (ImGui::Checkbox("diverging layers only", &ui.diverging_rows_only))
    commands.push_back(LogCommand{ui.diverging_rows_only ? "map shows diverging layers only"
                                                         : "map shows every layer"});
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("Hide the rows where no cell diverges");
  report("map.diverging_only");
  ImGui::SameLine(0, 16);
  ImGui::SetNextItemWidth(160);
  ImGui::InputTextWithHint("##stage_filter", "stage filter", ui.stage_filter.data(),
                           ui.stage_filter.size());
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip("Show only the stages whose name contains this text (e.g. attn, ffn)");
  report("map.filter");
  const std::string filter(ui.stage_filter.data());
  std::vector<size_t> shown_columns;
  for (size_t c = 0; c < map->columns.size(); ++c)
    if (filter.empty() || map->columns[c].find(filter) != std::string::npos)
      shown_columns.push_back(c);
  // A row shows when it passes the divergence filter and has a cell among the shown stages.
  std::vector<size_t> shown_rows;
  for (size_t r : ui.sort_by_worst ? map->rows_by_worst[ui.metric] : plan_order(map->rows.size())) {
    if (ui.diverging_rows_only && !map->row_diverges[r]) continue;
    if (std::any_of(shown_columns.begin(), shown_columns.end(),
                    [&](size_t c) { return map->at(r, c).present; }))
      shown_rows.push_back(r);
  }
  if (shown_columns.empty() || shown_rows.empty()) {
    ImGui::TextDisabled(shown_columns.empty() ? "no stage matches the filter"
                                              : "no layer passes the filters");
    return;
  }

  const int columns = int(shown_columns.size()) + 1;
  const ImGuiTableFlags flags = ImGuiTableFlags_Borders | ImGuiTableFlags_SizingStretchSame |
                                ImGuiTableFlags_ScrollX | ImGuiTableFlags_ScrollY;
  if (!ImGui::BeginTable("map", columns, flags)) return;
  ImGui::TableSetupScrollFreeze(1, 1);
  ImGui::TableSetupColumn("layer", ImGuiTableColumnFlags_WidthFixed, 64);
  for (size_t c : shown_columns)
    ImGui::TableSetupColumn(header_label(map->columns[c]).c_str(),
                            ImGuiTableColumnFlags_WidthStretch, 1.0f);
  ImGui::TableHeadersRow();
  const float row_h = ImGui::GetTextLineHeight() + 8;
  ImDrawList* dl = ImGui::GetWindowDrawList();
  for (size_t r : shown_rows) {
    ImGui::TableNextRow(0, row_h);
    ImGui::TableNextColumn();
    ImGui::TextUnformatted(map->rows[r].c_str());
    if (in_sight(ImGui::GetItemRectMin(), ImGui::GetItemRectMax()))
      report("map.row." + map->rows[r]);
    for (size_t c : shown_columns) {
      ImGui::TableNextColumn();
      const MapCell& cell = map->at(r, c);
      if (!cell.present) {
        // "—": no such cell (drawn, since the default font has no em dash).
        const ImVec2 p = ImGui::GetCursorScreenPos();
        const float w = ImGui::GetContentRegionAvail().x;
        dl->AddLine(ImVec2(p.x + w / 2 - 6, p.y + row_h / 2 - 1),
                    ImVec2(p.x + w / 2 + 6, p.y + row_h / 2 - 1), IM_COL32(120, 120, 120, 255),
                    1.5f);
        ImGui::Dummy(ImVec2(w, row_h - 2));
        if (ImGui::IsItemHovered()) ImGui::SetTooltip("no such cell in this model's plan");
        continue;
      }
      ImGui::PushID(int(r * map->columns.size() + c));
      const ImVec2 p0 = ImGui::GetCursorScreenPos();
      const ImVec2 size(std::max(ImGui::GetContentRegionAvail().x, 8.0f), row_h - 2);
      if (ImGui::InvisibleButton("cell", size)) {
        commands.push_back(SelectCommand{cell.cell});
        commands.push_back(LogCommand{"selected " + cell.name});
      }
      const bool hovered = ImGui::IsItemHovered();
      const ImVec2 p1(p0.x + size.x, p0.y + size.y);
      dl->AddRectFilled(p0, p1, heat_colour(cell.heat[ui.metric]));
      const std::string& text = cell.text[ui.metric];
      const ImVec2 ts = ImGui::CalcTextSize(text.c_str());
      // Clipped to the cell on the CPU: a pushed clip rectangle would cost every cell a draw
      // call of its own (a 28 x 20 map: over a thousand, which llvmpipe pays for every frame).
      const ImVec4 clip(p0.x, p0.y, p1.x, p1.y);
      dl->AddText(ImGui::GetFont(), ImGui::GetFontSize(),
                  ImVec2(p0.x + std::max((size.x - ts.x) / 2, 2.0f), p0.y + (size.y - ts.y) / 2),
                  IM_COL32(245, 245, 245, 255), text.c_str(), nullptr, 0.0f, &clip);
      if (selected && selected->cell == cell.cell)
        dl->AddRect(ImVec2(p0.x + 4, p0.y + 4), ImVec2(p1.x - 4, p1.y - 4),
                    IM_COL32(255, 255, 255, 255), 0, 0, 2);
      if (cell.first)
        dl->AddRect(ImVec2(p0.x + 1, p0.y + 1), ImVec2(p1.x - 1, p1.y - 1),
                    IM_COL32(255, 0, 255, 255), 0, 0, 3);
      else if (hovered)
        dl->AddRect(p0, p1, IM_COL32(255, 255, 255, 120));
      if (hovered) ImGui::SetTooltip("%s\n(click to drill in)", cell.tooltip.c_str());
      if (rects && in_sight(p0, p1))
        rects->push_back({"map.cell." + cell.name, p0.x, p0.y, p1.x, p1.y});
      ImGui::PopID();
    }
  }
  ImGui::EndTable();
  png_export_menu("map", ui, commands, rects);  // the table's outer rectangle
}

}  // namespace lockstep::views
