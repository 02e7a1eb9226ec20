#pragma once
// What bisect, diff and demo share: the divergence settings and report options, and how a
// result is shown (table and verdict on stdout, reports written atomically) and turned into an
// exit code.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/bisect_report.h"
#include "engine/bisect_run.h"

namespace lockstep::app {

struct BisectArgs {
  // Divergence settings.
  double threshold = engine::DivergenceSettings{}.abs_threshold;
  double floor_factor = engine::DivergenceSettings{}.floor_factor;
  std::string mode = "prefill";
  std::string floor = "cpu-ref";
  bool spread = false;
  bool no_replay = false;
  bool heatmaps = false;
  std::vector<std::string> replay_cells;
  unsigned threads = 0;
  uint64_t gpu_budget_mib = 0;  // cuda lanes' weight budget; 0: free device memory less a margin
  // Output.
  std::string metric = "relative_rms";
  std::vector<std::string> reports;
  bool fail_on_divergence = false;
};

// --threshold, --floor-factor, --mode, --floor, --spread, --no-replay, --heatmaps, --gpu-budget,
// --threads
// (only those `lanes` commands use when `lanes` is false: thresholds and threads), then
// --metric, --report, --fail-on-divergence.
void add_bisect_options(CLI::App& sub, BisectArgs& args, bool lanes);
// --gpu-budget MIB (run, bisect): the cuda lanes' weight budget (engine::LaneOptions).
void add_gpu_budget_option(CLI::App& sub, uint64_t& mib);
// Checks what needs no model (metric name, report extensions, thresholds) and returns the
// engine's options. Throws lockstep::Error.
engine::BisectOptions bisect_options(const std::string& command, const BisectArgs& args);
// Prints the table of the chosen metric (and the local map when there is one) and the verdict,
// writes every --report, and returns kExitDivergence when asked to fail on a divergence, else
// kExitOk.
int present(const engine::BisectResult& result, const engine::ReportContext& context,
            const BisectArgs& args);

}  // namespace lockstep::app
