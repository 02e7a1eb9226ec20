#pragma once
// The `cpu` lane: a real CPU engine. f32 activations; weights stay in their stored GGML type
// and are dotted by the ISA-specific kernels of engine/cpu_kernels.h (activations quantized to
// 8-bit blocks for quantized weights, as llama.cpp does); matmuls, attention and row-wise ops
// are split over a thread team (OpenMP); K (after RoPE) and V are cached in f32 per layer.
// It walks the model's Plan node by node; capturing copies a node's output and never changes
// how it is computed, so logits are bit-identical with and without capture.
//
// Conventions beyond lane.h are the ref lane's (see ref_lane.h): logits for every token, -inf
// masked scores, replay() as a prefill at positions 0..n-1. Results do not depend on the thread
// count or on how tokens are batched (a prefill equals the same tokens decoded one by one).

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/cpu_kernels.h"
#include "engine/faults.h"
#include "engine/lane.h"

namespace lockstep::engine {

struct CpuLaneOptions {
  unsigned threads = 0;  // 0: one per hardware thread
  // Kernel ISA; unset: cpu::best_isa() at load.
  std::optional<cpu::Isa> isa;
  // A planted bug (engine/faults.h), applied at the nodes it targets and nowhere else, in
  // forward() (fused attention included) and replay(). Checked against the model at load().
  std::optional<FaultSpec> fault;
};

class CpuLane final : public Lane {
 public:
  explicit CpuLane(CpuLaneOptions options = {});
  ~CpuLane() override;

  std::string name() const override { return "cpu"; }
  // Checks every weight the plan references has a kernel and the shape the plan expects, and
  // precomputes RoPE tables. Throws lockstep::Error naming the weight otherwise, or when the
  // fault cannot be planted in this model (see resolve_fault).
  void load(const Model& model) override;
  void reset() override;
  // `pos` may be below the cached length (the cache is cut back first); above it is an error.
  Logits forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                 Trace& trace) override;
  Tensor replay(const Node& node, std::span<const Tensor> inputs) override;

  uint32_t cached_tokens() const { return cached_; }
  unsigned threads() const { return threads_; }
  cpu::Isa isa() const { return isa_; }
  const std::optional<FaultSpec>& fault() const { return fault_; }

  struct Impl;  // the lane's state, defined in cpu_lane.cpp

 private:
  const Model& model() const;

  unsigned threads_ = 1;
  cpu::Isa isa_ = cpu::Isa::Scalar;
  std::optional<FaultSpec> fault_;
  const Model* model_ = nullptr;
  uint32_t cached_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lockstep::engine
