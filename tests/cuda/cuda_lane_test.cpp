// The cuda lane against the float64 oracle (ref): every captured cell of the shared models,
// greedy generation, capture and decode invariance, replay of every node, and every op of
// synthetic models of each family on random inputs with poisoned outputs.

#include "cuda/cuda_lane.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "engine/cpu_lane.h"
#include "engine/ref_lane.h"
#include "engine/synthetic_model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/lane_test_util.h"
#include "tests/engine/tiny_model.h"

namespace lockstep::cuda {
namespace {

using namespace engine;
using namespace engine::test_lanes;

bool bit_identical(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string model_file(const std::string& name) {
  return name == "stories260K" ? "stories260K.gguf" : "quant-ref/" + name + ".gguf";
}

// Whether the cuda lane computes a node with 8-bit activations: a matmul by Q4_K or Q6_K weights
// quantizes its input to the cpu lane's Q8_256 blocks (cuda/quant.cuh, kInt8), so it leaves the
// oracle by the activations' rounding (≈0.6% relative per element, as the cpu lane) and must
// agree with the cpu lane's replay of the node to f32 rounding instead.
// `all`: every matrix of the node is (a fused QKV may mix Q4_K with Q5_K, which the cpu lane
// quantizes its input for too, and the cuda lane does not).
bool int8_node(const Model& model, const Node& node, bool all = false) {
  if (node.op != Op::MatMul) return false;
  size_t int8 = 0;
  for (const WeightRef& ref : node.weights) {
    const TensorRef* w = model.weights.find(ref);
    int8 += w && (w->type == formats::GgmlType::Q4_K || w->type == formats::GgmlType::Q6_K);
  }
  return all ? int8 == node.weights.size() : int8 > 0;
}
bool int8_model(const Model& model) {
  return std::any_of(model.plan.nodes.begin(), model.plan.nodes.end(),
                     [&](const Node& node) { return int8_node(model, node); });
}
// The cpu lane's bounds for quantized activations (tests/engine/cpu_lane_test.cpp): one matmul
// node against the oracle (1.5e-2 there; the shared models' random weights measure up to
// 1.6e-2 here, as 5.5e-3..7.1e-3 on the synthetic ones), and every cell of a whole forward.
constexpr double kInt8NodeBound = 2e-2, kInt8CellBound = 5e-2;
// An int8 node's output against the cpu lane's on the same inputs: the same quantized
// activations and integer sums, only the f32 combination order differs.
void expect_int8_node_matches_cpu(CpuLane& cpu, const Node& node, const std::vector<Tensor>& inputs,
                                  const Tensor& got) {
  const Tensor want = cpu.replay(node, inputs);
  ASSERT_EQ(got.shape, want.shape) << node.index;
  EXPECT_LE(relative_rms(got.data, want.data), 1e-5) << "node " << node.index << " vs cpu";
}

// Every cell of a full-capture prefill within `bound` relative RMS of the oracle's; returns the
// oracle's trace.
Trace expect_cells_close(Lane& lane, RefLane& oracle, std::span<const int32_t> tokens,
                         double bound, const std::string& label) {
  Trace expected, got;
  prefill(oracle, tokens, CapturePlan::all(), expected);
  prefill(lane, tokens, CapturePlan::all(), got);
  EXPECT_EQ(got.size(), expected.size());
  double worst = 0.0;
  std::string worst_cell;
  for (const auto& [cell, t] : expected.cells()) {
    const Tensor* g = got.find(cell);
    EXPECT_NE(g, nullptr) << cell_name(cell);
    if (!g) continue;
    EXPECT_EQ(g->shape, t.shape) << cell_name(cell);
    const double e = relative_rms(g->data, t.data);
    EXPECT_LE(e, bound) << label << " " << cell_name(cell);
    if (!(e <= worst)) worst = e, worst_cell = cell_name(cell);
  }
  std::printf("[cuda vs ref] %-18s %3zu cells, worst relative RMS %.2e at %s\n", label.c_str(),
              expected.size(), worst, worst_cell.c_str());
  return expected;
}

// Replays every node on the oracle's captures (unstaged nodes' inputs replayed by the oracle)
// and checks each output against the oracle's capture.
void expect_replay_close(Lane& lane, RefLane& oracle, const Model& model,
                         std::span<const int32_t> tokens, const Trace& expected, double bound) {
  std::map<size_t, Tensor> unstaged;
  double worst = 0.0;
  CpuLane cpu;
  if (int8_model(model)) cpu.load(model);
  for (const Node& node : model.plan.nodes) {
    std::optional<std::vector<Tensor>> inputs =
        trace_inputs(model, node, tokens, expected, unstaged);
    ASSERT_TRUE(inputs) << "node " << node.index;
    Tensor got = lane.replay(node, *inputs);
    Tensor want =
        node.stage ? *expected.find({*node.stage, node.layer}) : oracle.replay(node, *inputs);
    ASSERT_EQ(got.shape, want.shape) << node.index;
    const double e = relative_rms(got.data, want.data);
    const bool int8 = int8_node(model, node);
    if (int8_node(model, node, true)) expect_int8_node_matches_cpu(cpu, node, *inputs, got);
    EXPECT_LE(e, int8 ? kInt8NodeBound : bound) << "node " << node.index << " " << op_name(node.op);
    worst = std::max(worst, e);
    if (!node.stage) unstaged[node.index] = std::move(want);
  }
  std::printf("[cuda replay vs ref] %zu nodes, worst relative RMS %.2e\n", model.plan.nodes.size(),
              worst);
}

// F32 weights: f32 accumulation against float64, within 1e-5 at every cell. The lane decodes
// quantized weights exactly, so quantized files stay as close (the bound there is looser only
// because their random weights amplify f32 rounding more) except where Q4_K or Q6_K matmuls
// round their activations to 8 bits: those files get the cpu lane's bounds, and each such
// node must match the cpu lane's.
TEST(CudaLaneVsRef, EveryStageOfTheSharedModelsMatchesTheOracle) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  CudaLane lane;
  for (const char* name :
       {"stories260K", "ref-llama-f32", "ref-qwen2-f32", "ref-llama-F16", "ref-llama-BF16",
        "ref-llama-Q8_0", "ref-llama-Q6_K", "ref-llama-Q5_K_M", "ref-llama-Q5_K_S",
        "ref-llama-Q5_1", "ref-llama-Q5_0", "ref-llama-Q4_K_M", "ref-llama-Q4_K_S",
        "ref-llama-Q4_1", "ref-llama-Q4_0", "ref-llama-Q3_K_S", "ref-llama-Q2_K",
        "ref-qwen2-Q8_0", "ref-qwen2-Q6_K", "ref-qwen2-Q4_K_M"}) {
    SCOPED_TRACE(name);
    const std::string file = model_file(name);
    const Model& model = shared_model(file);
    Reference ref = reference(name);
    RefLane oracle;
    oracle.load(model);
    lane.load(model);
    const bool f32 = std::string(name) == "stories260K" || std::string(name).ends_with("f32");
    Trace expected = expect_cells_close(
        lane, oracle, ref.tokens, f32 ? 1e-5 : (int8_model(model) ? kInt8CellBound : 1e-4), name);
    expect_replay_close(lane, oracle, model, ref.tokens, expected, f32 ? 1e-5 : 1e-4);
  }
}

TEST(CudaLaneVsRef, GreedyContinuationOfStoriesEqualsTheOracles) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Model& model = shared_model("stories260K.gguf");
  Reference ref = reference("stories260K");
  RefLane oracle;
  CudaLane lane;
  oracle.load(model);
  lane.load(model);
  const size_t count = ref.generated.size();
  std::vector<int32_t> ours = greedy(lane, ref.tokens, count);
  EXPECT_EQ(ours, greedy(oracle, ref.tokens, count));
  EXPECT_EQ(ours, ref.generated);  // llama.cpp's
}

// Capture only copies; a prefill equals the same tokens decoded one at a time (each output's
// summation order does not depend on the token count); replay on the lane's own captures
// reproduces them; last-logits-only is the last row.
TEST(CudaLaneCapture, CaptureDecodeAndReplayAreBitIdentical) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"stories260K", "ref-qwen2-Q4_K_M", "ref-llama-Q6_K"}) {
    SCOPED_TRACE(name);
    const std::string file = model_file(name);
    const Model& model = shared_model(file);
    Reference ref = reference(name);
    CudaLane lane;
    lane.load(model);
    Trace none, all;
    Logits plain = prefill(lane, ref.tokens, CapturePlan::none(), none);
    Logits captured = prefill(lane, ref.tokens, CapturePlan::all(), all);
    EXPECT_EQ(none.size(), 0u);
    EXPECT_TRUE(bit_identical(plain.values, captured.values));
    Trace some;
    Logits partial = prefill(lane, ref.tokens, CapturePlan::parse("attn_softmax,ffn_out@1;lm_head"), some);
    EXPECT_TRUE(bit_identical(plain.values, partial.values));

    // Prefill the first half, then decode the rest token by token.
    const size_t half = ref.tokens.size() / 2;
    Trace t;
    lane.reset();
    Logits first = lane.forward(std::span(ref.tokens).first(half), 0, CapturePlan::none(), t);
    EXPECT_TRUE(bit_identical(first.values, std::span(plain.values).first(half * plain.vocab)));
    for (size_t i = half; i < ref.tokens.size(); ++i) {
      Logits step = lane.forward(std::span(ref.tokens).subspan(i, 1), static_cast<uint32_t>(i),
                                 CapturePlan::none(), t);
      ASSERT_EQ(step.tokens, 1u);
      EXPECT_TRUE(bit_identical(step.values, plain.row(i))) << "position " << i;
    }
    // Back to an earlier position: the cache is cut there.
    Logits again = lane.forward(std::span(ref.tokens).subspan(half), static_cast<uint32_t>(half),
                                CapturePlan::none(), t);
    EXPECT_TRUE(bit_identical(again.values, std::span(plain.values).subspan(half * plain.vocab)));

    lane.set_last_logits_only(true);
    Logits last = prefill(lane, ref.tokens, CapturePlan::none(), t);
    lane.set_last_logits_only(false);
    EXPECT_EQ(last.tokens, 1u);
    EXPECT_TRUE(bit_identical(last.values, plain.last()));

    replay_all(lane, model, ref.tokens, all);
  }
}

// Odd shapes, op by op, as the cpu lane's test: every node of a one-layer synthetic model
// replayed by cuda (outputs poisoned with NaN first) and ref on the same random inputs, then a
// whole forward. GQA ratios 1, 4 and 7, head dims 64 and 128, NeoX and normal RoPE, biases,
// Q/K norm, LayerNorm + GELU, Granite's multipliers, and quantized weights.
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

class CudaLaneOps : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(CudaLaneOps, EveryNodeMatchesTheFloat64ReferenceOnRandomInputs) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const ShapeCase& c = GetParam();
  test::ScratchDir dir("cuda_ops_" + c.name);
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
  RefLane oracle;
  CudaLane lane(CudaLaneOptions{.device = 0, .poison_outputs = true});
  oracle.load(model);
  lane.load(model);

  const uint64_t n = c.tokens;
  std::mt19937_64 rng(11);
  std::set<Op> seen;
  double worst = 0.0;
  CpuLane cpu;
  cpu.load(model);
  for (const Node& node : model.plan.nodes) {
    std::vector<Tensor> inputs = random_replay_inputs(model, node, n, o.vocab, rng);
    Tensor want = oracle.replay(node, inputs);
    Tensor got = lane.replay(node, inputs);
    ASSERT_EQ(got.shape, want.shape) << node.index;
    const double e = relative_rms(got.data, want.data);  // NaN (an unwritten element) fails
    const bool int8 = int8_node(model, node);
    if (int8_node(model, node, true)) expect_int8_node_matches_cpu(cpu, node, inputs, got);
    EXPECT_LE(e, int8 ? kInt8NodeBound : 1e-5) << "node " << node.index << " " << op_name(node.op);
    worst = std::max(worst, e);
    seen.insert(node.op);
  }
  for (Op op : {Op::Embed, Op::MatMul, Op::Rope, Op::AttnScores, Op::Softmax, Op::AttnWeightedSum,
                Op::Add, c.family == "starcoder2" ? Op::LayerNorm : Op::RmsNorm})
    EXPECT_TRUE(seen.count(op)) << op_name(op);
  std::printf("[cuda vs ref, one node] %-18s worst relative RMS %.2e\n", c.name.c_str(), worst);

  std::vector<int32_t> tokens;
  for (uint64_t t = 0; t < n; ++t) tokens.push_back(static_cast<int32_t>(rng() % o.vocab));
  expect_cells_close(lane, oracle, tokens, int8_model(model) ? kInt8CellBound : 1e-5, c.name);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaLaneOps,
    ::testing::Values(ShapeCase{"gqa1_hd64", "llama", 448, 7, 7, 1216, QuantMix::F32, 13},
                      ShapeCase{"gqa4_hd128", "qwen2", 512, 4, 1, 1376, QuantMix::F32, 11},
                      ShapeCase{"gqa7_hd64", "qwen2", 896, 14, 2, 1248, QuantMix::F32, 9},
                      ShapeCase{"gqa7_hd128_q4km", "qwen2", 1792, 14, 2, 2304, QuantMix::Q4_K_M, 7},
                      ShapeCase{"gqa4_hd64_q8_0", "llama", 512, 8, 2, 1376, QuantMix::Q8_0, 5},
                      ShapeCase{"gqa1_hd128_q5_1", "llama", 640, 5, 5, 992, QuantMix::Q5_1, 6},
                      ShapeCase{"gqa2_hd64_f16", "qwen3", 384, 6, 3, 800, QuantMix::F16, 7},
                      ShapeCase{"granite_bf16", "granite", 512, 8, 2, 1024, QuantMix::BF16, 6},
                      ShapeCase{"starcoder2_q6k", "starcoder2", 768, 6, 2, 1536, QuantMix::Q6_K, 5}),
    [](const ::testing::TestParamInfo<ShapeCase>& info) { return info.param.name; });

// The families' tiny models (scaled RoPE with rope_freqs, StarCoder2 with a sliding window of 3):
// cuda runs what ref runs, decode included, and its replay reproduces its captures.
TEST(CudaLaneTiny, EveryFamilyAgreesWithRef) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  for (auto& [name, spec] : test::tiny_family_specs()) {
    SCOPED_TRACE(name);
    test::ScratchDir dir("cuda_tiny_" + name);
    Model model = open_model(test::write_tiny_gguf(dir.path / "m.gguf", spec), registry());
    RefLane oracle;
    CudaLane lane(CudaLaneOptions{.device = 0, .poison_outputs = true});
    oracle.load(model);
    lane.load(model);
    std::vector<int32_t> tokens{1, 5, 7, 3, 39, 0};
    expect_cells_close(lane, oracle, tokens, 1e-5, name);
    Trace got;
    Logits logits = prefill(lane, tokens, CapturePlan::all(), got);
    EXPECT_TRUE(std::all_of(logits.values.begin(), logits.values.end(),
                            [](float v) { return std::isfinite(v); }));
    replay_all(lane, model, tokens, got);
    // Decode past the sliding window matches the oracle's decode.
    Trace t;
    oracle.forward(std::span(tokens).first(2), 0, CapturePlan::none(), t);
    lane.forward(std::span(tokens).first(2), 0, CapturePlan::none(), t);
    for (size_t i = 2; i < tokens.size(); ++i) {
      Logits a = oracle.forward(std::span(tokens).subspan(i, 1), static_cast<uint32_t>(i),
                                CapturePlan::none(), t);
      Logits b = lane.forward(std::span(tokens).subspan(i, 1), static_cast<uint32_t>(i),
                              CapturePlan::none(), t);
      EXPECT_LE(relative_rms(b.values, a.values), 1e-5) << "position " << i;
    }
  }
}

TEST(CudaLaneErrors, BadCallsFailTheLaneNotTheProcess) {
  // A device that does not exist: a lockstep::Error, with or without a GPU.
  Error no_device = test::expect_error([] { CudaLane lane(CudaLaneOptions{.device = 999}); });
  EXPECT_NE(std::string(no_device.what()).find("no CUDA device"), std::string::npos);
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  CudaLane lane;
  Trace trace;
  int32_t tok = 1;
  EXPECT_NE(std::string(test::expect_error([&] {
                          lane.forward({&tok, 1}, 0, CapturePlan::none(), trace);
                        }).what())
                .find("no model"),
            std::string::npos);
  test::ScratchDir dir("cuda_errors");
  Model model = open_model(test::write_tiny_gguf(dir.path / "m.gguf", {}), registry());
  lane.load(model);
  test::expect_error([&] { lane.forward({}, 0, CapturePlan::none(), trace); });
  test::expect_error([&] { lane.forward({&tok, 1}, 3, CapturePlan::none(), trace); });
  int32_t out_of_vocab = 40;
  Error e = test::expect_error([&] { lane.forward({&out_of_vocab, 1}, 0, CapturePlan::none(), trace); });
  EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  // The lane still works after each failure.
  Logits ok = lane.forward({&tok, 1}, 0, CapturePlan::none(), trace);
  EXPECT_EQ(ok.tokens, 1u);
}

}  // namespace
}  // namespace lockstep::cuda

namespace lockstep::cuda {
namespace {

// Figures, not assertions (run with --gtest_also_run_disabled_tests on the GPU machine): a
// Qwen2.5-0.5B-shaped Q4_K_M model cut to 8 layers and a 32k vocabulary, timed after a warm-up.
TEST(DISABLED_CudaLaneSpeed, PrefillDecodeAndCaptureOverhead) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  test::ScratchDir dir("cuda_speed");
  SyntheticModelOptions o;
  o.family = "qwen2";
  o.hidden = 896;
  o.heads = 14;
  o.kv_heads = 2;
  o.ffn = 4864;
  o.layers = 8;
  o.vocab = 32000;
  o.mix = QuantMix::Q4_K_M;
  o.seed = 1;
  o.threads = 16;
  o.out = dir.path / "m.gguf";
  write_synthetic_model(o, registry());
  Model model = open_model(o.out, registry());
  CudaLane lane;
  lane.load(model);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 128; ++i) prompt.push_back((i * 7919) % 32000);
  auto seconds = [](auto f) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Medians of 5 after a warm-up of each path (the first full capture page-locks its buffers).
  auto median = [&](auto f) {
    f();
    std::vector<double> s;
    for (int i = 0; i < 5; ++i) s.push_back(seconds(f));
    std::sort(s.begin(), s.end());
    return s[2];
  };
  Trace t;
  const double none = median([&] { prefill(lane, prompt, CapturePlan::none(), t); });
  const double all = median([&] {
    Trace a;
    prefill(lane, prompt, CapturePlan::all(), a);
  });
  const int steps = 64;
  const double decode = median([&] {
    prefill(lane, std::span(prompt).first(1), CapturePlan::none(), t);
    for (int i = 0; i < steps; ++i)
      lane.forward(std::span(prompt).subspan(i + 1, 1), static_cast<uint32_t>(i + 1),
                   CapturePlan::none(), t);
  });
  CudaLane graph(CudaLaneOptions{.graphs = true});
  graph.load(model);
  const double graph_decode = median([&] {
    prefill(graph, std::span(prompt).first(1), CapturePlan::none(), t);
    for (int i = 0; i < steps; ++i)
      graph.forward(std::span(prompt).subspan(i + 1, 1), static_cast<uint32_t>(i + 1),
                    CapturePlan::none(), t);
  });
  // Half of the layers streamed from host memory.
  const WeightPlacement& p = lane.placement();
  CudaLane streamed(CudaLaneOptions{
      .weight_budget_bytes = p.non_layer_bytes + (2 + p.layers / 2) * p.max_layer_bytes});
  streamed.load(model);
  const double streamed_prefill =
      median([&] { prefill(streamed, prompt, CapturePlan::none(), t); });
  const double streamed_decode = median([&] {
    prefill(streamed, std::span(prompt).first(1), CapturePlan::none(), t);
    for (int i = 0; i < steps; ++i)
      streamed.forward(std::span(prompt).subspan(i + 1, 1), static_cast<uint32_t>(i + 1),
                       CapturePlan::none(), t);
  });
  std::printf("[cuda speed] %u of %u layers streamed: prefill 128: %.1f ms; decode: %.0f tok/s\n",
              streamed.placement().streamed_layers, p.layers, 1e3 * streamed_prefill,
              (steps + 1) / streamed_decode);
  lane.set_last_logits_only(true);
  const double last_only = median([&] { prefill(lane, prompt, CapturePlan::none(), t); });
  std::printf("[cuda speed] prefill 128: %.1f ms (%.0f tok/s), last logits only %.1f ms; all "
              "cells captured: %.1f ms (%.2fx); decode: %.0f tok/s, cuda-graph %.0f tok/s\n",
              1e3 * none, 128 / none, 1e3 * last_only, 1e3 * all, all / none,
              (steps + 1) / decode, (steps + 1) / graph_decode);
}

}  // namespace
}  // namespace lockstep::cuda
