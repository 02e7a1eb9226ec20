#include "engine/bisect_report.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <set>

#include "formats/json_util.h"

namespace lockstep::engine {
namespace {

using nlohmann::json;
using formats::json_number;

constexpr std::array<MapMetric, 6> kMetrics{MapMetric::RelativeRms, MapMetric::Cosine,
                                            MapMetric::MaxAbsDiff,  MapMetric::SqnrDb,
                                            MapMetric::Local,       MapMetric::NonFinite};

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Short and fixed-width: what a table cell holds.
std::string cell_text(double v, MapMetric m) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  switch (m) {
    case MapMetric::Cosine:
      return fmt("%.6f", v);
    case MapMetric::SqnrDb:
      return fmt("%.1f", v);
    case MapMetric::NonFinite:
      return fmt("%.0f", v);
    default:
      return fmt("%.1e", v);
  }
}

// "1.2e-03" style for prose.
std::string sci(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt("%.3g", v);
}

// Display width of UTF-8 text (the em dash is one column, three bytes).
size_t columns(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string pad_left(const std::string& s, size_t width) {
  const size_t w = columns(s);
  return w >= width ? s : std::string(width - w, ' ') + s;
}

std::string pad_right(const std::string& s, size_t width) {
  const size_t w = columns(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

std::optional<std::string> verdict(const BisectResult& r) {
  if (!r.diverged()) return std::nullopt;
  if (!r.localization || r.localization->replays.empty()) return "not replayed";
  return r.localization->replays.front().introduced ? "introduced" : "inherited";
}

const CellComparison* comparison_of(const BisectResult& r, const Cell& c) {
  return r.comparison.find(c);
}

// The table as rows of strings: header, then one row per stage; marks per cell.
struct Grid {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
};

Grid grid(const BisectResult& r, MapMetric metric) {
  std::set<Stage> stages;
  std::optional<uint32_t> max_layer;
  for (const CellDivergence& d : r.scan.cells) {
    stages.insert(d.cell.stage);
    if (d.cell.layer) max_layer = std::max(max_layer.value_or(0), *d.cell.layer);
  }
  const uint32_t layers = max_layer ? *max_layer + 1 : 1;
  Grid g;
  g.header.push_back("stage");
  for (uint32_t l = 0; l < layers; ++l) g.header.push_back("L" + std::to_string(l));
  const CellDivergence* first = r.first();
  for (Stage s : stages) {
    std::vector<std::string> row(layers + 1, "—");
    row[0] = std::string(stage_name(s));
    const bool whole = !stage_info(s).per_layer;
    if (whole) std::fill(row.begin() + 1, row.end(), "");
    for (const CellDivergence& d : r.scan.cells) {
      if (d.cell.stage != s) continue;
      std::string text = cell_text(map_value(r, d, metric), metric);
      if (first && d.cell == first->cell)
        text += "*";
      else if (d.diverges)
        text += "!";
      row[whole ? 1 : *d.cell.layer + 1] = text;
    }
    if (whole) row[0] += " (model)";
    g.rows.push_back(std::move(row));
  }
  return g;
}

std::string title(const BisectResult& r, MapMetric metric) {
  return std::string(map_metric_label(metric)) + " of lane " + r.lane_b + " against lane " +
         r.lane_a + " (" + std::string(run_mode_name(r.mode)) + ", " +
         std::to_string(r.tokens.size()) + " tokens)";
}

constexpr const char* kLegend =
    "* first divergence   ! diverges   — not captured by both lanes";

json cell_row(const BisectResult& r, const CellDivergence& d) {
  const CellComparison* c = comparison_of(r, d.cell);
  auto opt = [&](auto get) -> json {
    return c && !c->shape_mismatch ? json_number(get(*c)) : json(nullptr);
  };
  auto local = r.local.find(d.cell);
  return {
      {"cell", cell_name(d.cell)},
      {"stage", stage_name(d.cell.stage)},
      {"layer", d.cell.layer ? json(*d.cell.layer) : json(nullptr)},
      {"relative_rms", json_number(d.rel_rms)},
      {"floor", json_number(d.floor)},
      {"threshold", json_number(d.threshold)},
      {"diverges", d.diverges},
      {"new_nonfinite", d.new_nonfinite},
      {"cosine", opt([](const CellComparison& x) { return x.cosine; })},
      {"max_abs_diff", opt([](const CellComparison& x) { return x.max_abs_diff; })},
      {"sqnr_db", opt([](const CellComparison& x) { return x.sqnr_db; })},
      {"local", local == r.local.end() ? json(nullptr) : json_number(local->second)},
  };
}

json str_or_null(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

}  // namespace

std::string_view map_metric_name(MapMetric m) {
  switch (m) {
    case MapMetric::RelativeRms: return "relative_rms";
    case MapMetric::Cosine: return "cosine";
    case MapMetric::MaxAbsDiff: return "max_abs_diff";
    case MapMetric::SqnrDb: return "sqnr_db";
    case MapMetric::Local: return "local";
    case MapMetric::NonFinite: return "nonfinite";
  }
  return "?";
}

std::string_view map_metric_label(MapMetric m) {
  switch (m) {
    case MapMetric::RelativeRms: return "relative RMS (carried error)";
    case MapMetric::Cosine: return "cosine";
    case MapMetric::MaxAbsDiff: return "max |diff|";
    case MapMetric::SqnrDb: return "SQNR (dB)";
    case MapMetric::Local: return "local error (replay on A's inputs)";
    case MapMetric::NonFinite: return "new NaN/Inf count";
  }
  return "?";
}

std::optional<MapMetric> parse_map_metric(std::string_view name) {
  for (MapMetric m : kMetrics)
    if (map_metric_name(m) == name) return m;
  return std::nullopt;
}

std::string map_metric_names() {
  std::string s;
  for (MapMetric m : kMetrics) s += (s.empty() ? "" : ", ") + std::string(map_metric_name(m));
  return s;
}

double map_value(const BisectResult& r, const CellDivergence& d, MapMetric m) {
  const CellComparison* c = comparison_of(r, d.cell);
  const bool usable = c && !c->shape_mismatch;
  switch (m) {
    case MapMetric::RelativeRms: return d.rel_rms;
    case MapMetric::Cosine: return usable ? c->cosine : NAN;
    case MapMetric::MaxAbsDiff: return usable ? c->max_abs_diff : NAN;
    case MapMetric::SqnrDb: return usable ? c->sqnr_db : NAN;
    case MapMetric::Local: {
      auto it = r.local.find(d.cell);
      return it == r.local.end() ? NAN : it->second;
    }
    case MapMetric::NonFinite: return double(d.new_nonfinite);
  }
  return NAN;
}

std::string format_table(const BisectResult& r, MapMetric metric) {
  const Grid g = grid(r, metric);
  std::vector<size_t> width(g.header.size(), 0);
  for (size_t i = 0; i < g.header.size(); ++i) width[i] = columns(g.header[i]);
  for (const auto& row : g.rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], columns(row[i]));
  auto line = [&](const std::vector<std::string>& row) {
    std::string s = pad_right(row[0], width[0]);
    for (size_t i = 1; i < row.size(); ++i) s += "  " + pad_left(row[i], width[i]);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string out = title(r, metric) + "\n" + line(g.header);
  for (const auto& row : g.rows) out += line(row);
  return out + kLegend + "\n";
}

std::string format_summary(const BisectResult& r, const ReportContext& context) {
  std::string s;
  if (!context.fault.empty())
    s += "Planted fault: " + context.fault +
         (context.fault_lane.empty() ? "" : " in lane " + context.fault_lane) + "\n";
  s += "Noise floor: " + r.floor_note + "\n";
  if (r.cancelled) s += "Cancelled: the result is partial.\n";
  const CellDivergence* first = r.first();
  if (!first) {
    double worst = 0;
    std::string at = "—";
    for (const CellDivergence& d : r.scan.cells)
      if (d.threshold > 0 && d.rel_rms / d.threshold > worst) {
        worst = d.rel_rms / d.threshold;
        at = cell_name(d.cell);
      }
    s += "No divergence: every one of the " + std::to_string(r.scan.cells.size()) +
         " cells is within its threshold (closest: " + at + " at " + fmt("%.2f", worst) +
         " of its threshold).\n";
  } else {
    s += "First divergence: " + cell_name(first->cell) + " (relative RMS " + sci(first->rel_rms) +
         ", threshold " + sci(first->threshold) + ", floor " + sci(first->floor);
    if (first->new_nonfinite) s += ", " + std::to_string(first->new_nonfinite) + " new NaN/Inf";
    s += ")\n";
    if (r.localization && !r.localization->replays.empty()) {
      const ReplayVerdict& v = r.localization->replays.front();
      s += "Replay: lane " + r.lane_b + "'s " + cell_name(v.cell) + " on lane " + r.lane_a +
           "'s inputs: local error " + sci(v.local) + " against carried " + sci(v.carried) +
           (v.introduced ? " -> introduced here\n" : " -> inherited (at the floor)\n");
      if (!v.introduced) {
        if (r.localization->introduced_at)
          s += "Walked back " + std::to_string(r.localization->replays.size() - 1) +
               " cells: the error is introduced at " + cell_name(*r.localization->introduced_at) +
               "\n";
        else
          s += "Walked back " + std::to_string(r.localization->replays.size() - 1) +
               " cells: no earlier cell introduces error above its floor; the error grew from "
               "rounding, not from one node\n";
      }
    } else if (!r.replay_note.empty()) {
      s += "Replay: " + r.replay_note + "\n";
    }
  }
  for (const ReplayVerdict& v : r.requested)
    s += "Replay of " + cell_name(v.cell) + " (asked): local error " + sci(v.local) +
         " against carried " + sci(v.carried) + ", threshold " + sci(v.threshold) +
         (v.introduced ? " -> introduces error\n" : " -> at the floor\n");
  if (r.diagnosis && r.diagnosed_cell) {
    s += "Diagnosis (" + cell_name(*r.diagnosed_cell) + ", " +
         (r.diagnosed_local ? "local error" : "captured tensors") + "): " + r.diagnosis->headline +
         "\n";
    for (const std::string& e : r.diagnosis->evidence) s += "  - " + e + "\n";
  }
  return s;
}

json to_json(const BisectResult& r, const ReportContext& context) {
  json cells = json::array();
  for (const CellDivergence& d : r.scan.cells) cells.push_back(cell_row(r, d));
  auto verdicts = [](const std::vector<ReplayVerdict>& vs) {
    json j = json::array();
    for (const ReplayVerdict& v : vs)
      j.push_back({{"cell", cell_name(v.cell)},
                   {"local", json_number(v.local)},
                   {"carried", json_number(v.carried)},
                   {"threshold", json_number(v.threshold)},
                   {"introduced", v.introduced}});
    return j;
  };
  const json replays = r.localization ? verdicts(r.localization->replays) : json::array();
  auto names = [](const std::vector<Cell>& cs) {
    json j = json::array();
    for (const Cell& c : cs) j.push_back(cell_name(c));
    return j;
  };
  const CellDivergence* first = r.first();
  json diagnosis = nullptr;
  if (r.diagnosis && r.diagnosed_cell) {
    diagnosis = to_json(*r.diagnosis);
    diagnosis["cell"] = cell_name(*r.diagnosed_cell);
    diagnosis["basis"] = r.diagnosed_local ? "local" : "carried";
  }
  json detail = nullptr;
  if (first)
    if (const CellComparison* c = comparison_of(r, first->cell)) detail = to_json(*c);
  const std::optional<std::string> v = verdict(r);
  return {
      {"format_version", 1},
      {"tool", "lockstep"},
      {"tool_version", context.tool_version},
      {"kind", context.kind},
      {"model", str_or_null(context.model)},
      {"fault", str_or_null(context.fault)},
      {"fault_lane", str_or_null(context.fault_lane)},
      {"source_a", str_or_null(context.source_a)},
      {"source_b", str_or_null(context.source_b)},
      {"lane_a", r.lane_a},
      {"lane_b", r.lane_b},
      {"mode", run_mode_name(r.mode)},
      {"tokens", r.tokens},
      {"settings",
       {{"abs_threshold", json_number(r.options.settings.abs_threshold)},
        {"floor_factor", json_number(r.options.settings.floor_factor)},
        {"replay_min", json_number(r.options.settings.replay_min)},
        {"floor", floor_source_name(r.options.floor)},
        {"spread", r.options.spread}}},
      {"floor_note", r.floor_note},
      {"cancelled", r.cancelled},
      {"diverged", r.diverged()},
      {"first_divergence", first ? cell_row(r, *first) : json(nullptr)},
      {"verdict", v ? json(*v) : json(nullptr)},
      {"introduced_at", r.localization && r.localization->introduced_at
                            ? json(cell_name(*r.localization->introduced_at))
                            : json(nullptr)},
      {"replays", replays},
      {"replay_note", str_or_null(r.replay_note)},
      {"requested_replays", verdicts(r.requested)},
      {"diagnosis", diagnosis},
      {"cells", cells},
      {"only_in_a", names(r.scan.only_in_a)},
      {"only_in_b", names(r.scan.only_in_b)},
      {"first_divergence_detail", detail},
  };
}

std::string to_markdown(const BisectResult& r, const ReportContext& context) {
  std::string md = "# Lockstep " + context.kind + ": " + r.lane_a + " vs " + r.lane_b + "\n\n";
  auto item = [&](const std::string& k, const std::string& v) {
    if (!v.empty()) md += "- **" + k + "**: " + v + "\n";
  };
  item("Model", context.model);
  if (!context.source_a.empty()) item("Lane A", r.lane_a + " (`" + context.source_a + "`)");
  if (!context.source_b.empty()) item("Lane B", r.lane_b + " (`" + context.source_b + "`)");
  item("Fault planted", context.fault.empty() ? ""
                        : "`" + context.fault + "`" +
                              (context.fault_lane.empty() ? "" : " in lane " + context.fault_lane));
  item("Mode", std::string(run_mode_name(r.mode)) + ", " + std::to_string(r.tokens.size()) +
                   " tokens");
  item("Thresholds", "a cell diverges above max(" + sci(r.options.settings.abs_threshold) +
                         ", " + sci(r.options.settings.floor_factor) +
                         " × noise floor), or on new NaN/Inf");
  item("Noise floor", r.floor_note);
  item("Tool", "lockstep " + context.tool_version);
  md += "\n## Verdict\n\n";
  std::string summary = format_summary(r, ReportContext{});  // fault and floor listed above
  for (size_t at = 0; at < summary.size();) {
    size_t end = summary.find('\n', at);
    std::string line = summary.substr(at, end - at);
    at = end == std::string::npos ? summary.size() : end + 1;
    if (line.rfind("Noise floor:", 0) == 0) continue;
    md += line.rfind("  - ", 0) == 0 ? "  " + line.substr(2) + "\n" : "- " + line + "\n";
  }

  auto table = [&](MapMetric metric) {
    const Grid g = grid(r, metric);
    md += "\n## " + title(r, metric) + "\n\n|";
    for (const std::string& h : g.header) md += " " + h + " |";
    md += "\n|";
    for (size_t i = 0; i < g.header.size(); ++i) md += i == 0 ? "---|" : "---:|";
    md += "\n";
    for (const auto& row : g.rows) {
      md += "|";
      for (size_t i = 0; i < row.size(); ++i) {
        std::string cell = row[i];
        // Markdown reads a leading or trailing '*' as emphasis: bold the first divergence.
        if (!cell.empty() && cell.back() == '*') cell = "**" + cell.substr(0, cell.size() - 1) + "**";
        md += " " + cell + " |";
      }
      md += "\n";
    }
    md += "\n" + std::string(kLegend).replace(0, 1, "bold:") + "\n";
  };
  table(MapMetric::RelativeRms);
  if (!r.local.empty()) table(MapMetric::Local);

  if (r.localization && !r.localization->replays.empty()) {
    md += "\n## Replays\n\n| cell | local | carried | threshold | introduced |\n|---|---:|---:|---:|---|\n";
    for (const ReplayVerdict& v : r.localization->replays)
      md += "| " + cell_name(v.cell) + " | " + sci(v.local) + " | " + sci(v.carried) + " | " +
            sci(v.threshold) + " | " + (v.introduced ? "yes" : "no") + " |\n";
  }
  if (!r.scan.only_in_a.empty() || !r.scan.only_in_b.empty()) {
    md += "\n## Cells only one side holds\n\n";
    for (const Cell& c : r.scan.only_in_a) md += "- " + cell_name(c) + ": only in " + r.lane_a + "\n";
    for (const Cell& c : r.scan.only_in_b) md += "- " + cell_name(c) + ": only in " + r.lane_b + "\n";
  }
  return md;
}

}  // namespace lockstep::engine
