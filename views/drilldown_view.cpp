#include "views/drilldown_view.h"

#include <imgui.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "views/plot.h"
#include "views/widgets.h"

namespace lockstep::views {
namespace {

constexpr ImU32 kColourA = IM_COL32(80, 150, 230, 255);
constexpr ImU32 kColourB = IM_COL32(240, 150, 40, 150);
const ImVec4 kFlipText(1.0f, 0.45f, 0.45f, 1.0f);

void draw_numbers(const CellDetail& d) {
  if (ImGui::BeginTable("stats", 3, ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV)) {
    ImGui::TableSetupColumn("statistic");
    ImGui::TableSetupColumn("A (ref)");
    ImGui::TableSetupColumn("B (cpu)");
    ImGui::TableHeadersRow();
    for (const auto& s : d.stats) {
      ImGui::TableNextRow();
      for (int k = 0; k < 3; ++k) {
        ImGui::TableNextColumn();
        ImGui::TextUnformatted(s[size_t(k)].c_str());
      }
    }
    ImGui::EndTable();
  }
  if (ImGui::BeginTable("metrics", 2, ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV)) {
    ImGui::TableSetupColumn("metric (B against A)");
    ImGui::TableSetupColumn("value");
    ImGui::TableHeadersRow();
    for (const auto& m : d.metrics) {
      ImGui::TableNextRow();
      ImGui::TableNextColumn();
      ImGui::TextUnformatted(m[0].c_str());
      ImGui::TableNextColumn();
      ImGui::TextUnformatted(m[1].c_str());
    }
    ImGui::EndTable();
  }
}

void draw_plots(const CellDetail& d, UiState& ui, CommandSink& commands, RectSink* rects) {
  const float w = ImGui::GetContentRegionAvail().x;
  ImGui::TextColored(ImVec4(0.31f, 0.59f, 0.9f, 1), "A");
  ImGui::SameLine();
  ImGui::TextColored(ImVec4(0.94f, 0.59f, 0.16f, 1), "B");
  ImGui::SameLine();
  ImGui::Text("values %s", d.hist_range.c_str());
  draw_bars("##values", d.hist_a, ImVec2(w, 90), kColourA, &d.hist_b, kColourB);
  png_export_menu("drilldown.values", ui, commands, rects);
  ImGui::Text("b - a, log bins (%s ... %s ... %s)",
              d.diff_axis.size() > 0 ? d.diff_axis[0].c_str() : "",
              d.diff_axis.size() > 1 ? d.diff_axis[1].c_str() : "",
              d.diff_axis.size() > 2 ? d.diff_axis[2].c_str() : "");
  draw_bars("##diff", d.diff, ImVec2(w, 70), IM_COL32(200, 90, 200, 255));
  png_export_menu("drilldown.diff", ui, commands, rects);
  ImGui::Text("relative RMS per token (%zu)", d.per_token.heights.size());
  draw_bars("##per_token", d.per_token, ImVec2(w, 50), IM_COL32(90, 190, 140, 255));
  png_export_menu("drilldown.per_token", ui, commands, rects);
  if (!d.per_head.heights.empty()) {
    ImGui::Text("relative RMS per head (%zu)", d.per_head.heights.size());
    draw_bars("##per_head", d.per_head, ImVec2(w, 50), IM_COL32(140, 160, 220, 255));
    png_export_menu("drilldown.per_head", ui, commands, rects);
  } else {
    ImGui::TextDisabled("no per-head layout for this stage");
  }
}

// A and B logits over the vocabulary for one position, and |B - A| below, drawn from the
// worker's min/max pyramids; hovering names the column's most divergent token.
void draw_logits(const LogitsPlot& plot, UiState& ui, CommandSink& commands, RectSink* rects) {
  if (plot.rows.empty()) return;
  ImGui::Separator();
  const long first = long(plot.rows.front().position), last = long(plot.rows.back().position);
  long position =
      ui.logits_position >= first && ui.logits_position <= last ? ui.logits_position : last;
  ImGui::Text("logits over the vocabulary (%llu entries)", (unsigned long long)plot.vocab);
  if (plot.rows.size() > 1) {
    ImGui::SameLine(0, 20);
    ImGui::SetNextItemWidth(220);
    int p = int(position);
    if (ImGui::SliderInt("position##logits", &p, int(first), int(last))) ui.logits_position = p;
    record(rects, "drilldown.logits_position");
    if (ImGui::IsItemHovered())
      ImGui::SetTooltip("The token position whose logits are plotted (default: the last)");
    position = std::clamp(long(p), first, last);
  } else {
    ImGui::SameLine(0, 20);
    ImGui::Text("position %ld", position);
  }
  if (!plot.note.empty()) {
    ImGui::SameLine();
    ImGui::TextDisabled("(%s)", plot.note.c_str());
  }
  const LogitsRow& row = plot.rows[size_t(position - first)];
  const float w = ImGui::GetContentRegionAvail().x;
  const float lo = std::min(row.a.lo, row.b.lo), hi = std::max(row.a.hi, row.b.hi);
  const MinMaxHover h1 =
      draw_minmax("##logits_ab", {{&row.a, kColourA}, {&row.b, kColourB}}, lo, hi, ImVec2(w, 110),
                  &row.diff, &ui.plot_layers["drilldown.logits"]);
  record(rects, "drilldown.logits");
  png_export_menu("drilldown.logits", ui, commands, rects);
  const MinMaxHover h2 =
      draw_minmax("##logits_diff", {{&row.diff, IM_COL32(200, 90, 200, 255)}}, 0.0f, row.diff.hi,
                  ImVec2(w, 60), &row.diff, &ui.plot_layers["drilldown.logits_diff"]);
  record(rects, "drilldown.logits_diff");
  png_export_menu("drilldown.logits_diff", ui, commands, rects);
  const MinMaxHover& h = h1.first >= 0 ? h1 : h2;
  std::string readout;
  if (h.first >= 0 && h.peak >= 0) {
    const size_t t = size_t(h.peak);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "token %lld: A %.6g, B %.6g, |B - A| %.4g  (column: tokens %lld-%lld)",
                  (long long)t, double(row.a.values[t]), double(row.b.values[t]),
                  double(row.diff.values[t]), (long long)h.first, (long long)h.last - 1);
    readout = buf;
    ImGui::SetTooltip("%s", readout.c_str());
  }
  ImGui::TextDisabled(
      "%s", readout.empty() ? "hover the plot for a token's A, B and |B - A|" : readout.c_str());
  ui.logits_readout = readout;
}

void draw_top(const CellDetail& d) {
  ImGui::Text("largest |b - a| (%zu shown, %zu sign flips)", d.top.size(), d.sign_flips);
  const ImGuiTableFlags flags =
      ImGuiTableFlags_RowBg | ImGuiTableFlags_BordersInnerV | ImGuiTableFlags_ScrollY;
  if (!ImGui::BeginTable("top", 7, flags, ImVec2(0, 220))) return;
  ImGui::TableSetupScrollFreeze(0, 1);
  for (const char* h : {"index", "token", "channel", "head", "A", "B", "|b - a|"})
    ImGui::TableSetupColumn(h);
  ImGui::TableHeadersRow();
  ImGuiListClipper clipper;
  clipper.Begin(int(d.top.size()));
  while (clipper.Step()) {
    for (int i = clipper.DisplayStart; i < clipper.DisplayEnd; ++i) {
      const TopElement& e = d.top[size_t(i)];
      ImGui::TableNextRow();
      if (e.sign_flip)
        ImGui::TableSetBgColor(ImGuiTableBgTarget_RowBg1, IM_COL32(120, 30, 30, 120));
      auto cell = [&](const char* f, auto v) {
        ImGui::TableNextColumn();
        if (e.sign_flip)
          ImGui::TextColored(kFlipText, f, v);
        else
          ImGui::Text(f, v);
      };
      cell("%lld", (long long)e.index);
      if (e.token >= 0)
        cell("%lld", (long long)e.token);
      else
        cell("%s", "-");
      cell("%lld", (long long)e.channel);
      if (e.head >= 0)
        cell("%lld", (long long)e.head);
      else
        cell("%s", "-");
      cell("%.6g", double(e.a));
      cell("%.6g", double(e.b));
      cell("%.4g", e.abs_diff);
    }
  }
  ImGui::EndTable();
}

}  // namespace

void draw_drilldown_view(const Snapshot& snapshot, UiState& ui, CommandSink& commands,
                         RectSink* rects) {
  const CellDetail* d = snapshot.detail.get();
  if (!d || !d->logits) ui.logits_readout.clear();
  if (!d) {
    ImGui::TextDisabled(snapshot.map ? "Click a cell of the map to drill in."
                                     : "The drill-down fills once a bisection has run.");
    return;
  }
  ImGui::Text("%s  %s", d->name.c_str(), d->shape.c_str());
  ImGui::SameLine(0, 20);
  const bool introduced = d->verdict == "introduced";
  ImGui::TextColored(introduced ? ImVec4(1, 0.4f, 0.4f, 1) : ImVec4(0.6f, 0.8f, 0.6f, 1), "%s",
                     d->verdict.c_str());
  record(rects, "drilldown.verdict");
  if (ImGui::IsItemHovered()) ImGui::SetTooltip("%s", d->verdict_text.c_str());
  ImGui::SameLine(0, 20);
  const bool busy = snapshot.job.running;
  if (busy) ImGui::BeginDisabled();
  if (ImGui::Button("Replay this cell")) {
    commands.push_back(ReplayCommand{d->cell});
    commands.push_back(LogCommand{"replay " + d->name + " requested"});
  }
  if (busy) ImGui::EndDisabled();
  record(rects, "drilldown.replay");
  if (ImGui::IsItemHovered(ImGuiHoveredFlags_AllowWhenDisabled))
    ImGui::SetTooltip(
        "Run lane B's node of this cell on lane A's captured inputs: the error it\n"
        "introduces itself, apart from what it inherits");
  ImGui::SameLine();
  if (ImGui::Button("Copy values")) {
    ImGui::SetClipboardText(d->clipboard.c_str());
    commands.push_back(LogCommand{"copied " + d->name + "'s values to the clipboard"});
  }
  if (ImGui::IsItemHovered())
    ImGui::SetTooltip(
        "Copy the metrics, statistics, verdict and top elements as tab-separated text");
  ImGui::TextWrapped("%s", d->verdict_text.c_str());
  ImGui::TextWrapped("diagnosis: %s", d->diagnosis_headline.c_str());
  record(rects, "drilldown.diagnosis");
  if (ImGui::TreeNode("evidence")) {
    for (const std::string& e : d->evidence) ImGui::BulletText("%s", e.c_str());
    ImGui::TreePop();
  }
  if (d->logits) draw_logits(*d->logits, ui, commands, rects);

  if (ImGui::BeginTable("layout", 2, ImGuiTableFlags_SizingStretchProp)) {
    ImGui::TableSetupColumn("numbers", ImGuiTableColumnFlags_WidthStretch, 0.9f);
    ImGui::TableSetupColumn("plots", ImGuiTableColumnFlags_WidthStretch, 1.1f);
    ImGui::TableNextRow();
    ImGui::TableNextColumn();
    draw_numbers(*d);
    ImGui::TableNextColumn();
    draw_plots(*d, ui, commands, rects);
    ImGui::EndTable();
  }
  draw_top(*d);
}

}  // namespace lockstep::views
