// Faults planted in the cuda lane: each one corrupts what the cpu lane's copy of the same fault
// corrupts, with the same arithmetic (so `bisect --lanes cpu,cuda` with a fault on either side
// names the same cell), and leaves every other cell alone.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "cuda/cuda_lane.h"
#include "engine/cpu_lane.h"
#include "engine/faults.h"
#include "engine/synthetic_model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/engine/lane_test_util.h"

namespace lockstep::cuda {
namespace {

using namespace engine;
using namespace engine::test_lanes;

const std::vector<int32_t> kPrompt{1, 17, 42, 99, 7, 250, 3};

// Two layers of Qwen2 (QKV bias, NeoX RoPE, SiLU-gated MLP, 4 query heads over 2 KV heads): a
// model every fault can be planted in. F32 weights, so cpu and cuda both compute in plain f32.
Model synthetic(const test::ScratchDir& dir, QuantMix mix, uint64_t hidden, uint64_t ffn) {
  SyntheticModelOptions o;
  o.family = "qwen2";
  o.hidden = hidden;
  o.layers = 2;
  o.heads = 4;
  o.kv_heads = 2;
  o.ffn = ffn;
  o.vocab = 300;
  o.mix = mix;
  o.seed = 3;
  o.out = dir.path / ("m-" + std::string(quant_mix_name(mix)) + ".gguf");
  write_synthetic_model(o, registry());
  return open_model(o.out, registry());
}

Trace run(Lane& lane, std::span<const int32_t> tokens) {
  Trace t;
  prefill(lane, tokens, CapturePlan::all(), t);
  return t;
}

TEST(CudaLaneFaults, EveryFaultCorruptsWhatTheCpuLanesCopyCorrupts) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  test::ScratchDir dir("cuda_faults");
  const Model model = synthetic(dir, QuantMix::F32, 64, 128);
  CudaLane clean_lane;
  clean_lane.load(model);
  const Trace clean = run(clean_lane, kPrompt);
  for (const FaultInfo& info : fault_registry()) {
    SCOPED_TRACE(std::string(info.name));
    const FaultSpec spec = FaultSpec::defaults(info.kind);
    CudaLane lane(CudaLaneOptions{.device = 0, .poison_outputs = false, .fault = spec});
    CpuLane cpu(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
    lane.load(model);
    cpu.load(model);
    const Trace got = run(lane, kPrompt), want = run(cpu, kPrompt);
    // fp16 rounding of exp() may land one fp16 step apart where expf and std::exp differ by
    // an ulp; everything else is f32 arithmetic in both lanes.
    const double bound = info.kind == FaultKind::SoftmaxNoMax ? 1e-3 : 1e-5;
    double worst = 0.0;
    for (const auto& [cell, t] : want.cells()) {
      const double e = relative_rms(got.find(cell)->data, t.data);
      EXPECT_LE(e, bound) << cell_name(cell);
      worst = std::max(worst, e);
    }
    // The first cell the fault corrupts is where the lane leaves the clean run.
    const Cell target = spec.first_cell();
    std::optional<Cell> first;
    for (const auto& [cell, t] : clean.cells()) {
      if (relative_rms(got.find(cell)->data, t.data) > 1e-6) {
        first = cell;
        break;
      }
    }
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(cell_name(*first), cell_name(target));
    std::printf("[cuda fault] %-20s first diverging cell %-16s cuda vs cpu (both faulted): worst "
                "relative RMS %.2e\n",
                std::string(info.name).c_str(), cell_name(*first).c_str(), worst);
    if (info.kind == FaultKind::PartialWrite) {
      const Tensor& t = *got.find(target);
      const uint64_t width = t.shape[1], keep = width / 2;
      for (uint64_t r = 0; r < t.shape[0]; ++r)
        for (uint64_t i = keep; i < width; ++i) ASSERT_EQ(t.data[r * width + i], 0.0f);
    }
  }
}

// gemv_transposed in the Q6_K LM head of a Q4_K_M model: the lm_head is the first cell off, with
// a cosine near 0 (the layout class), and the replay of that node alone shows it.
TEST(CudaLaneFaults, GemvTransposedInTheQ6KLmHead) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  test::ScratchDir dir("cuda_faults_q6k");
  const Model model = synthetic(dir, QuantMix::Q4_K_M, 256, 512);
  ASSERT_EQ(model.weights.output->type, formats::GgmlType::Q6_K);
  CudaLane clean_lane, lane(CudaLaneOptions{.fault = FaultSpec::parse("gemv_transposed")});
  clean_lane.load(model);
  lane.load(model);
  const Trace clean = run(clean_lane, kPrompt), got = run(lane, kPrompt);
  for (const auto& [cell, t] : clean.cells()) {
    const double e = relative_rms(got.find(cell)->data, t.data);
    if (cell.stage == Stage::LmHead) {
      EXPECT_GT(e, 0.5);
      const std::vector<float>& a = t.data;
      const std::vector<float>& b = got.find(cell)->data;
      double ab = 0, aa = 0, bb = 0;
      for (size_t i = 0; i < a.size(); ++i) ab += a[i] * b[i], aa += a[i] * a[i], bb += b[i] * b[i];
      const double cosine = ab / std::sqrt(aa * bb);
      EXPECT_LT(std::fabs(cosine), 0.2);
      std::printf("[cuda fault] gemv_transposed on the Q6_K lm_head: relative RMS %.2f, cosine %.3f\n",
                  e, cosine);
    } else {
      EXPECT_EQ(e, 0.0) << cell_name(cell);
    }
  }
}

}  // namespace
}  // namespace lockstep::cuda
