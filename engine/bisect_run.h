#pragma once
// One bisection end to end, as the `bisect`, `diff` and `demo` commands and the GUI's worker
// run it: both lanes run the same tokens with every cell captured, the noise floor is measured,
// every cell is compared, the first divergence is found, replay tells whether it was introduced
// there or inherited (walking back when inherited), and the introducing cell is diagnosed.
// bisect_report.h renders the result as a table, stable JSON and Markdown.
//
// Modes. Prefill runs the tokens in one forward from position 0. Decode runs them one token per
// forward, each a decode step over the lane's KV cache, and stitches the steps into the trace
// a prefill would hold (stitch_steps), so the cells, the comparison and the replay are the
// same in both modes; what differs is the code each lane ran (its one-token path and cache
// reads). A bug only a decode step has shows in decode mode only.
//
// Diagnosis reads the introducing cell's local error (lane B's node replayed on lane A's
// inputs) when replay found one, else the first divergence's captured (carried) tensors.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/bisect.h"
#include "engine/compare.h"
#include "engine/diagnose.h"
#include "engine/lane.h"
#include "engine/trace.h"

namespace lockstep::engine {

enum class RunMode : uint8_t { Prefill, Decode };
std::string_view run_mode_name(RunMode mode);  // "prefill", "decode"
std::optional<RunMode> parse_run_mode(std::string_view name);

// Runs `tokens` through `lane` from position 0 (after a reset) and returns what `capture`
// selects: one forward (Prefill) or one per token, stitched (Decode). With `cancel` set
// between decode steps, returns std::nullopt.
std::optional<Trace> capture_run(Lane& lane, std::span<const int32_t> tokens, RunMode mode,
                                 const CapturePlan& capture,
                                 const std::atomic<bool>* cancel = nullptr);

// Where the noise floor comes from: nowhere (every cell's threshold is the absolute one), or
// the clean `cpu` lane against the `ref` oracle on the same tokens and mode (DESIGN.md). The
// oracle computes in float64 over dequantized weights: on a large model pass None.
enum class FloorSource : uint8_t { None, CpuVsRef };
std::string_view floor_source_name(FloorSource f);  // "none", "cpu-ref"
std::optional<FloorSource> parse_floor_source(std::string_view name);

// The floor measured from scratch: the clean cpu lane against the ref oracle on `tokens`.
// std::nullopt when cancelled.
std::optional<NoiseFloor> measure_noise_floor(const Model& model, std::span<const int32_t> tokens,
                                              RunMode mode, unsigned threads,
                                              const std::atomic<bool>* cancel = nullptr);

struct BisectOptions {
  RunMode mode = RunMode::Prefill;
  DivergenceSettings settings;
  FloorSource floor = FloorSource::CpuVsRef;
  bool spread = false;    // also run lane B twice: no cell's floor is below B's run-to-run spread
  bool replay = true;     // replay the first divergence, walking back when it is inherited
  bool heatmaps = false;  // replay every cell: the local-error map (carried = the scan)
  std::vector<Cell> replay_cells;  // also replay these, diverging or not (needs replay)
  unsigned threads = 0;   // the floor's lanes and the comparison; 0 = one per hardware thread
  CompareOptions compare;  // head_dim defaults to the model's
};

struct BisectProgress {
  double fraction = 0.0;  // 0..1 over the whole bisection
  std::string message;    // "running lane cpu", "replaying attn_scores@1", ...
};
using BisectProgressFn = std::function<void(const BisectProgress&)>;

struct BisectResult {
  std::string lane_a, lane_b;
  RunMode mode = RunMode::Prefill;
  std::vector<int32_t> tokens;
  BisectOptions options;
  std::string floor_note;  // how the floor was measured, or why there is none
  NoiseFloor floor;
  TraceComparison comparison;  // every cell both lanes hold, plan order
  DivergenceScan scan;
  std::optional<Localization> localization;  // when replay ran
  std::string replay_note;                   // why replay did not run, when it did not
  std::vector<ReplayVerdict> requested;      // options.replay_cells, in the order asked
  std::optional<Diagnosis> diagnosis;        // of the first divergence, when there is one
  std::optional<Cell> diagnosed_cell;
  bool diagnosed_local = false;   // from a replay's output (else from the captures)
  std::map<Cell, double> local;   // heatmaps: each cell's replayed local error
  bool cancelled = false;         // the phases after the cancel did not run

  bool diverged() const { return scan.first.has_value(); }
  const CellDivergence* first() const { return scan.first ? &scan.cells[*scan.first] : nullptr; }
};

// Bisects lane B against lane A (the reference) on `model`, whose plan both lanes have loaded.
// Lanes are reset first. Throws lockstep::Error when a lane fails (the message names it).
BisectResult bisect(Lane& a, Lane& b, const Model& model, std::span<const int32_t> tokens,
                    const BisectOptions& options, const BisectProgressFn& progress = {},
                    const std::atomic<bool>* cancel = nullptr);

// The same on two saved traces (dump directories): compare, scan and diagnose the first
// divergence from its captures; no replay (a dump has no implementation to run). `floor`,
// when given (measured on the dump's tokens), sets the thresholds; `config` gives head_dim.
BisectResult diff_traces(const Trace& a, const Trace& b, const ModelConfig* config,
                         const NoiseFloor* floor, const BisectOptions& options);

}  // namespace lockstep::engine
