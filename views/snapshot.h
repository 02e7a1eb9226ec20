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
#include "views/plot_data.h"

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
  // The logits cell (lm_head, vocabulary-wide): A, B and |B - A| per token position, as
  // min/max pyramids; null for other cells.
  std::shared_ptr<const LogitsPlot> logits;
};

enum class JobKind : uint8_t {
  None, Run, Select, Replay, Load, ListDir, OpenDumps, Export, ExportPng
};

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

// The model opened in the workbench (none: the embedded demo), as the worker read it.
struct ModelInfo {
  std::string path;
  std::string kind;    // "gguf", "safetensors"
  std::string family;  // engine family name: "llama", "qwen2", ...
  std::string name;    // general.name or the HF architecture, when the file has one
  uint32_t layers = 0;
  uint64_t vocab = 0;
  std::vector<std::array<std::string, 2>> hyperparameters;  // label, value
  std::vector<std::array<std::string, 4>> tensors;          // name, type, shape, bytes
  std::string tensor_bytes;                                 // "1.2 MiB in 48 tensors"
  bool has_tokenizer = false;
  std::string tokenizer;  // "llama, 512 tokens"; why there is none otherwise
  bool has_chat_template = false;
  // Why lane ref cannot hold this model (engine::ref_lane_memory_problem), "" when it can.
  std::string ref_problem;
};

struct RecentModel {
  std::string path;
  bool exists = true;  // checked by the worker when it publishes the list
};

// One directory for the file browser, listed by the worker: directories first, then files.
struct DirEntry {
  std::string name, path;
  bool is_dir = false;
  bool is_model = false;  // a .gguf/.safetensors file, or a directory holding config.json
  std::string size;       // files: "3.1 MiB"
};
struct DirListing {
  std::string dir, parent;  // parent "" at the root
  std::vector<DirEntry> entries;
  std::string error;  // why it could not be listed ("" when it was)
};

struct Snapshot {
  uint64_t seq = 0;
  JobStatus job;
  std::string title;  // what was run: model, lanes, fault, mode
  std::shared_ptr<const MapData> map;
  std::shared_ptr<const CellDetail> detail;  // the selected cell
  std::shared_ptr<const std::vector<LogEntry>> log;
  size_t kept_cells = 0;   // cells each lane's trace keeps for the drill-down and exports
  uint64_t error_seq = 0;  // bumps with every error: the modal opens once per error
  std::string error_title, error_text;
  std::shared_ptr<const ModelInfo> model;  // null: no model opened (runs use the demo)
  std::shared_ptr<const std::vector<RecentModel>> recent;  // most recent first
  std::shared_ptr<const DirListing> listing;               // the file browser's directory
  // APRT dump directories dropped together, for the lanes: the sequence number bumps once per
  // drop (the view sets lane B, or A and B for two).
  uint64_t dump_drop_seq = 0;
  std::vector<std::string> dump_drop_dirs;
  std::vector<std::string> lane_names;  // the live lanes this build runs (app::lane_names())
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
  // Lane A (the reference) and lane B: a lane name, or "dump:" + an APRT dump directory.
  std::string lane_a = "ref", lane_b = "cpu";
  // The input: a prompt (encoded with the model's tokenizer), or token ids as text
  // ("1, 2 3"); both empty: the demo's prompt, or the model's default tokens.
  std::string prompt, token_ids;
  bool use_token_ids = false;
  bool chat = false;                                 // wrap the prompt as one ChatML user turn
  double abs_threshold = 1e-3, floor_factor = 10.0;  // engine::DivergenceSettings
  bool floor_cpu_ref = true;                         // else no noise floor
  // What the map and the drill-down keep: stage names (empty: all) and a layer range text
  // ("all", "3", "2-5"). The bisection itself always captures every cell.
  std::vector<std::string> stages;
  std::string layers = "all";
};
// Opens a GGUF file or a safetensors model directory; the previous model stays on failure.
struct LoadModelCommand {
  std::string path;
};
// Lists a directory for the file browser.
struct ListDirCommand {
  std::string dir;
};
// Paths dropped onto the window: models are opened, dump directories become a lane.
struct DropCommand {
  std::vector<std::string> paths;
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
                             LoadModelCommand, ListDirCommand, DropCommand, OpenDumpsCommand,
                             ExportCommand, ExportPngCommand>;
using CommandSink = std::vector<Command>;

}  // namespace lockstep::views
