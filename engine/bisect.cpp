#include "engine/bisect.h"

#include <algorithm>
#include <cmath>

#include "engine/metrics.h"
#include "formats/error.h"

namespace lockstep::engine {
namespace {

// NaN/Inf in b where a is finite; -inf in both (a masked score) is no news.
uint64_t new_nonfinite(std::span<const float> a, std::span<const float> b) {
  uint64_t count = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (!std::isfinite(b[i]) && std::isfinite(a[i])) ++count;
  return count;
}

// The inputs lane A fed the node: captures, token ids for Embed, and unstaged nodes rebuilt by
// replaying them in lane A.
class InputSource {
 public:
  InputSource(Lane& lane_a, const Model& model, const Trace& a)
      : lane_(lane_a), model_(model), a_(a) {}

  std::vector<Tensor> inputs(const Node& node) {
    std::vector<Tensor> in;
    if (node.op == Op::Embed) {
      Tensor ids;
      ids.shape = {a_.tokens.size()};
      ids.data.assign(a_.tokens.begin(), a_.tokens.end());
      in.push_back(std::move(ids));
    }
    for (size_t i : node.inputs) in.push_back(output(i));
    return in;
  }

  Tensor output(size_t index) {
    const Node& src = model_.plan.nodes.at(index);
    if (src.stage) {
      const Tensor* t = a_.find({*src.stage, src.layer});
      if (!t)
        throw Error("replay: lane " + a_.lane + "'s trace holds no " +
                    cell_name({*src.stage, src.layer}) + ", which node " +
                    std::to_string(index) + " feeds (capture every cell)");
      return *t;
    }
    auto it = rebuilt_.find(index);
    if (it == rebuilt_.end()) it = rebuilt_.emplace(index, lane_.replay(src, inputs(src))).first;
    return it->second;
  }

 private:
  Lane& lane_;
  const Model& model_;
  const Trace& a_;
  std::map<size_t, Tensor> rebuilt_;
};

}  // namespace

NoiseFloor noise_floor(const Trace& cpu, const Trace& ref) {
  NoiseFloor floor;
  for (const auto& [cell, r] : ref.cells())
    if (const Tensor* c = cpu.find(cell); c && c->shape == r.shape)
      floor[cell] = relative_rms(c->data, r.data);
  return floor;
}

void raise_floor(NoiseFloor& floor, const NoiseFloor& other) {
  for (const auto& [cell, v] : other) {
    auto [it, added] = floor.emplace(cell, v);
    // A NaN spread means the lane is not even repeatable there: keep it, scan_divergence treats
    // a NaN floor as unknown.
    if (!added && !(it->second >= v)) it->second = v;
  }
}

DivergenceScan scan_divergence(const Trace& a, const Trace& b, const NoiseFloor& floor,
                               const DivergenceSettings& settings) {
  DivergenceScan scan;
  for (const auto& [cell, ta] : a.cells()) {
    const Tensor* tb = b.find(cell);
    if (!tb) {
      scan.only_in_a.push_back(cell);
      continue;
    }
    CellDivergence d;
    d.cell = cell;
    auto f = floor.find(cell);
    // A NaN floor (the reference lane itself broke) gives no licence: treat it as unknown.
    d.floor = f != floor.end() && std::isfinite(f->second) ? f->second : 0.0;
    d.threshold = std::max(settings.abs_threshold, settings.floor_factor * d.floor);
    if (ta.shape != tb->shape) {
      d.rel_rms = INFINITY;
    } else {
      d.rel_rms = relative_rms(tb->data, ta.data);
      d.new_nonfinite = new_nonfinite(ta.data, tb->data);
    }
    // NaN (from NaN in both) compares false: only a finite rel_rms within the threshold passes.
    d.diverges = d.new_nonfinite > 0 || !(d.rel_rms <= d.threshold);
    if (d.diverges && !scan.first) scan.first = scan.cells.size();
    scan.cells.push_back(d);
  }
  for (const auto& [cell, tb] : b.cells())
    if (!a.find(cell)) scan.only_in_b.push_back(cell);
  return scan;
}

Tensor replay_output(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                     const Cell& cell) {
  const Node* node = model.plan.find(cell.stage, cell.layer);
  if (!node) throw Error("replay: the plan has no node for " + cell_name(cell));
  if (a.pos != 0)
    throw Error("replay needs traces of a forward from position 0 (lane " + a.lane +
                "'s starts at " + std::to_string(a.pos) + ")");
  InputSource source(lane_a, model, a);
  return lane_b.replay(*node, source.inputs(*node));
}

ReplayVerdict replay_cell(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                          const CellDivergence& divergence, double threshold) {
  Tensor got = replay_output(lane_a, lane_b, model, a, divergence.cell);
  const Tensor* want = a.find(divergence.cell);
  if (!want) throw Error("replay: lane " + a.lane + "'s trace holds no " + cell_name(divergence.cell));
  ReplayVerdict v;
  v.cell = divergence.cell;
  v.carried = divergence.rel_rms;
  v.threshold = threshold;
  v.local = got.shape == want->shape ? relative_rms(got.data, want->data) : INFINITY;
  v.introduced = new_nonfinite(want->data, got.data) > 0 || !(v.local <= threshold);
  return v;
}

Localization localize(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                      const DivergenceScan& scan, const DivergenceSettings& settings) {
  Localization loc;
  if (!scan.first) return loc;
  const CellDivergence& first = scan.cells[*scan.first];
  loc.replays.push_back(replay_cell(lane_a, lane_b, model, a, first, first.threshold));
  if (loc.replays.back().introduced) {
    loc.introduced_at = first.cell;
    return loc;
  }
  // Inherited: the error entered below the divergence threshold somewhere earlier and grew.
  // Every earlier cell is replayed; the earliest that introduces error is the culprit.
  for (size_t i = *scan.first; i-- > 0;) {
    const CellDivergence& d = scan.cells[i];
    const double bar = std::max(settings.replay_min, settings.floor_factor * d.floor);
    loc.replays.push_back(replay_cell(lane_a, lane_b, model, a, d, bar));
    if (loc.replays.back().introduced) loc.introduced_at = d.cell;
  }
  return loc;
}

}  // namespace lockstep::engine
