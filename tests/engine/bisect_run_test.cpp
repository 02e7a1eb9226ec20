#include "engine/bisect_run.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>

#include "engine/bisect_report.h"
#include "engine/cpu_lane.h"
#include "engine/faults.h"
#include "engine/ref_lane.h"
#include "engine/synthetic_model.h"
#include "tests/engine/fault_cases.h"
#include "tests/engine/lane_test_util.h"

namespace lockstep::engine {
namespace {

using namespace test_lanes;

const std::vector<int32_t> kPrompt{1, 17, 42, 99, 7, 250, 31, 5};

// Peaked attention (scores ~N(0, 6.25²)), as trained models have: an fp16 softmax without max
// subtraction overflows in every layer, as it does in real ones.
constexpr double kQkGain = 2.5;

// Two-layer synthetic models with grouped heads (4 query heads over 2 KV heads), written once
// per binary. F32 models are tiny; quantized ones have rows of 256 so K-quants keep their type.
const Model& synthetic(const std::string& family, QuantMix mix = QuantMix::F32,
                       uint64_t seed = 1) {
  static test::ScratchDir dir("bisect_run_models");
  static std::map<std::string, std::unique_ptr<Model>> models;
  const bool quantized = mix != QuantMix::F32;
  const std::string key =
      family + "-" + std::string(quant_mix_name(mix)) + "-" + std::to_string(seed);
  auto& m = models[key];
  if (!m) {
    SyntheticModelOptions o;
    o.family = family;
    o.hidden = quantized ? 256 : 64;
    o.layers = 2;
    o.heads = 4;
    o.kv_heads = 2;
    o.ffn = quantized ? 512 : 128;
    o.vocab = 300;
    o.mix = mix;
    o.seed = seed;
    o.qk_gain = kQkGain;
    o.out = dir.path / (key + ".gguf");
    write_synthetic_model(o, registry());
    m = std::make_unique<Model>(open_model(o.out, registry()));
  }
  return *m;
}

bool bit_identical(const Tensor& a, const Tensor& b) {
  return a.shape == b.shape &&
         std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

// ---- decode mode: steps stitched into a prefill's trace ----------------------------------

TEST(StitchSteps, DecodeStepsStitchIntoThePrefillTraceBitForBit) {
  for (const char* family : {"llama", "qwen2"}) {
    SCOPED_TRACE(family);
    const Model& model = synthetic(family);
    CpuLane cpu(CpuLaneOptions{.threads = 2});
    RefLane ref;
    for (Lane* lane : std::initializer_list<Lane*>{&cpu, &ref}) {
      SCOPED_TRACE(lane->name());
      lane->load(model);
      std::optional<Trace> prefill =
          capture_run(*lane, kPrompt, RunMode::Prefill, CapturePlan::all());
      std::optional<Trace> decode = capture_run(*lane, kPrompt, RunMode::Decode, CapturePlan::all());
      ASSERT_TRUE(prefill && decode);
      EXPECT_EQ(decode->pos, 0u);
      EXPECT_EQ(decode->tokens, kPrompt);
      ASSERT_EQ(decode->size(), prefill->size());
      for (const auto& [cell, t] : prefill->cells()) {
        const Tensor* d = decode->find(cell);
        ASSERT_NE(d, nullptr) << cell_name(cell);
        EXPECT_TRUE(bit_identical(t, *d)) << cell_name(cell);
      }
    }
  }
}

TEST(StitchSteps, RefusesStepsThatDoNotFollowEachOther) {
  Trace s0, s1;
  s0.tokens = {1, 2};
  s1.tokens = {3};
  s1.pos = 3;  // should be 2
  Tensor t;
  t.shape = {2, 4};
  t.data.assign(8, 1.0f);
  s0.put({Stage::AttnNorm, 0u}, t);
  t.shape = {1, 4};
  t.data.assign(4, 1.0f);
  s1.put({Stage::AttnNorm, 0u}, t);
  std::vector<Trace> steps{s0, s1};
  std::string what = test::expect_error([&] { stitch_steps(steps); }).what();
  EXPECT_NE(what.find("position 3, expected 2"), std::string::npos) << what;
  steps[1].pos = 2;
  steps[1].put({Stage::FfnNorm, 0u}, t);
  what = test::expect_error([&] { stitch_steps(steps); }).what();
  EXPECT_NE(what.find("cells"), std::string::npos) << what;
  steps[0].put({Stage::FfnNorm, 0u}, Tensor{{2, 5}, std::vector<float>(10, 0.0f)});
  what = test::expect_error([&] { stitch_steps(steps); }).what();
  EXPECT_NE(what.find("ffn_norm@0"), std::string::npos) << what;
  EXPECT_THROW(stitch_steps({}), Error);
}

TEST(ParseCell, InvertsCellNameAndNamesMistakes) {
  for (const Cell& c : {Cell{Stage::AttnNorm, 3u}, Cell{Stage::LmHead, std::nullopt},
                        Cell{Stage::Embedding, 0u}, Cell{Stage::FinalNorm, std::nullopt}})
    EXPECT_EQ(parse_cell(cell_name(c)), c) << cell_name(c);
  EXPECT_NE(std::string(test::expect_error([] { parse_cell("attn_norm"); }).what()).find("@LAYER"),
            std::string::npos);
  EXPECT_NE(std::string(test::expect_error([] { parse_cell("lm_head@0"); }).what())
                .find("whole-model"),
            std::string::npos);
  EXPECT_NE(std::string(test::expect_error([] { parse_cell("attn@1"); }).what())
                .find("unknown stage"),
            std::string::npos);
  EXPECT_THROW(parse_cell("attn_norm@x"), Error);
  EXPECT_THROW(parse_cell("moe_router@0"), Error);
}

// ---- every fault, end to end ------------------------------------------------------------

struct FaultCase {
  std::string spec;
  std::string family;
  RunMode mode;
};
void PrintTo(const FaultCase& c, std::ostream* os) {
  *os << c.spec << " on " << c.family << " (" << run_mode_name(c.mode) << ")";
}

// test_faults::fault_cases() in both modes.
std::vector<FaultCase> fault_cases() {
  std::vector<FaultCase> cases;
  for (RunMode mode : {RunMode::Prefill, RunMode::Decode})
    for (const test_faults::FaultCase& c : test_faults::fault_cases())
      cases.push_back({c.spec, c.family, mode});
  return cases;
}

class BisectFinds : public ::testing::TestWithParam<FaultCase> {};

// What the `bisect` command runs: lanes ref and cpu (the fault planted in cpu), the floor from
// the clean cpu lane against ref, default thresholds. The first divergence is the fault's first
// cell, replay there says "introduced", and the diagnosis is the fault's bug class.
TEST_P(BisectFinds, TheFaultsCellIntroducedHereWithItsDiagnosis) {
  const FaultCase& c = GetParam();
  const FaultSpec spec = FaultSpec::parse(c.spec);
  const Model& model = synthetic(c.family);
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  ref.load(model);
  faulted.load(model);
  BisectOptions options;
  options.mode = c.mode;
  options.threads = 2;
  BisectResult r = bisect(ref, faulted, model, kPrompt, options);

  ASSERT_TRUE(r.diverged()) << "the fault never shows";
  EXPECT_EQ(r.first()->cell, spec.first_cell()) << "first divergence " << cell_name(r.first()->cell);
  ASSERT_TRUE(r.localization.has_value());
  ASSERT_FALSE(r.localization->replays.empty());
  EXPECT_TRUE(r.localization->replays.front().introduced)
      << "local " << r.localization->replays.front().local;
  ASSERT_TRUE(r.localization->introduced_at.has_value());
  EXPECT_EQ(*r.localization->introduced_at, spec.first_cell());
  ASSERT_TRUE(r.diagnosis.has_value());
  EXPECT_TRUE(r.diagnosed_local);
  const BugClass want = fault_info(spec.kind).diagnosis;
  ASSERT_TRUE(r.diagnosis->bug.has_value()) << r.diagnosis->headline;
  EXPECT_EQ(*r.diagnosis->bug, want) << r.diagnosis->headline;
  std::printf("[bisect] %-32s %-10s %-7s first %-16s rel %.2e local %.2e -> %s\n",
              c.spec.c_str(), c.family.c_str(), std::string(run_mode_name(c.mode)).c_str(),
              cell_name(r.first()->cell).c_str(), r.first()->rel_rms,
              r.localization->replays.front().local, r.diagnosis->headline.c_str());
}

INSTANTIATE_TEST_SUITE_P(AllFaults, BisectFinds, ::testing::ValuesIn(fault_cases()),
                         [](const ::testing::TestParamInfo<FaultCase>& p) {
                           std::string s = p.param.spec + "_" + p.param.family + "_" +
                                           std::string(run_mode_name(p.param.mode));
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// On quantized weights the clean cpu lane's own error against the oracle (8-bit activations,
// ~6e-3 per matmul) makes a floor 10× that: faults as small as rms_eps_wrong (~0.5%) hide under
// it. Bisected against the clean cpu lane instead (no floor: every cell before the fault is
// bit-identical), each fault is found, introduced and diagnosed as on F32 weights.
TEST(BisectFindsQuantized, AgainstTheCleanCpuLane) {
  for (const char* family : {"llama", "qwen2"})
    for (RunMode mode : {RunMode::Prefill, RunMode::Decode}) {
      const Model& model = synthetic(family, QuantMix::Q4_K_M);
      CpuLane clean(CpuLaneOptions{.threads = 2});
      clean.load(model);
      for (const FaultInfo& f : fault_registry()) {
        if (f.kind == FaultKind::DropQkvBias && std::string(family) != "qwen2") continue;
        const FaultSpec spec = FaultSpec::defaults(f.kind);
        SCOPED_TRACE(std::string(family) + " " + spec.str() + " " +
                     std::string(run_mode_name(mode)));
        CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
        faulted.load(model);
        BisectOptions options;
        options.mode = mode;
        options.floor = FloorSource::None;
        options.threads = 2;
        BisectResult r = bisect(clean, faulted, model, kPrompt, options);
        ASSERT_TRUE(r.diverged());
        EXPECT_EQ(r.first()->cell, spec.first_cell()) << cell_name(r.first()->cell);
        ASSERT_TRUE(r.localization && r.localization->introduced_at);
        EXPECT_EQ(*r.localization->introduced_at, spec.first_cell());
        ASSERT_TRUE(r.diagnosis && r.diagnosis->bug) << (r.diagnosis ? r.diagnosis->headline : "");
        EXPECT_EQ(*r.diagnosis->bug, f.diagnosis) << r.diagnosis->headline;
      }
    }
}

// ---- clean lanes -----------------------------------------------------------------------

// The cpu lane against the oracle with no floor to lean on: every cell within a bound fixed per
// weight type (F32/F16/BF16: 1e-5, the oracle's own precision aside; quantized: 5e-2, the 8-bit
// activation rounding), for every quantization type, several seeds, both modes.
TEST(BisectClean, NoDivergenceAcrossSeedsAndQuantizationTypes) {
  for (const char* family : {"llama", "qwen2"})
    for (const std::string& name : quant_mix_names()) {
      const QuantMix mix = *parse_quant_mix(name);
      const bool exact = mix == QuantMix::F32 || mix == QuantMix::F16 || mix == QuantMix::BF16;
      for (uint64_t seed : {1u, 2u}) {
        const Model& model = synthetic(family, mix, seed);
        RefLane ref;
        CpuLane cpu(CpuLaneOptions{.threads = 2});
        ref.load(model);
        cpu.load(model);
        for (RunMode mode : {RunMode::Prefill, RunMode::Decode}) {
          SCOPED_TRACE(std::string(family) + " " + name + " seed " + std::to_string(seed) + " " +
                       std::string(run_mode_name(mode)));
          BisectOptions options;
          options.mode = mode;
          options.floor = FloorSource::None;
          options.settings.abs_threshold = exact ? 1e-5 : 5e-2;
          options.threads = 2;
          BisectResult r = bisect(ref, cpu, model, kPrompt, options);
          EXPECT_FALSE(r.diverged()) << cell_name(r.first()->cell) << " " << r.first()->rel_rms;
          EXPECT_FALSE(r.diagnosis.has_value());
          EXPECT_FALSE(r.localization.has_value());
          EXPECT_EQ(r.scan.cells.size(), r.comparison.cells.size());
        }
      }
    }
}

// ---- heatmaps, progress, cancel, reports ---------------------------------------------------

TEST(BisectRun, HeatmapsShowLocalErrorOnlyWhereTheFaultIs) {
  const Model& model = synthetic("llama");
  const FaultSpec spec = FaultSpec::parse("rms_eps_wrong@ffn_norm,1");
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  ref.load(model);
  faulted.load(model);
  BisectOptions options;
  options.heatmaps = true;
  std::vector<double> fractions;
  BisectResult r = bisect(ref, faulted, model, kPrompt, options,
                          [&](const BisectProgress& p) { fractions.push_back(p.fraction); });
  ASSERT_EQ(r.local.size(), r.scan.cells.size());
  for (const CellDivergence& d : r.scan.cells) {
    const double local = r.local.at(d.cell);
    if (d.cell == spec.first_cell())
      EXPECT_GT(local, 1e-3) << cell_name(d.cell);
    else
      EXPECT_LE(local, 1e-5) << cell_name(d.cell);  // later cells carry error, none introduce it
  }
  // Cells after the fault carry its error: the carried map is not the local one.
  EXPECT_GT(r.scan.cells.back().rel_rms, 1e-4);
  ASSERT_FALSE(fractions.empty());
  EXPECT_TRUE(std::is_sorted(fractions.begin(), fractions.end()));
  EXPECT_EQ(fractions.back(), 1.0);
}

TEST(BisectRun, ProgressNamesTheCellEachLaneHasReached) {
  const Model& model = synthetic("llama");
  RefLane ref;
  CpuLane cpu(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = std::nullopt});
  ref.load(model);
  cpu.load(model);
  for (const RunMode mode : {RunMode::Prefill, RunMode::Decode}) {
    BisectOptions options;
    options.mode = mode;
    std::vector<BisectProgress> seen;
    bisect(ref, cpu, model, kPrompt, options, [&](const BisectProgress& p) { seen.push_back(p); });
    const std::string m(run_mode_name(mode));
    // Each lane names the first cell of every layer it reaches, and of the whole-model stages.
    for (const std::string lane : {"ref", "cpu"})
      for (const std::string cell : {"embedding@0", "attn_norm@1", "final_norm"}) {
        const std::string want = "running lane " + lane + " (" + m + "): " + cell;
        EXPECT_TRUE(std::any_of(seen.begin(), seen.end(), [&](const BisectProgress& p) {
          return p.message == want;
        })) << want;
      }
    std::vector<double> fractions;
    for (const auto& p : seen) fractions.push_back(p.fraction);
    EXPECT_TRUE(std::is_sorted(fractions.begin(), fractions.end()));
  }
  // The observer is detached after the bisection: the lanes run on without it.
  EXPECT_TRUE(capture_run(cpu, kPrompt, RunMode::Prefill, CapturePlan::all()).has_value());
}

TEST(BisectRun, InheritedDivergenceWalksBackToTheNodeThatIntroducedIt) {
  // rms_eps_wrong at attn_norm@0 scales each token's row by a factor just below 1 (~0.4%);
  // Q and K both carry it, so attn_scores (q·k) carry about twice that. With the threshold
  // between the two, the first divergence is attn_scores@0, whose replay is clean: inherited,
  // and the walk back finds attn_norm@0.
  const Model& model = synthetic("llama");
  const FaultSpec spec = FaultSpec::parse("rms_eps_wrong@attn_norm,0");
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  ref.load(model);
  faulted.load(model);
  BisectResult first = bisect(ref, faulted, model, kPrompt, BisectOptions{});
  ASSERT_TRUE(first.diverged());
  ASSERT_EQ(first.first()->cell, spec.first_cell());
  const double at_fault = first.first()->rel_rms;
  double later = 0;
  for (const CellDivergence& d : first.scan.cells)
    if (spec.first_cell() < d.cell) later = std::max(later, d.rel_rms);
  ASSERT_GT(later, at_fault * 1.5) << "the error does not grow past its cell";
  BisectOptions options;
  options.settings.abs_threshold = std::sqrt(at_fault * later);
  BisectResult r = bisect(ref, faulted, model, kPrompt, options);
  ASSERT_TRUE(r.diverged());
  EXPECT_TRUE(spec.first_cell() < r.first()->cell);
  ASSERT_TRUE(r.localization);
  EXPECT_FALSE(r.localization->replays.front().introduced);
  ASSERT_TRUE(r.localization->introduced_at);
  EXPECT_EQ(*r.localization->introduced_at, spec.first_cell());
  ASSERT_TRUE(r.diagnosis && r.diagnosis->bug);
  EXPECT_TRUE(r.diagnosed_local);
  EXPECT_EQ(*r.diagnosed_cell, spec.first_cell());
  EXPECT_EQ(*r.diagnosis->bug, BugClass::Scale) << r.diagnosis->headline;
  EXPECT_EQ(to_json(r, {})["verdict"], "inherited");
  EXPECT_NE(format_summary(r, {}).find("introduced at attn_norm@0"), std::string::npos)
      << format_summary(r, {});
}

TEST(BisectRun, CancelStopsBetweenPhases) {
  const Model& model = synthetic("llama");
  RefLane ref;
  CpuLane cpu(CpuLaneOptions{.threads = 2});
  ref.load(model);
  cpu.load(model);
  std::atomic<bool> cancel{false};
  BisectOptions options;
  options.mode = RunMode::Decode;
  BisectResult r = bisect(
      ref, cpu, model, kPrompt, options,
      [&](const BisectProgress& p) {
        if (p.message.find("running lane cpu") != std::string::npos) cancel = true;
      },
      &cancel);
  EXPECT_TRUE(r.cancelled);
  EXPECT_TRUE(r.scan.cells.empty());
  EXPECT_TRUE(to_json(r, {})["cancelled"].get<bool>());
}

TEST(BisectReport, JsonFollowsItsSchemaAndTextMarksTheFirstDivergence) {
  const Model& model = synthetic("qwen2");
  const FaultSpec spec = FaultSpec::parse("gemv_transposed@lm_head");
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  ref.load(model);
  faulted.load(model);
  BisectOptions options;
  options.heatmaps = true;
  options.replay_cells = {parse_cell("attn_norm@1"), parse_cell("lm_head")};
  BisectResult r = bisect(ref, faulted, model, kPrompt, options);
  ReportContext context;
  context.tool_version = "9.9";
  context.model = "m.gguf";
  context.fault = spec.str();
  const nlohmann::json j = to_json(r, context);
  for (const char* key :
       {"format_version", "tool", "tool_version", "kind", "model", "fault", "fault_lane",
        "source_a", "source_b", "lane_a", "lane_b", "mode", "tokens", "settings", "floor_note",
        "cancelled", "diverged", "first_divergence", "verdict", "introduced_at", "replays",
        "replay_note", "requested_replays", "diagnosis", "cells", "only_in_a", "only_in_b",
        "first_divergence_detail"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j.size(), 28u);
  ASSERT_EQ(j["requested_replays"].size(), 2u);
  EXPECT_EQ(j["requested_replays"][0]["cell"], "attn_norm@1");
  EXPECT_EQ(j["requested_replays"][0]["introduced"], false);
  EXPECT_EQ(j["requested_replays"][1]["cell"], "lm_head");
  EXPECT_EQ(j["requested_replays"][1]["introduced"], true);
  EXPECT_EQ(j["format_version"], 1);
  EXPECT_EQ(j["kind"], "bisect");
  EXPECT_EQ(j["lane_a"], "ref");
  EXPECT_EQ(j["lane_b"], "cpu");
  EXPECT_EQ(j["mode"], "prefill");
  EXPECT_EQ(j["tokens"].get<std::vector<int32_t>>(), kPrompt);
  EXPECT_EQ(j["diverged"], true);
  EXPECT_EQ(j["verdict"], "introduced");
  EXPECT_EQ(j["introduced_at"], "lm_head");
  EXPECT_EQ(j["first_divergence"]["cell"], "lm_head");
  EXPECT_EQ(j["diagnosis"]["cell"], "lm_head");
  EXPECT_EQ(j["diagnosis"]["basis"], "local");
  EXPECT_EQ(j["diagnosis"]["bug"], "layout");
  EXPECT_EQ(j["first_divergence_detail"]["cell"], "lm_head");
  ASSERT_EQ(j["cells"].size(), r.scan.cells.size());
  for (const auto& row : j["cells"]) {
    for (const char* key : {"cell", "stage", "layer", "relative_rms", "floor", "threshold",
                            "diverges", "new_nonfinite", "cosine", "max_abs_diff", "sqnr_db",
                            "local"})
      EXPECT_TRUE(row.contains(key)) << key;
    EXPECT_EQ(row["diverges"], row["cell"] == "lm_head") << row["cell"];
    EXPECT_FALSE(row["local"].is_null());
  }
  // Stable: the same run gives the same report.
  EXPECT_EQ(to_json(bisect(ref, faulted, model, kPrompt, options), context).dump(), j.dump());

  const std::string table = format_table(r, MapMetric::RelativeRms);
  EXPECT_NE(table.find("lm_head (model)"), std::string::npos) << table;
  EXPECT_EQ(std::count(table.begin(), table.end(), '*'), 2) << table;  // the mark and the legend
  EXPECT_NE(table.find("qkv_bias"), std::string::npos) << table;
  const std::string local = format_table(r, MapMetric::Local);
  EXPECT_NE(local.find("local error"), std::string::npos) << local;
  const std::string md = to_markdown(r, context);
  EXPECT_NE(md.find("| stage | L0 | L1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("**"), std::string::npos) << md;
  EXPECT_NE(md.find("introduced here"), std::string::npos) << md;
  EXPECT_NE(md.find("## Replays"), std::string::npos) << md;
  for (MapMetric m : {MapMetric::RelativeRms, MapMetric::Cosine, MapMetric::MaxAbsDiff,
                      MapMetric::SqnrDb, MapMetric::Local, MapMetric::NonFinite}) {
    EXPECT_EQ(parse_map_metric(map_metric_name(m)), m);
    EXPECT_FALSE(format_table(r, m).empty());
  }
  EXPECT_FALSE(parse_map_metric("rms"));
}

TEST(BisectRun, DiffOfSavedTracesFindsTheSameCellWithoutReplay) {
  const Model& model = synthetic("llama");
  const FaultSpec spec = FaultSpec::parse("partial_write@ffn_out,1");
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  ref.load(model);
  faulted.load(model);
  Trace a = *capture_run(ref, kPrompt, RunMode::Prefill, CapturePlan::all());
  Trace b = *capture_run(faulted, kPrompt, RunMode::Prefill, CapturePlan::all());
  BisectOptions options;
  std::optional<NoiseFloor> floor = measure_noise_floor(model, kPrompt, RunMode::Prefill, 2);
  ASSERT_TRUE(floor);
  BisectResult r = diff_traces(a, b, &model.config, &*floor, options);
  ASSERT_TRUE(r.diverged());
  EXPECT_EQ(r.first()->cell, spec.first_cell());
  EXPECT_FALSE(r.localization.has_value());
  EXPECT_NE(r.replay_note.find("cannot be replayed"), std::string::npos);
  ASSERT_TRUE(r.diagnosis && r.diagnosis->bug);
  EXPECT_FALSE(r.diagnosed_local);
  EXPECT_EQ(*r.diagnosis->bug, BugClass::PartialWrite) << r.diagnosis->headline;
  EXPECT_EQ(to_json(r, {.kind = "diff"})["verdict"], "not replayed");
  // Without a config there is no diagnosis, and the note says what would give one.
  BisectResult bare = diff_traces(a, b, nullptr, nullptr, options);
  EXPECT_EQ(bare.first()->cell, spec.first_cell());
  EXPECT_FALSE(bare.diagnosis.has_value());
  EXPECT_NE(bare.replay_note.find("--model"), std::string::npos);
}

}  // namespace
}  // namespace lockstep::engine
