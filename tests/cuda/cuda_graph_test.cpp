// The cuda-graph lane and layer streaming against the eager, resident cuda lane: the same node
// code, so logits and captured cells must be bit-identical, decode step by step, across cache
// growth, plan changes, reset, planted faults and any weight budget.

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "cuda/cuda_lane.h"
#include "engine/faults.h"
#include "engine/synthetic_model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/lane_test_util.h"
#include "tests/engine/tiny_model.h"

namespace lockstep::cuda {
namespace {

using namespace engine;
using namespace engine::test_lanes;

std::string model_file(const std::string& name) {
  return name == "stories260K" ? "stories260K.gguf" : "quant-ref/" + name + ".gguf";
}

// The reference prompt and llama.cpp's continuation: 69 and 80 tokens, past the KV cache's
// first capacity of 64.
std::vector<int32_t> sequence(const std::string& name) {
  Reference ref = reference(name);
  std::vector<int32_t> s = ref.tokens;
  s.insert(s.end(), ref.generated.begin(), ref.generated.end());
  return s;
}

void expect_bit_identical(std::span<const float> a, std::span<const float> b,
                          const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

void expect_same_trace(const Trace& got, const Trace& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (const auto& [cell, t] : want.cells()) {
    const Tensor* g = got.find(cell);
    ASSERT_NE(g, nullptr) << what << " " << cell_name(cell);
    EXPECT_EQ(g->shape, t.shape) << what << " " << cell_name(cell);
    expect_bit_identical(g->data, t.data, what + " " + cell_name(cell));
  }
}

// One forward on both lanes with the same plan: logits and cells bit-identical.
Logits expect_same_forward(Lane& got_lane, Lane& want_lane, std::span<const int32_t> tokens,
                           uint32_t pos, const CapturePlan& plan, const std::string& what) {
  Trace got, want;
  Logits a = got_lane.forward(tokens, pos, plan, got);
  Logits b = want_lane.forward(tokens, pos, plan, want);
  EXPECT_EQ(a.tokens, b.tokens) << what;
  expect_bit_identical(a.values, b.values, what + " logits");
  expect_same_trace(got, want, what);
  return a;
}

// Prefill half, then decode the rest one token per forward, on both lanes.
void prefill_then_decode(Lane& got, Lane& want, std::span<const int32_t> seq,
                         const CapturePlan& plan, const std::string& label,
                         const std::function<void(size_t)>& after_step = {}) {
  const size_t half = seq.size() / 2;
  got.reset();
  want.reset();
  expect_same_forward(got, want, seq.first(half), 0, plan, label + " prefill");
  for (size_t i = half; i < seq.size(); ++i) {
    expect_same_forward(got, want, seq.subspan(i, 1), static_cast<uint32_t>(i), plan,
                        label + " decode at " + std::to_string(i));
    if (after_step) after_step(i);
  }
}

TEST(CudaGraphLane, DecodeFromTheGraphIsBitIdenticalToTheEagerLane) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"stories260K", "ref-qwen2-Q4_K_M"}) {
    SCOPED_TRACE(name);
    const std::string file = model_file(name);
    const Model& model = shared_model(file);
    const std::vector<int32_t> seq = sequence(name);
    ASSERT_GT(seq.size(), 64u);
    const size_t half = seq.size() / 2;
    CudaLane eager, graph(CudaLaneOptions{.graphs = true});
    EXPECT_EQ(graph.name(), "cuda-graph");
    eager.load(model);
    graph.load(model);
    EXPECT_EQ(graph.graph_captures(), 0u);

    // No capture: one graph until the cache outgrows its first capacity (64 positions), then
    // one more over the moved buffers.
    prefill_then_decode(graph, eager, seq, CapturePlan::none(), "none", [&](size_t i) {
      EXPECT_EQ(graph.graph_captures(), i + 1 <= 64 ? 1u : 2u) << "after decoding position " << i;
    });
    ASSERT_GE(64 - half, 8u);  // at least 8 steps on the first graph

    // Every cell, then some: each plan is captured once, on the grown cache.
    prefill_then_decode(graph, eager, seq, CapturePlan::all(), "all",
                        [&](size_t) { EXPECT_EQ(graph.graph_captures(), 3u); });
    const CapturePlan partial = CapturePlan::parse("attn_softmax,ffn_out@1;lm_head");
    prefill_then_decode(graph, eager, seq, partial, "partial",
                        [&](size_t) { EXPECT_EQ(graph.graph_captures(), 4u); });
    // reset() keeps the graph: positions are read on the device.
    prefill_then_decode(graph, eager, seq, partial, "partial after reset",
                        [&](size_t) { EXPECT_EQ(graph.graph_captures(), 4u); });

    // Back to an earlier position, decode again: the cache is cut there, the graph kept.
    Trace t;
    eager.forward(std::span(seq).first(half), 0, CapturePlan::none(), t);
    graph.forward(std::span(seq).first(half), 0, CapturePlan::none(), t);
    expect_same_forward(graph, eager, std::span(seq).subspan(half, 1), static_cast<uint32_t>(half),
                        CapturePlan::none(), "decode again");
    expect_same_forward(graph, eager, std::span(seq).subspan(3, 1), 3, CapturePlan::none(),
                        "decode at an earlier position");
    EXPECT_EQ(graph.graph_captures(), 5u);  // plan none again

    // last_logits_only is baked in: one more capture, same logits.
    graph.set_last_logits_only(true);
    eager.set_last_logits_only(true);
    prefill_then_decode(graph, eager, seq, CapturePlan::none(), "last logits only");
    EXPECT_EQ(graph.graph_captures(), 6u);
  }
}

// With last_logits_only, the final norm and lm_head run on the last token unless captured; the
// row is the full computation's, and a captured final_norm still holds every token.
TEST(CudaGraphLane, LastLogitsOnlyIsTheFullComputationsLastRow) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"stories260K", "ref-qwen2-Q4_K_M"}) {
    SCOPED_TRACE(name);
    const std::string file = model_file(name);
    const Model& model = shared_model(file);
    const std::vector<int32_t> seq = sequence(name);
    for (bool graphs : {false, true}) {
      CudaLane lane(CudaLaneOptions{.graphs = graphs});
      lane.load(model);
      Trace t;
      const Logits full = prefill(lane, seq, CapturePlan::all(), t);
      lane.set_last_logits_only(true);
      Trace none, norm;
      const Logits last = prefill(lane, seq, CapturePlan::none(), none);
      const Logits with_norm = prefill(lane, seq, CapturePlan::parse("final_norm"), norm);
      ASSERT_EQ(last.tokens, 1u);
      expect_bit_identical(last.values, full.last(), "last row");
      expect_bit_identical(with_norm.values, full.last(), "last row, final_norm captured");
      const Tensor* fn = norm.find({Stage::FinalNorm, std::nullopt});
      ASSERT_NE(fn, nullptr);
      expect_bit_identical(fn->data, t.find({Stage::FinalNorm, std::nullopt})->data, "final_norm");
    }
  }
}

// The families' tiny models (scaled RoPE with rope_freqs, StarCoder2's sliding window of 3,
// Qwen3's Q/K norm), outputs poisoned with NaN: the graph's decode equals the eager lane's.
TEST(CudaGraphLane, TinyFamiliesDecodeAsTheEagerLane) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  for (auto& [name, spec] : test::tiny_family_specs()) {
    SCOPED_TRACE(name);
    test::ScratchDir dir("cuda_graph_tiny_" + name);
    Model model = open_model(test::write_tiny_gguf(dir.path / "m.gguf", spec), registry());
    CudaLane eager(CudaLaneOptions{.device = 0, .poison_outputs = true});
    CudaLane graph(CudaLaneOptions{.device = 0, .poison_outputs = true, .graphs = true});
    eager.load(model);
    graph.load(model);
    const std::vector<int32_t> seq{1, 5, 7, 3, 39, 0, 12, 8, 30, 2, 17, 4};
    prefill_then_decode(graph, eager, seq, CapturePlan::all(), name);
    EXPECT_EQ(graph.graph_captures(), 1u);
  }
}

// A synthetic Qwen2 (4 heads over 2 KV heads, 300-token vocabulary) written into dir.
Model small_qwen2(const test::ScratchDir& dir, uint64_t hidden, uint64_t layers, uint64_t ffn,
                  QuantMix mix, uint64_t seed) {
  SyntheticModelOptions o;
  o.family = "qwen2";
  o.hidden = hidden;
  o.layers = layers;
  o.heads = 4;
  o.kv_heads = 2;
  o.ffn = ffn;
  o.vocab = 300;
  o.mix = mix;
  o.seed = seed;
  o.out = dir.path / "m.gguf";
  write_synthetic_model(o, registry());
  return open_model(o.out, registry());
}

Model faults_model(const test::ScratchDir& dir) {
  return small_qwen2(dir, 64, 2, 128, QuantMix::F32, 3);
}

// Every planted fault (and gemv_transposed on the lm_head alone) corrupts cuda-graph's decode
// exactly as the eager lane's: same logits, same cells, bit for bit.
TEST(CudaGraphLane, FaultsAreCarriedBitForBit) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  test::ScratchDir dir("cuda_graph_faults");
  const Model model = faults_model(dir);
  const std::vector<int32_t> seq{1, 17, 42, 99, 7, 250, 3, 11, 5, 64, 128, 2, 9};
  std::vector<FaultSpec> specs{FaultSpec::parse("gemv_transposed@lm_head")};
  for (const FaultInfo& info : fault_registry()) specs.push_back(FaultSpec::defaults(info.kind));
  CudaLane clean(CudaLaneOptions{.graphs = true});
  clean.load(model);
  Trace clean_trace;
  const Logits clean_logits = prefill(clean, seq, CapturePlan::none(), clean_trace);
  for (const FaultSpec& spec : specs) {
    SCOPED_TRACE(spec.str());
    CudaLane eager(CudaLaneOptions{.fault = spec});
    CudaLane graph(CudaLaneOptions{.fault = spec, .graphs = true});
    eager.load(model);
    graph.load(model);
    prefill_then_decode(graph, eager, seq, CapturePlan::all(), spec.str());
    prefill_then_decode(graph, eager, seq, CapturePlan::none(), spec.str() + " no capture");
    EXPECT_EQ(graph.graph_captures(), 2u);
    // The fault does something in this model (so the comparison above could fail).
    Trace t;
    const Logits faulted = prefill(graph, seq, CapturePlan::none(), t);
    EXPECT_NE(std::memcmp(faulted.values.data(), clean_logits.values.data(),
                          faulted.values.size() * sizeof(float)),
              0);
  }
}

// A budget that streams at least half of the layers (one resident, the rest streamed): logits
// and cells bit-identical to the resident lane's, prefill and decode, eager and cuda-graph;
// replay of a streamed layer's node too. A budget below the non-layer weights plus two slots is
// refused with a clear error.
void expect_streaming_bit_identical(const Model& model, std::span<const int32_t> seq) {
  CudaLane resident;
  resident.load(model);
  const WeightPlacement p = resident.placement();
  EXPECT_EQ(p.streamed_layers, 0u);
  EXPECT_EQ(p.layers, model.config.layers);
  ASSERT_GT(p.max_layer_bytes, 0u);
  const uint64_t budget = p.non_layer_bytes + 3 * p.max_layer_bytes + p.max_layer_bytes / 2;
  ASSERT_LT(budget, p.total_bytes);
  for (bool graphs : {false, true}) {
    SCOPED_TRACE(graphs ? "cuda-graph" : "cuda");
    CudaLane streamed(CudaLaneOptions{.graphs = graphs, .weight_budget_bytes = budget});
    streamed.load(model);
    const WeightPlacement& q = streamed.placement();
    EXPECT_GE(2 * q.streamed_layers, q.layers);
    EXPECT_LT(q.streamed_layers, q.layers);  // the first layer fits
    EXPECT_EQ(q.budget_bytes, budget);
    EXPECT_EQ(q.total_bytes, p.total_bytes);
    Trace a, b;
    const Logits got = prefill(streamed, seq, CapturePlan::all(), a);
    const Logits want = prefill(resident, seq, CapturePlan::all(), b);
    expect_bit_identical(got.values, want.values, "prefill logits");
    expect_same_trace(a, b, "prefill");
    prefill_then_decode(streamed, resident, seq, CapturePlan::all(), "decode");
    prefill_then_decode(streamed, resident, seq, CapturePlan::none(), "decode, no capture");
    EXPECT_EQ(streamed.graph_captures(), 0u);  // streaming decodes eagerly
    // Replay of every layer node (a streamed layer is uploaded for the one node) on the
    // resident lane's captures.
    std::map<size_t, Tensor> unstaged;
    for (const Node& node : model.plan.nodes) {
      if (!node.stage || !node.layer || node.op == Op::Embed) continue;
      std::optional<std::vector<Tensor>> inputs = trace_inputs(model, node, seq, b, unstaged);
      if (!inputs) continue;
      expect_bit_identical(streamed.replay(node, *inputs).data, resident.replay(node, *inputs).data,
                           "replay of node " + std::to_string(node.index));
    }
  }
  for (uint64_t too_small : {p.non_layer_bytes / 2, p.non_layer_bytes + p.max_layer_bytes}) {
    CudaLane lane(CudaLaneOptions{.weight_budget_bytes = too_small});
    Error e = test::expect_error([&] { lane.load(model); });
    EXPECT_NE(std::string(e.what()).find("GPU weight budget"), std::string::npos) << e.what();
    // A failed load leaves no model: a forward fails cleanly.
    Trace t;
    test::expect_error([&] { lane.forward(seq.first(1), 0, CapturePlan::none(), t); });
  }
}

TEST(CudaLaneStreaming, StoriesStreamedIsBitIdenticalToResident) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  expect_streaming_bit_identical(shared_model("stories260K.gguf"), sequence("stories260K"));
}

// The shared quantized models have two layers, too few to stream (two slots hold as much as
// both layers), so a six-layer Q4_K_M model (Q6_K and Q4_K matrices) stands in.
TEST(CudaLaneStreaming, QuantizedModelStreamedIsBitIdenticalToResident) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  test::ScratchDir dir("cuda_streaming_q4km");
  const Model model = small_qwen2(dir, 256, 6, 512, QuantMix::Q4_K_M, 5);
  std::vector<int32_t> seq;
  for (int i = 0; i < 40; ++i) seq.push_back((i * 37 + 11) % 300);
  expect_streaming_bit_identical(model, seq);
}

}  // namespace
}  // namespace lockstep::cuda
