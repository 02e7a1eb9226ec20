#include "engine/bisect_run.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "engine/cpu_lane.h"
#include "engine/lanes.h"
#include "formats/error.h"

namespace lockstep::engine {
namespace {

bool stopped(const std::atomic<bool>* cancel) { return cancel && cancel->load(); }

// A lane whose trace can stand for the floor's `name` side: the oracle is always clean; a cpu
// lane only without a planted fault.
bool clean_lane_named(Lane& lane, std::string_view name) {
  if (lane.name() != name) return false;
  if (auto* cpu = dynamic_cast<CpuLane*>(&lane)) return !cpu->fault().has_value();
  return name == "ref";
}

std::optional<Trace> run_clean(std::string_view name, const Model& model,
                               std::span<const int32_t> tokens, RunMode mode, unsigned threads,
                               const std::atomic<bool>* cancel) {
  std::unique_ptr<Lane> lane = make_cpu_lane(name, LaneOptions{.threads = threads, .fault = {}});
  lane->load(model);
  return capture_run(*lane, tokens, mode, CapturePlan::all(), cancel);
}

}  // namespace

std::string_view run_mode_name(RunMode mode) {
  return mode == RunMode::Prefill ? "prefill" : "decode";
}

std::optional<RunMode> parse_run_mode(std::string_view name) {
  if (name == "prefill") return RunMode::Prefill;
  if (name == "decode") return RunMode::Decode;
  return std::nullopt;
}

std::string_view floor_source_name(FloorSource f) {
  return f == FloorSource::None ? "none" : "cpu-ref";
}

std::optional<FloorSource> parse_floor_source(std::string_view name) {
  if (name == "none") return FloorSource::None;
  if (name == "cpu-ref") return FloorSource::CpuVsRef;
  return std::nullopt;
}

std::optional<Trace> capture_run(Lane& lane, std::span<const int32_t> tokens, RunMode mode,
                                 const CapturePlan& capture, const std::atomic<bool>* cancel) {
  if (tokens.empty()) throw Error("lane " + lane.name() + ": no tokens to run");
  lane.reset();
  lane.set_last_logits_only(false);
  if (mode == RunMode::Prefill) {
    Trace t;
    t.lane = lane.name();
    t.tokens.assign(tokens.begin(), tokens.end());
    lane.forward(tokens, 0, capture, t);
    return t;
  }
  std::vector<Trace> steps(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (stopped(cancel)) return std::nullopt;
    steps[i].lane = lane.name();
    steps[i].pos = static_cast<uint32_t>(i);
    steps[i].tokens = {tokens[i]};
    lane.forward(tokens.subspan(i, 1), static_cast<uint32_t>(i), capture, steps[i]);
  }
  return stitch_steps(steps);
}

std::optional<NoiseFloor> measure_noise_floor(const Model& model, std::span<const int32_t> tokens,
                                              RunMode mode, unsigned threads,
                                              const std::atomic<bool>* cancel) {
  std::optional<Trace> ref = run_clean("ref", model, tokens, mode, threads, cancel);
  if (!ref) return std::nullopt;
  std::optional<Trace> cpu = run_clean("cpu", model, tokens, mode, threads, cancel);
  if (!cpu) return std::nullopt;
  return noise_floor(*cpu, *ref);
}

BisectResult bisect(Lane& a, Lane& b, const Model& model, std::span<const int32_t> tokens,
                    const BisectOptions& options, const BisectProgressFn& progress,
                    const std::atomic<bool>* cancel) {
  BisectResult r;
  r.lane_a = a.name();
  r.lane_b = b.name();
  r.mode = options.mode;
  r.tokens.assign(tokens.begin(), tokens.end());
  r.options = options;
  if (!r.options.compare.head_dim) r.options.compare.head_dim = model.config.head_dim;
  if (r.options.compare.threads == 0) r.options.compare.threads = options.threads;
  auto report = [&](double fraction, std::string message) {
    if (progress) progress({fraction, std::move(message)});
  };
  auto cancelled = [&] {
    r.cancelled = true;
    return r;
  };
  const std::string mode(run_mode_name(options.mode));

  // A lane's run reports the cell it has reached ("running lane cpu (prefill): attn_norm@3"):
  // at each new layer, and otherwise at most every 50 ms.
  auto run_lane = [&](Lane& lane, double from, double to) {
    const std::string what = "running lane " + lane.name() + " (" + mode + ")";
    report(from, what);
    const double total = double(model.plan.nodes.size()) *
                         double(options.mode == RunMode::Decode ? tokens.size() : 1);
    double reached = 0;
    std::optional<uint32_t> last_layer;
    auto last_time = std::chrono::steady_clock::now();
    lane.set_node_observer([&](const Node& node) {
      ++reached;
      if (!node.stage) return;
      const auto now = std::chrono::steady_clock::now();
      if (node.layer == last_layer && now - last_time < std::chrono::milliseconds(50)) return;
      last_layer = node.layer;
      last_time = now;
      report(from + (to - from) * std::min(1.0, reached / total),
             what + ": " + cell_name(Cell{*node.stage, node.layer}));
    });
    struct Detach {
      Lane& lane;
      ~Detach() { lane.set_node_observer({}); }
    } detach{lane};
    return capture_run(lane, tokens, options.mode, CapturePlan::all(), cancel);
  };
  std::optional<Trace> ta = run_lane(a, 0.0, 0.2);
  if (!ta) return cancelled();
  std::optional<Trace> tb = run_lane(b, 0.2, 0.4);
  if (!tb) return cancelled();

  if (options.floor == FloorSource::CpuVsRef) {
    report(0.4, "measuring the noise floor (cpu against ref)");
    // A lane of the bisection that is already a clean ref or cpu lane lends its trace.
    auto reuse = [&](std::string_view name) -> std::optional<Trace> {
      if (clean_lane_named(a, name)) return *ta;
      if (clean_lane_named(b, name)) return *tb;
      return run_clean(name, model, tokens, options.mode, options.threads, cancel);
    };
    std::optional<Trace> ref = reuse("ref");
    if (!ref) return cancelled();
    std::optional<Trace> cpu = reuse("cpu");
    if (!cpu) return cancelled();
    r.floor = noise_floor(*cpu, *ref);
    r.floor_note = "clean cpu lane against the ref oracle on the same tokens (" + mode + ")";
  } else {
    r.floor_note = "none: every cell's threshold is the absolute one";
  }
  if (options.spread) {
    report(0.55, "running lane " + r.lane_b + " again for its run-to-run spread");
    std::optional<Trace> again = capture_run(b, tokens, options.mode, CapturePlan::all(), cancel);
    if (!again) return cancelled();
    const NoiseFloor spread = noise_floor(*again, *tb);
    double worst = 0.0;
    for (const auto& [cell, v] : spread) worst = std::max(worst, v);
    raise_floor(r.floor, spread);
    char buf[96];
    std::snprintf(buf, sizeof buf, "; raised to lane %s's run-to-run spread (at most %.3g)",
                  r.lane_b.c_str(), worst);
    r.floor_note += buf;
  }

  report(0.65, "comparing " + std::to_string(ta->size()) + " cells");
  r.comparison = compare_traces(*ta, *tb, r.options.compare, {}, cancel);
  if (r.comparison.cancelled) return cancelled();
  r.scan = scan_divergence(*ta, *tb, r.floor, options.settings);

  const CellDivergence* first = r.first();
  if (first && options.replay) {
    report(0.75, "replaying " + cell_name(first->cell) + " in lane " + r.lane_b);
    r.localization = localize(a, b, model, *ta, r.scan, options.settings);
  } else if (first) {
    r.replay_note = "replay was not asked for";
  }
  if (first) {
    const Tensor& want = *ta->find(first->cell);
    if (r.localization && r.localization->introduced_at) {
      const Cell at = *r.localization->introduced_at;
      double threshold = first->threshold;
      for (const ReplayVerdict& v : r.localization->replays)
        if (v.cell == at) threshold = v.threshold;
      const Tensor local = replay_output(a, b, model, *ta, at);
      r.diagnosis = diagnose(at, *ta->find(at), local, model.config, 0, threshold);
      r.diagnosed_cell = at;
      r.diagnosed_local = true;
    } else {
      r.diagnosis = diagnose(first->cell, want, *tb->find(first->cell), model.config, 0,
                             first->threshold);
      r.diagnosed_cell = first->cell;
    }
  }

  for (const Cell& cell : options.replay_cells) {
    const auto it = std::find_if(r.scan.cells.begin(), r.scan.cells.end(),
                                 [&](const CellDivergence& d) { return d.cell == cell; });
    if (it == r.scan.cells.end())
      throw Error("replay " + cell_name(cell) + ": both lanes must capture the cell (the plan " +
                  (model.plan.find(cell.stage, cell.layer) ? "has it" : "has no such cell") + ")");
    report(0.8, "replaying " + cell_name(cell) + " as asked");
    r.requested.push_back(replay_cell(a, b, model, *ta, *it, it->threshold));
  }

  if (options.heatmaps) {
    for (size_t i = 0; i < r.scan.cells.size(); ++i) {
      if (stopped(cancel)) return cancelled();
      const CellDivergence& d = r.scan.cells[i];
      report(0.85 + 0.15 * double(i) / double(r.scan.cells.size()),
             "replaying " + cell_name(d.cell) + " for the local-error map");
      r.local[d.cell] = replay_cell(a, b, model, *ta, d, d.threshold).local;
    }
  }
  report(1.0, r.diverged() ? "diverged at " + cell_name(first->cell) : "no divergence");
  return r;
}

BisectResult diff_traces(const Trace& a, const Trace& b, const ModelConfig* config,
                         const NoiseFloor* floor, const BisectOptions& options) {
  BisectResult r;
  r.lane_a = a.lane;
  r.lane_b = b.lane;
  r.mode = options.mode;
  r.tokens = a.tokens;
  r.options = options;
  r.options.replay = false;
  r.options.heatmaps = false;
  if (!r.options.compare.head_dim && config) r.options.compare.head_dim = config->head_dim;
  if (r.options.compare.threads == 0) r.options.compare.threads = options.threads;
  if (floor) {
    r.floor = *floor;
    r.floor_note = "clean cpu lane against the ref oracle on the dump's tokens";
  } else {
    r.floor_note = "none: every cell's threshold is the absolute one";
  }
  r.comparison = compare_traces(a, b, r.options.compare);
  r.scan = scan_divergence(a, b, r.floor, options.settings);
  if (const CellDivergence* first = r.first()) {
    r.replay_note = "dumps cannot be replayed: replay runs a lane's own implementation of a node";
    if (config) {
      r.diagnosis = diagnose(first->cell, *a.find(first->cell), *b.find(first->cell), *config,
                             a.pos, first->threshold);
      r.diagnosed_cell = first->cell;
    } else {
      r.replay_note += "; no diagnosis without a model config (pass --model)";
    }
  }
  return r;
}

}  // namespace lockstep::engine
