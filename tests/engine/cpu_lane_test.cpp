#include "engine/cpu_lane.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "engine/ref_lane.h"
#include "engine/synthetic_model.h"
#include "engine/tokenizer.h"
#include "tests/engine/lane_test_util.h"
#include "tests/engine/tiny_model.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;
using namespace test_lanes;

bool bit_identical(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The greedy continuation of stories260K on every CPU lane: tests/engine/generate_test.cpp.

// ref and cpu on F32 weights: every captured cell of a prompt's forward within 1e-5 relative
// RMS (the bound; f32 accumulation against float64 measures ~1e-7..1e-6).
TEST(CpuLaneVsRef, EveryStageWithin1e5RelativeRmsOnF32Weights) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"stories260K", "ref-llama-f32", "ref-qwen2-f32"}) {
    SCOPED_TRACE(name);
    const std::string file =
        std::string(name) == "stories260K" ? "stories260K.gguf" : "quant-ref/" + std::string(name) + ".gguf";
    const Model& model = shared_model(file);
    Reference ref = reference(name);
    RefLane oracle;
    CpuLane lane;
    oracle.load(model);
    lane.load(model);
    Trace expected, got;
    prefill(oracle, ref.tokens, CapturePlan::all(), expected);
    prefill(lane, ref.tokens, CapturePlan::all(), got);
    ASSERT_EQ(got.size(), expected.size());
    double worst = 0.0;
    std::string worst_cell;
    for (const auto& [cell, t] : expected.cells()) {
      const Tensor* g = got.find(cell);
      ASSERT_NE(g, nullptr) << cell_name(cell);
      ASSERT_EQ(g->shape, t.shape) << cell_name(cell);
      double e = relative_rms(g->data, t.data);
      EXPECT_LE(e, 1e-5) << cell_name(cell);
      if (e > worst) worst = e, worst_cell = cell_name(cell);
    }
    std::printf("[cpu vs ref] %-14s %zu cells, worst relative RMS %.2e at %s\n", name,
                expected.size(), worst, worst_cell.c_str());
  }
}

struct LogitCase {
  std::string name;  // reference/<name>; the model is stories260K.gguf or quant-ref/<name>.gguf
  double max_rel;
  double max_kl;
  double min_top1;
  double max_flip = 0.05;  // where top-1 differs, llama.cpp's gap between the two tokens
};

void PrintTo(const LogitCase& c, std::ostream* os) {
  *os << c.name;
}

class CpuLaneLogits : public ::testing::TestWithParam<LogitCase> {};

TEST_P(CpuLaneLogits, AgreeWithLlamaCppAtEveryPosition) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const LogitCase& c = GetParam();
  Reference ref = reference(c.name);
  const std::string file =
      c.name == "stories260K" ? "stories260K.gguf" : "quant-ref/" + c.name + ".gguf";
  const Model& model = shared_model(file);
  CpuLane lane;
  lane.load(model);
  Logits logits = prefill(lane, ref.tokens);
  Agreement a = agreement(logits, ref.logits);
  // The oracle on the same file, for scale: how far llama.cpp is from exact arithmetic.
  RefLane oracle;
  oracle.load(model);
  Agreement o = agreement(prefill(oracle, ref.tokens), ref.logits);
  // Where the argmax differs, how close llama.cpp's own top two were (a near-tie flips on noise).
  double widest_flip = 0.0;
  for (uint64_t t = 0; t < logits.tokens; ++t) {
    std::span<const float> theirs = std::span(ref.logits).subspan(t * ref.vocab, ref.vocab);
    int32_t ours = argmax(logits.row(t)), best = argmax(theirs);
    if (ours != best) widest_flip = std::max<double>(widest_flip, theirs[best] - theirs[ours]);
  }
  std::printf(
      "[cpu vs llama.cpp] %-16s max rel %.2e  KL %.2e  top-1 %.3f (flips within %.3f logits) | "
      "ref vs llama.cpp: max rel %.2e  KL %.2e  top-1 %.3f\n",
      c.name.c_str(), a.max_rel, a.mean_kl, a.top1, widest_flip, o.max_rel, o.mean_kl, o.top1);
  EXPECT_LE(widest_flip, c.max_flip);
  EXPECT_LE(a.mean_kl, 1.5 * o.mean_kl + 1e-6);
  EXPECT_LE(a.max_rel, c.max_rel);
  EXPECT_LE(a.mean_kl, c.max_kl);
  EXPECT_GE(a.top1, c.min_top1);
}

// Bounds. Measured on this 2-core Zen4 (the test prints both lanes' figures per file):
//  - F32/F16 files: cpu is the oracle to 1e-6 (CpuLaneVsRef), and both sit 0.9e-3..1.5e-3 from
//    llama.cpp, whose f16 KV cache and f16 flash attention make the gap (see ref_lane_test.cpp).
//    Bound: 3e-3, KL 1e-4, argmax exact.
//  - BF16: 5.5e-3, KL 1.0e-5, one flip at a 0.002-logit near-tie, for the oracle too: llama.cpp
//    rounds activations to bf16 (8-bit mantissa) before a BF16 matmul; both our lanes keep f32.
//    Bound: 1e-2, KL 1e-4, top-1 90%.
//  - Quantized files: 2-3.1% max relative error, KL 1.3e-4..6.6e-3, top-1 90.6-100%, every
//    flip at a near-tie (llama.cpp's own top two within 0.061 logits). The float64 oracle, with
//    exact weights and no activation rounding, is as far (KL 1.2e-4..6.9e-3, top-1 87.5-100%):
//    the gap is llama.cpp's f16 attention, amplified by these random-weight models (a 2.7e-4
//    perturbation of one qkv_matmul grows to 1.4% in the logits). Bounds: 5%, KL 1e-2, top-1
//    87.5%, flips within 0.1 logits, and KL at most 1.5× the oracle's (measured ≤ 1.25×: the
//    cpu lane's 8-bit activations, like llama.cpp's, cost little on top).
LogitCase quantized(std::string name) {
  return LogitCase{std::move(name), 0.05, 1e-2, 0.875, 0.1};
}
INSTANTIATE_TEST_SUITE_P(
    Models, CpuLaneLogits,
    ::testing::Values(LogitCase{"stories260K", 3e-3, 1e-4, 1.0},
                      LogitCase{"ref-llama-f32", 3e-3, 1e-4, 1.0},
                      LogitCase{"ref-qwen2-f32", 3e-3, 1e-4, 1.0},
                      LogitCase{"ref-llama-F16", 3e-3, 1e-4, 1.0},
                      LogitCase{"ref-llama-BF16", 1e-2, 1e-4, 0.9},
                      quantized("ref-llama-Q8_0"), quantized("ref-llama-Q6_K"),
                      quantized("ref-llama-Q5_K_M"), quantized("ref-llama-Q5_K_S"),
                      quantized("ref-llama-Q5_1"), quantized("ref-llama-Q5_0"),
                      quantized("ref-llama-Q4_K_M"), quantized("ref-llama-Q4_K_S"),
                      quantized("ref-llama-Q4_1"), quantized("ref-llama-Q4_0"),
                      quantized("ref-llama-Q3_K_S"), quantized("ref-llama-Q2_K"),
                      quantized("ref-qwen2-Q8_0"), quantized("ref-qwen2-Q6_K"),
                      quantized("ref-qwen2-Q4_K_M")),
    [](const ::testing::TestParamInfo<LogitCase>& info) {
      std::string s = info.param.name;
      std::replace(s.begin(), s.end(), '-', '_');
      return s;
    });

TEST(CpuLaneCapture, CaptureNeverChangesLogitsAndReplayReproducesEveryCell) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"ref-llama-Q4_K_M", "ref-qwen2-f32"}) {
    SCOPED_TRACE(name);
    const Model& model = shared_model(std::string("quant-ref/") + name + ".gguf");
    Reference ref = reference(name);
    CpuLane lane;
    lane.load(model);
    Trace none, full, some;
    Logits plain = prefill(lane, ref.tokens, CapturePlan::none(), none);
    Logits captured = prefill(lane, ref.tokens, CapturePlan::all(), full);
    // Scores of one layer only: that layer runs attention node by node, the others fused.
    Logits partial = prefill(lane, ref.tokens, CapturePlan::parse("attn_scores@1;ffn_out"), some);
    EXPECT_EQ(none.size(), 0u);
    EXPECT_TRUE(bit_identical(plain.values, captured.values));
    EXPECT_TRUE(bit_identical(plain.values, partial.values));
    EXPECT_EQ(some.size(), 1u + model.config.layers);
    const size_t staged = std::count_if(model.plan.nodes.begin(), model.plan.nodes.end(),
                                        [](const Node& n) { return n.stage.has_value(); });
    EXPECT_EQ(full.size(), staged);
    EXPECT_EQ(full.lane, "cpu");
    // ffn_out is the same whether attention ran fused or not.
    for (uint32_t L = 0; L < model.config.layers; ++L)
      EXPECT_TRUE(bit_identical(some.find({Stage::FfnOut, L})->data,
                                full.find({Stage::FfnOut, L})->data))
          << L;
    const Tensor* lm = full.find({Stage::LmHead, std::nullopt});
    ASSERT_NE(lm, nullptr);
    EXPECT_TRUE(bit_identical(lm->data, captured.values));

    std::set<Op> ops = replay_all(lane, model, ref.tokens, full);
    EXPECT_TRUE(ops.count(Op::AttnScores) && ops.count(Op::MatMul) && ops.count(Op::Rope));
  }
}

TEST(CpuLaneCapture, DecodeStepsThreadsAndLastLogitsOnlyAreBitIdentical) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"ref-llama-Q4_K_M", "ref-qwen2-Q8_0"}) {
    SCOPED_TRACE(name);
    const Model& model = shared_model(std::string("quant-ref/") + name + ".gguf");
    Reference ref = reference(name);
    std::span<const int32_t> all(ref.tokens);
    const uint64_t n = all.size();
    CpuLane lane(CpuLaneOptions{.threads = 2});
    lane.load(model);
    Logits whole = prefill(lane, all);

    // Prefill all but the last three, then decode them one by one: same logits, bit for bit.
    Trace trace;
    lane.reset();
    lane.forward(all.first(n - 3), 0, CapturePlan::none(), trace);
    Logits step;
    for (uint64_t t = n - 3; t < n; ++t)
      step = lane.forward(all.subspan(t, 1), static_cast<uint32_t>(t), CapturePlan::none(), trace);
    EXPECT_TRUE(bit_identical(step.values, whole.row(n - 1)));
    // Re-running from an earlier position cuts the cache back.
    Logits again = lane.forward(all.subspan(n - 1, 1), static_cast<uint32_t>(n - 1),
                                CapturePlan::none(), trace);
    EXPECT_TRUE(bit_identical(again.values, step.values));
    EXPECT_EQ(lane.cached_tokens(), n);
    test::expect_error([&] {
      lane.forward(all.first(1), static_cast<uint32_t>(n + 1), CapturePlan::none(), trace);
    });

    CpuLane one(CpuLaneOptions{.threads = 1});
    one.load(model);
    EXPECT_TRUE(bit_identical(prefill(one, all).values, whole.values));
    one.set_last_logits_only(true);
    Logits last = prefill(one, all);
    EXPECT_EQ(last.tokens, 1u);
    EXPECT_TRUE(bit_identical(last.values, whole.row(n - 1)));
  }
}

// Every ISA this CPU runs is as close to the float64 oracle as the issue asks on F32 weights
// (only the f32 summation order differs), and gives the same greedy continuation on quantized
// weights. (Quantized logits are not compared across ISAs: a last-bit difference in a norm's
// output can flip one activation's 8-bit rounding, which this random-weight model amplifies
// ~50x — measured 2.7e-4 at one qkv_matmul growing to 1.4% in the logits.)
TEST(CpuLaneIsa, EveryIsaMatchesTheOracle) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Model& f32 = shared_model("quant-ref/ref-llama-f32.gguf");
  const Model& q4 = shared_model("stories260K.gguf");
  Reference ref = reference("ref-llama-f32");
  RefLane oracle;
  oracle.load(f32);
  Trace expected;
  prefill(oracle, ref.tokens, CapturePlan::all(), expected);
  std::optional<std::vector<int32_t>> first;
  for (cpu::Isa isa : cpu::supported_isas()) {
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    CpuLane lane(CpuLaneOptions{.threads = 2, .isa = isa});
    EXPECT_EQ(lane.isa(), isa);
    lane.load(f32);
    Trace got;
    prefill(lane, ref.tokens, CapturePlan::all(), got);
    for (const auto& [cell, t] : expected.cells())
      EXPECT_LE(relative_rms(got.find(cell)->data, t.data), 1e-5) << cell_name(cell);
    lane.load(q4);
    std::vector<int32_t> prompt{1, 403, 407, 261, 378};
    std::vector<int32_t> text = greedy(lane, prompt, 32);
    if (!first) first = text;
    EXPECT_EQ(text, *first);
  }
}

// Odd shapes, op by op: every node of a synthetic model replayed by both lanes on the same random
// inputs. GQA ratios 1, 4 and 7 (Qwen2.5-7B: 28 Q heads over 4 KV heads), head dims 64 and 128,
// token counts and widths that are not powers of two, NeoX and normal RoPE, biases, and
// quantized weights (whose matmuls carry the 8-bit activation rounding).
struct ShapeCase {
  std::string name;
  std::string family;
  uint64_t hidden, heads, kv_heads, ffn;
  QuantMix mix;
  uint64_t tokens;
};

void PrintTo(const ShapeCase& c, std::ostream* os) {
  *os << c.name;
}

class CpuLaneOps : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(CpuLaneOps, EveryNodeMatchesTheFloat64ReferenceOnRandomInputs) {
  const ShapeCase& c = GetParam();
  test::ScratchDir dir("cpu_ops_" + c.name);
  SyntheticModelOptions o;
  o.family = c.family;
  o.hidden = c.hidden;
  o.heads = c.heads;
  o.kv_heads = c.kv_heads;
  o.ffn = c.ffn;
  o.layers = 1;
  o.vocab = 300;
  o.mix = c.mix;
  o.seed = 7;
  o.out = dir.path / "m.gguf";
  write_synthetic_model(o, registry());
  Model model = open_model(o.out, registry());
  ASSERT_EQ(model.config.gqa_ratio(), c.heads / c.kv_heads);
  RefLane oracle;
  CpuLane lane(CpuLaneOptions{.threads = 2});
  oracle.load(model);
  lane.load(model);

  const uint64_t n = c.tokens;
  std::mt19937_64 rng(11);
  std::set<Op> seen;
  double worst_matmul = 0.0, worst_other = 0.0;
  for (const Node& node : model.plan.nodes) {
    std::vector<Tensor> inputs = random_replay_inputs(model, node, n, o.vocab, rng);
    Tensor want = oracle.replay(node, inputs);
    Tensor got = lane.replay(node, inputs);
    ASSERT_EQ(got.shape, want.shape) << node.index;
    // F32 weights: f32 rounding only (measured ≤ 1.1e-7). Quantized matmuls: the activations'
    // 8-bit rounding, ≈0.6% relative per element (measured 5.5e-3..7.1e-3).
    const bool quantized_matmul = node.op == Op::MatMul && c.mix != QuantMix::F32;
    const double bound = quantized_matmul ? 1.5e-2 : 1e-5;
    const double e = relative_rms(got.data, want.data);
    EXPECT_LE(e, bound) << "node " << node.index << " " << op_name(node.op);
    (node.op == Op::MatMul ? worst_matmul : worst_other) =
        std::max(e, node.op == Op::MatMul ? worst_matmul : worst_other);
    seen.insert(node.op);
  }
  for (Op op : {Op::Embed, Op::MatMul, Op::Rope, Op::AttnScores, Op::Softmax, Op::AttnWeightedSum,
                Op::Add, c.family == "starcoder2" ? Op::LayerNorm : Op::RmsNorm})
    EXPECT_TRUE(seen.count(op)) << op_name(op);
  std::printf("[cpu vs ref, one node] %-16s worst relative RMS: matmul %.2e, other ops %.2e\n",
              c.name.c_str(), worst_matmul, worst_other);

  // And a whole forward: every stage close to the oracle's.
  std::vector<int32_t> tokens;
  for (uint64_t t = 0; t < n; ++t) tokens.push_back(static_cast<int32_t>(rng() % o.vocab));
  Trace expected, got;
  prefill(oracle, tokens, CapturePlan::all(), expected);
  prefill(lane, tokens, CapturePlan::all(), got);
  for (const auto& [cell, t] : expected.cells())
    EXPECT_LE(relative_rms(got.find(cell)->data, t.data), c.mix == QuantMix::F32 ? 1e-5 : 5e-2)
        << cell_name(cell);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CpuLaneOps,
    ::testing::Values(
        // GQA 1, head dim 64, normal RoPE, 13 tokens.
        ShapeCase{"gqa1_hd64", "llama", 448, 7, 7, 1216, QuantMix::F32, 13},
        // GQA 4, head dim 128, NeoX RoPE with QKV bias, 11 tokens.
        ShapeCase{"gqa4_hd128", "qwen2", 512, 4, 1, 1376, QuantMix::F32, 11},
        // GQA 7 (Qwen2.5-7B's 28/4), head dim 64, 9 tokens.
        ShapeCase{"gqa7_hd64", "qwen2", 896, 14, 2, 1248, QuantMix::F32, 9},
        ShapeCase{"gqa7_hd128_q4km", "qwen2", 1792, 14, 2, 2304, QuantMix::Q4_K_M, 7},
        ShapeCase{"gqa4_hd64_q8_0", "llama", 512, 8, 2, 1376, QuantMix::Q8_0, 5},
        ShapeCase{"gqa1_hd128_q5_1", "llama", 640, 5, 5, 992, QuantMix::Q5_1, 6},
        ShapeCase{"gqa2_hd64_f16", "qwen3", 384, 6, 3, 800, QuantMix::F16, 7},
        ShapeCase{"starcoder2_q6k", "starcoder2", 768, 6, 2, 1536, QuantMix::Q6_K, 5}),
    [](const ::testing::TestParamInfo<ShapeCase>& info) { return info.param.name; });

// The families' tiny models (Qwen3's Q/K norm included): cpu runs what ref runs, and its replay
// reproduces its captures.
TEST(CpuLaneTiny, EveryFamilyAgreesWithRef) {
  for (auto& [name, spec] : test::tiny_family_specs()) {
    SCOPED_TRACE(name);
    test::ScratchDir dir("cpu_tiny_" + name);
    Model model = open_model(test::write_tiny_gguf(dir.path / "m.gguf", spec), registry());
    RefLane oracle;
    CpuLane lane;
    oracle.load(model);
    lane.load(model);
    std::vector<int32_t> tokens{1, 5, 7, 3, 39, 0};
    Trace expected, got;
    prefill(oracle, tokens, CapturePlan::all(), expected);
    Logits logits = prefill(lane, tokens, CapturePlan::all(), got);
    EXPECT_TRUE(std::all_of(logits.values.begin(), logits.values.end(),
                            [](float v) { return std::isfinite(v); }));
    for (const auto& [cell, t] : expected.cells())
      EXPECT_LE(relative_rms(got.find(cell)->data, t.data), 1e-5) << cell_name(cell);
    replay_all(lane, model, tokens, got);
    test::expect_error([&] {
      int32_t out_of_vocab = static_cast<int32_t>(spec.vocab);
      Trace t;
      lane.forward(std::span(&out_of_vocab, 1), 0, CapturePlan::none(), t);
    });
  }
}

TEST(CpuLaneErrors, BadCallsNameTheProblem) {
  CpuLane lane;
  Trace trace;
  int32_t tok = 1;
  EXPECT_NE(std::string(test::expect_error([&] { lane.forward({&tok, 1}, 0, CapturePlan::none(), trace); })
                .what()).find("no model"),
            std::string::npos);
  test::ScratchDir dir("cpu_errors");
  Model model = open_model(test::write_tiny_gguf(dir.path / "m.gguf", {}), registry());
  lane.load(model);
  EXPECT_NE(std::string(test::expect_error([&] { lane.forward({}, 0, CapturePlan::none(), trace); })
                .what()).find("at least one token"),
            std::string::npos);
  Tensor bad{{1, 3}, {1, 2, 3}};
  EXPECT_NE(std::string(test::expect_error([&] { lane.replay(*model.plan.find(Stage::AttnNorm, 0u), {&bad, 1}); })
                .what()).find("attn_norm@0"),
            std::string::npos);
}

}  // namespace
}  // namespace lockstep::engine
