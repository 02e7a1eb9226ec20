#include "engine/bisect.h"

#include <gtest/gtest.h>

#include "engine/cpu_lane.h"
#include "engine/faults.h"
#include "engine/ref_lane.h"
#include "tests/engine/lane_test_util.h"

namespace lockstep::engine {
namespace {

using namespace test_lanes;

// Lane B for the algorithm's tests: the cpu lane, with chosen cells of its forward traces and of
// its replays scaled, so that a divergence can be planted as introduced (the replay shows it) or
// as inherited (only the forward shows it).
class ScaledLane final : public Lane {
 public:
  std::map<Cell, float> forward_scale, replay_scale;

  std::string name() const override { return "scaled-cpu"; }
  void load(const Model& m) override { inner_.load(m); }
  void reset() override { inner_.reset(); }
  Logits forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                 Trace& trace) override {
    Logits l = inner_.forward(tokens, pos, capture, trace);
    for (const auto& [cell, f] : forward_scale) {
      Tensor t = *trace.find(cell);
      for (float& v : t.data) v *= f;
      trace.put(cell, std::move(t));
    }
    return l;
  }
  Tensor replay(const Node& node, std::span<const Tensor> inputs) override {
    Tensor t = inner_.replay(node, inputs);
    if (node.stage)
      if (auto it = replay_scale.find({*node.stage, node.layer}); it != replay_scale.end())
        for (float& v : t.data) v *= it->second;
    return t;
  }

 private:
  CpuLane inner_;
};

struct Fixture {
  const Model& model = shared_model("stories260K.gguf");
  std::vector<int32_t> tokens{1, 403, 407, 261, 378, 383, 286};
  RefLane ref;
  CpuLane cpu;
  Trace a, floor_trace;
  NoiseFloor floor;
  Fixture() {
    ref.load(model);
    cpu.load(model);
    prefill(ref, tokens, CapturePlan::all(), a);
    prefill(cpu, tokens, CapturePlan::all(), floor_trace);
    floor = noise_floor(floor_trace, a);
  }
};

TEST(Bisect, NoiseFloorIsCpuAgainstRefPerCell) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  EXPECT_EQ(f.floor.size(), f.a.size());
  const double attn = f.floor.at({Stage::AttnOut, 2u});
  EXPECT_GT(attn, 0.0);
  EXPECT_LT(attn, 1e-5);
  EXPECT_EQ(f.floor.at({Stage::Embedding, 0u}), 0.0);  // F32 rows copied exactly in both
}

TEST(Bisect, CleanLanesDoNotDivergeOnAnyIsa) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  for (cpu::Isa isa : cpu::supported_isas()) {
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    CpuLane lane(CpuLaneOptions{.threads = 1, .isa = isa});
    lane.load(f.model);
    Trace b;
    prefill(lane, f.tokens, CapturePlan::all(), b);
    DivergenceScan scan = scan_divergence(f.a, b, f.floor, {});
    EXPECT_FALSE(scan.first) << cell_name(scan.cells[*scan.first].cell);
    EXPECT_EQ(scan.cells.size(), f.a.size());
    EXPECT_TRUE(scan.only_in_a.empty() && scan.only_in_b.empty());
  }
}

TEST(Bisect, FirstDivergenceInPlanOrderAndItsThreshold) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  Trace b = f.floor_trace;
  const auto scale = [&](Cell c, float k) {
    Tensor t = *b.find(c);
    for (float& v : t.data) v *= k;
    b.put(c, std::move(t));
  };
  scale({Stage::FfnUp, 3u}, 1.5f);
  scale({Stage::AttnNorm, 1u}, 1.01f);  // earlier in plan order, 1% off
  DivergenceScan scan = scan_divergence(f.a, b, f.floor, {});
  ASSERT_TRUE(scan.first);
  EXPECT_EQ(scan.cells[*scan.first].cell, (Cell{Stage::AttnNorm, 1u}));
  EXPECT_NEAR(scan.cells[*scan.first].rel_rms, 0.01, 1e-4);

  // A looser absolute threshold lets the 1% through; the 50% still diverges.
  DivergenceSettings loose;
  loose.abs_threshold = 0.02;
  scan = scan_divergence(f.a, b, f.floor, loose);
  ASSERT_TRUE(scan.first);
  EXPECT_EQ(scan.cells[*scan.first].cell, (Cell{Stage::FfnUp, 3u}));

  // A floor k times above the error also lets it through.
  NoiseFloor high = f.floor;
  high[{Stage::AttnNorm, 1u}] = 0.002;
  scan = scan_divergence(f.a, b, high, {});
  EXPECT_EQ(scan.cells[*scan.first].cell, (Cell{Stage::FfnUp, 3u}));
  auto norm1 = std::find_if(scan.cells.begin(), scan.cells.end(), [](const CellDivergence& d) {
    return d.cell == Cell{Stage::AttnNorm, 1u};
  });
  ASSERT_NE(norm1, scan.cells.end());
  EXPECT_DOUBLE_EQ(norm1->threshold, 0.02);  // 10 × 0.002
  EXPECT_FALSE(norm1->diverges);

  // NaN where A is finite diverges whatever the RMS says; a missing cell is listed.
  Trace c = f.floor_trace;
  Tensor t = *c.find({Stage::FfnSilu, 0u});
  t.data[5] = NAN;
  c.put({Stage::FfnSilu, 0u}, t);
  Trace partial;
  partial.put({Stage::LmHead, std::nullopt}, *f.a.find({Stage::LmHead, std::nullopt}));
  c.put({Stage::MoeRouter, 0u}, Tensor{{1}, {0.0f}});
  scan = scan_divergence(f.a, c, f.floor, {});
  ASSERT_TRUE(scan.first);
  EXPECT_EQ(scan.cells[*scan.first].cell, (Cell{Stage::FfnSilu, 0u}));
  EXPECT_EQ(scan.cells[*scan.first].new_nonfinite, 1u);
  EXPECT_EQ(scan.only_in_b, std::vector<Cell>{(Cell{Stage::MoeRouter, 0u})});
  scan = scan_divergence(f.a, partial, f.floor, {});
  EXPECT_EQ(scan.cells.size(), 1u);
  EXPECT_EQ(scan.only_in_a.size(), f.a.size() - 1);
}

TEST(Bisect, ReplayTellsIntroducedFromInherited) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  const Cell target{Stage::AttnOut, 2u};

  // Introduced: the node itself computes 3% high, in the forward and in replay.
  ScaledLane introduced;
  introduced.forward_scale[target] = introduced.replay_scale[target] = 1.03f;
  introduced.load(f.model);
  Trace b;
  prefill(introduced, f.tokens, CapturePlan::all(), b);
  DivergenceScan scan = scan_divergence(f.a, b, f.floor, {});
  ASSERT_TRUE(scan.first);
  EXPECT_EQ(scan.cells[*scan.first].cell, target);
  Localization loc = localize(f.ref, introduced, f.model, f.a, scan, {});
  ASSERT_EQ(loc.replays.size(), 1u);
  EXPECT_TRUE(loc.replays[0].introduced);
  EXPECT_NEAR(loc.replays[0].local, 0.03, 1e-3);
  EXPECT_EQ(loc.introduced_at, target);

  // Inherited: attn_out@2 is off in the forward only (its node is right), while ffn_norm@0
  // computes 2e-4 high — far below the divergence threshold, but above its floor.
  const Cell culprit{Stage::FfnNorm, 0u};
  ScaledLane inherited;
  inherited.forward_scale[target] = 1.03f;
  inherited.forward_scale[culprit] = inherited.replay_scale[culprit] = 1.0002f;
  inherited.load(f.model);
  Trace c;
  prefill(inherited, f.tokens, CapturePlan::all(), c);
  scan = scan_divergence(f.a, c, f.floor, {});
  ASSERT_TRUE(scan.first);
  EXPECT_EQ(scan.cells[*scan.first].cell, target);
  loc = localize(f.ref, inherited, f.model, f.a, scan, {});
  ASSERT_FALSE(loc.replays.empty());
  EXPECT_FALSE(loc.replays[0].introduced);
  EXPECT_LT(loc.replays[0].local, 1e-5);
  EXPECT_EQ(loc.introduced_at, culprit);
  // Every cell before the divergence was replayed, walking back.
  EXPECT_EQ(loc.replays.size(), 1 + *scan.first);
  EXPECT_EQ(loc.replays.back().cell, (Cell{Stage::Embedding, 0u}));

  // A clean lane B replays every node at its floor.
  for (const CellDivergence& d : scan_divergence(f.a, f.floor_trace, f.floor, {}).cells) {
    ReplayVerdict v = replay_cell(f.ref, f.cpu, f.model, f.a, d, 10 * d.floor + 1e-6);
    EXPECT_FALSE(v.introduced) << cell_name(d.cell) << " local " << v.local;
  }
}

// Planted bugs in the cpu lane, bisected against the oracle on stories260K (llama, F32): the
// first divergence is the fault's cell, and replay says the bug was introduced there.
TEST(Bisect, EveryApplicableFaultIsFoundWhereItWasPlanted) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  size_t bisected = 0;
  for (const std::string& name : fault_names()) {
    FaultSpec spec = FaultSpec::parse(name);
    if (spec.kind == FaultKind::DropQkvBias) continue;  // llama has no QKV bias
    if (spec.kind == FaultKind::KvCacheOffByOne) continue;  // shows at positions > 0 only:
    // its prefill first cell is still attn_scores@0, checked below with the rest.
    SCOPED_TRACE(name);
    CpuLane lane(CpuLaneOptions{.threads = 1, .fault = spec});
    lane.load(f.model);
    Trace b;
    prefill(lane, f.tokens, CapturePlan::all(), b);
    DivergenceScan scan = scan_divergence(f.a, b, f.floor, {});
    ASSERT_TRUE(scan.first);
    // Planted in every layer, a fault shows first where it crosses the threshold: at its own
    // first cell, except softmax_no_max, whose fp16 rounding (3e-4) stays under 1e-3 until
    // layer 2's scores overflow to NaN.
    const Cell first = scan.cells[*scan.first].cell;
    EXPECT_EQ(first.stage, spec.first_cell().stage);
    EXPECT_EQ(first.layer, spec.kind == FaultKind::SoftmaxNoMax ? std::optional<uint32_t>(2u)
                                                                : spec.first_cell().layer);
    Localization loc = localize(f.ref, lane, f.model, f.a, scan, {});
    ASSERT_FALSE(loc.replays.empty());
    EXPECT_TRUE(loc.replays[0].introduced) << "local " << loc.replays[0].local;
    EXPECT_EQ(loc.introduced_at, first);
    ++bisected;
  }
  EXPECT_GE(bisected, 7u);
}

TEST(Bisect, ReplayNeedsAFullTraceFromPositionZero) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Fixture f;
  Trace partial;
  partial.tokens = f.tokens;
  partial.put({Stage::AttnOut, 1u}, *f.a.find({Stage::AttnOut, 1u}));
  CellDivergence d;
  d.cell = {Stage::AttnOut, 1u};
  std::string msg = test::expect_error([&] {
                      replay_cell(f.ref, f.cpu, f.model, partial, d, 1e-3);
                    }).what();
  EXPECT_NE(msg.find("attention@1"), std::string::npos) << msg;
  Trace later = f.a;
  later.pos = 3;
  msg = test::expect_error([&] { replay_cell(f.ref, f.cpu, f.model, later, d, 1e-3); }).what();
  EXPECT_NE(msg.find("position 0"), std::string::npos) << msg;
}

}  // namespace
}  // namespace lockstep::engine
