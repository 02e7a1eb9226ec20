#include "app/bisect_output.h"

#include <cstdio>
#include <filesystem>
#include <span>

#include "app/commands.h"
#include "formats/atomic_dir.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

enum class ReportFormat { Json, Markdown };

ReportFormat report_format(const std::string& command, const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".json") return ReportFormat::Json;
  if (ext == ".md") return ReportFormat::Markdown;
  throw Error(command + ": --report " + path +
              ": expected a file name ending in .json (stable JSON) or .md (Markdown)");
}

}  // namespace

void add_gpu_budget_option(CLI::App& sub, uint64_t& mib) {
  sub.add_option("--gpu-budget", mib,
                 "MiB of GPU memory the cuda lanes' weights may take; layers beyond it stay in "
                 "host memory and are streamed to the GPU layer by layer (slower, same results). "
                 "0 = the free GPU memory less a margin")
      ->capture_default_str();
}

void add_bisect_options(CLI::App& sub, BisectArgs& args, bool lanes) {
  sub.add_option("--threshold", args.threshold,
                 "Absolute threshold: a cell whose relative RMS is at or below it never diverges")
      ->capture_default_str();
  sub.add_option("--floor-factor,-k", args.floor_factor,
                 "k: nor does one at or below k × its noise floor")
      ->capture_default_str();
  if (lanes) {
    sub.add_option("--mode", args.mode,
                   "prefill: the tokens in one forward; decode: one token per forward over the "
                   "KV cache (the steps are stitched, so cells read the same)")
        ->capture_default_str();
    sub.add_option("--floor", args.floor,
                   "Noise floor per cell: cpu-ref (the clean cpu lane against the float64 "
                   "oracle on the same tokens) or none (large models: the oracle is slow)")
        ->capture_default_str();
    sub.add_flag("--spread", args.spread,
                 "Run lane B twice and raise each cell's floor to its run-to-run spread");
    sub.add_flag("--no-replay", args.no_replay,
                 "Skip replaying the first divergence (no introduced/inherited verdict)");
    sub.add_option("--replay", args.replay_cells,
                   "Also replay this cell (attn_norm@3, lm_head) and say whether it introduces "
                   "error; repeatable");
    sub.add_flag("--heatmaps", args.heatmaps,
                 "Replay every cell on lane A's inputs: the local-error map beside the carried one");
    add_gpu_budget_option(sub, args.gpu_budget_mib);
  }
  sub.add_option("--threads", args.threads,
                 "Threads for the cpu lanes and the comparison; 0 = one per hardware thread")
      ->capture_default_str();
  sub.add_option("--metric", args.metric,
                 "Metric of the stage × layer table: " + engine::map_metric_names())
      ->capture_default_str();
  sub.add_option("--report", args.reports,
                 "Write the result to FILE.json (stable JSON) or FILE.md (Markdown); repeatable");
  sub.add_flag("--fail-on-divergence", args.fail_on_divergence,
               "Exit 1 when the lanes diverge (for CI); otherwise a divergence exits 0");
}

engine::BisectOptions bisect_options(const std::string& command, const BisectArgs& args) {
  engine::BisectOptions o;
  if (!(args.threshold >= 0.0))
    throw Error(command + ": --threshold must be a number >= 0, got " +
                std::to_string(args.threshold));
  if (!(args.floor_factor >= 0.0))
    throw Error(command + ": --floor-factor must be a number >= 0, got " +
                std::to_string(args.floor_factor));
  o.settings.abs_threshold = args.threshold;
  o.settings.floor_factor = args.floor_factor;
  const auto mode = engine::parse_run_mode(args.mode);
  if (!mode) throw Error(command + ": --mode " + args.mode + ": expected prefill or decode");
  o.mode = *mode;
  const auto floor = engine::parse_floor_source(args.floor);
  if (!floor) throw Error(command + ": --floor " + args.floor + ": expected cpu-ref or none");
  o.floor = *floor;
  o.spread = args.spread;
  o.replay = !args.no_replay;
  const auto metric = engine::parse_map_metric(args.metric);
  if (!metric)
    throw Error(command + ": --metric " + args.metric + ": expected one of " +
                engine::map_metric_names());
  o.heatmaps = args.heatmaps || *metric == engine::MapMetric::Local;
  if (o.heatmaps && args.no_replay)
    throw Error(command + ": --heatmaps (and --metric local) replay every cell; drop --no-replay");
  if (!args.replay_cells.empty() && args.no_replay)
    throw Error(command + ": --replay and --no-replay contradict each other");
  for (const std::string& c : args.replay_cells) o.replay_cells.push_back(engine::parse_cell(c));
  o.threads = args.threads;
  for (const std::string& r : args.reports) report_format(command, r);
  return o;
}

int present(const engine::BisectResult& result, const engine::ReportContext& context,
            const BisectArgs& args) {
  const engine::MapMetric metric = *engine::parse_map_metric(args.metric);
  std::string out = engine::format_table(result, metric);
  if (!result.local.empty() && metric != engine::MapMetric::Local)
    out += "\n" + engine::format_table(result, engine::MapMetric::Local);
  out += "\n" + engine::format_summary(result, context);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
  for (const std::string& path : args.reports) {
    const std::string text =
        report_format(context.kind, path) == ReportFormat::Json
            ? engine::to_json(result, context).dump(2) + "\n"
            : engine::to_markdown(result, context);
    formats::write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
    std::fprintf(stderr, "wrote %s\n", path.c_str());
  }
  return result.diverged() && args.fail_on_divergence ? kExitDivergence : kExitOk;
}

}  // namespace lockstep::app
