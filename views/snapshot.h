#pragma once
// What the workbench shows, as one immutable value the worker publishes (app/worker.h) and the
// views read once per frame, and the commands views post back. Everything here is computed on
// the worker: values, labels, normalised bar heights, sort orders. Plain data: no ImGui.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "engine/bisect_report.h"
#include "engine/dump_export.h"
#include "engine/trace.h"

namespace lockstep::views {

inline constexpr size_t kMetricCount = 6;  // engine::MapMetric, in its order
inline constexpr std::array<engine::MapMetric, kMetricCount> kMetrics = {
    engine::MapMetric::RelativeRms, engine::MapMetric::Cosine, engine::MapMetric::MaxAbsDiff,
    engine::MapMetric::SqnrDb,      engine::MapMetric::Local,  engine::MapMetric::NonFinite};

struct MapCell {
  bool present = false;  // false: the stage has no such cell ("—")
  engine::Cell cell;
  std::string name;                              // "attn_norm@3"
  std::array<std::string, kMetricCount> text{};  // the value as shown in the cell
  std::array<float, kMetricCount> heat{};        // 0 (agrees) .. 1 (worst), per metric; <0: none
  std::string tooltip;                           // every number of the cell
  bool diverges = false;
  bool first = false;  // the first divergence
};

struct MapData {
  std::vector<std::string> columns;  // stages in plan order, whole-model stages last
  std::vector<std::string> rows;     // "layer 0".., then "model"
  std::vector<MapCell> cells;        // [rows, columns]
  std::array<std::string, kMetricCount> legend_low{}, legend_high{};  // the heat scale's ends
  std::vector<size_t> divergent;   // indices into cells, plan order (N / P walk these)
  std::vector<bool> row_diverges;  // [rows] whether any cell of the row diverges
  // Per metric, the rows ordered worst first (the highest heat of the row's cells; ties and
  // rows without a value keep plan order): the map's "sort by worst" order.
  std::array<std::vector<size_t>, kMetricCount> rows_by_worst{};
  std::optional<size_t> first;  // index into cells
  std::string headline;         // "first divergence: lm_head (introduced; layout)"
  const MapCell& at(size_t row, size_t col) const { return cells[row * columns.size() + col]; }
};

struct Bars {
  std::vector<float> heights;     // 0..1
  std::vector<std::string> tips;  // hover readout per bar
};

struct TopElement {
  int64_t index = 0, token = -1, channel = -1, head = -1;
  float a = 0, b = 0;
  double abs_diff = 0;
  bool sign_flip = false;
};

struct CellDetail {
  engine::Cell cell;
  std::string name;
  std::string shape;
  std::vector<std::array<std::string, 3>> stats;    // label, side A, side B
  std::vector<std::array<std::string, 2>> metrics;  // label, value
  Bars hist_a, hist_b;                 // value histogram, shared bins (heights on one scale)
  std::string hist_range;              // "[-3.2, 4.1], 64 bins"
  Bars diff;                           // |b−a| log bins: negative decades, zero, positive
  std::vector<std::string> diff_axis;  // a few labels under the diff histogram
  std::vector<TopElement> top;         // largest |b−a| first
  size_t sign_flips = 0;               // in top
  Bars per_token, per_head;            // relative RMS
  std::string verdict;                 // "introduced", "inherited", "not replayed"
  std::string verdict_text;            // the numbers behind it
  bool replayed_on_request = false;    // the verdict comes from the Replay button
  std::string diagnosis_class;         // bug_class_name, or "" when none
  std::string diagnosis_headline;
  std::vector<std::string> evidence;
  std::string clipboard;  // what "Copy values" copies
};

enum class JobKind : uint8_t { None, Run, Select, Replay, OpenDumps, Export, ExportPng };

struct JobStatus {
  JobKind kind = JobKind::None;
  bool running = false;
  double fraction = 0.0;
  std::string message;
  double started = 0.0;  // seconds on the steady clock
};

struct LogEntry {
  enum class Level : uint8_t { Info, Warning, Error } level = Level::Info;
  std::string time;  // "10:42:07"
  std::string text;
};

struct Snapshot {
  uint64_t seq = 0;
  JobStatus job;
  std::string title;  // what was run: model, lanes, fault, mode
  std::shared_ptr<const MapData> map;
  std::shared_ptr<const CellDetail> detail;  // the selected cell
  std::shared_ptr<const std::vector<LogEntry>> log;
  uint64_t error_seq = 0;  // bumps with every error: the modal opens once per error
  std::string error_title, error_text;
  // The Dumps tab: the opened directories (A, then B when given), the last export's files,
  // the last PNG written.
  std::shared_ptr<const std::vector<engine::DumpListing>> dumps;
  std::shared_ptr<const std::vector<std::string>> exported;  // paths; the first is the directory
  std::string last_png;
};

// Commands views post; the app hands them to the worker.
struct RunCommand {
  std::string fault;  // FaultSpec text; "" = none
  bool decode = false;
};
struct CancelCommand {};
struct SelectCommand {
  engine::Cell cell;
};
struct ReplayCommand {
  engine::Cell cell;
};
struct LogCommand {
  std::string text;  // a UI action worth a log line
};
// The Dumps tab: list one or two dump directories; export the current run; write a PNG of
// pixels the frame loop read back (rows top first, RGB).
struct OpenDumpsCommand {
  std::string dir_a, dir_b;  // dir_b "" = one directory
};
struct ExportCommand {
  std::string dest;
  bool overwrite = false;
  std::vector<engine::Cell> cells;  // empty: every cell
  engine::ExportFormats formats;
};
struct ExportPngCommand {
  std::string widget;  // what was captured ("map", "drilldown.values")
  std::string path;    // "~/" is the home directory
  int width = 0, height = 0;
  std::shared_ptr<const std::vector<uint8_t>> rgb;  // [height, width, 3]
};
using Command = std::variant<RunCommand, CancelCommand, SelectCommand, ReplayCommand, LogCommand,
                             OpenDumpsCommand, ExportCommand, ExportPngCommand>;
using CommandSink = std::vector<Command>;

}  // namespace lockstep::views
