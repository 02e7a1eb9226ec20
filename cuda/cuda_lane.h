#pragma once
// The `cuda` lane (eager): the model's Plan run node by node on one CUDA stream. Weights stay
// on the device in their stored GGML type (norm weights and biases as f32) and are decoded
// inside the matmul kernels; activations are f32 device buffers from a stream-ordered pool,
// each freed after the last node that reads it; K (after RoPE) and V are cached in f32 per
// layer. Every stage is a node boundary (scores and probabilities are materialised), so any
// cell can be captured, and capturing only copies, never changes a bit of the logits.
//
// Conventions beyond lane.h are the ref lane's (see ref_lane.h): logits for every token, -inf
// masked scores, replay() as a prefill at positions 0..n-1. Every CUDA call is checked: a
// failure (a kernel fault, out of memory, no device) throws lockstep::Error naming the call,
// and the process keeps running. No CUDA types in this header.
//
// Captures are asynchronous copies into page-locked host buffers, queued behind each captured
// node (the stream never waits for the host); the host waits once, at the end of the forward,
// and then fills the trace. The kernels are correct-first (see cuda/k_*.cu), not yet fast.

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "engine/faults.h"
#include "engine/lane.h"

namespace lockstep::cuda {

struct CudaLaneOptions {
  int device = 0;
  // Fill every node's output with NaN before its kernels run, so that an element a kernel
  // leaves unwritten shows (tests).
  bool poison_outputs = false;
  // A planted bug (engine/faults.h), applied at the nodes it targets and nowhere else, as the
  // cpu lane applies it (same arithmetic, so the two lanes carry the same bug).
  std::optional<engine::FaultSpec> fault;
};

class CudaLane final : public engine::Lane {
 public:
  // Throws lockstep::Error when the device does not exist or cannot be used.
  explicit CudaLane(CudaLaneOptions options = {});
  ~CudaLane() override;

  std::string name() const override { return "cuda"; }
  // Uploads every weight the plan references. Throws lockstep::Error naming the tensor for a
  // type without a kernel (every type with a codec has one) or a shape the plan does not fit,
  // and when the fault cannot be planted in this model (see resolve_fault).
  void load(const engine::Model& model) override;
  void reset() override;
  // `pos` may be below the cached length (the cache is cut back first); above it is an error.
  engine::Logits forward(std::span<const int32_t> tokens, uint32_t pos,
                         const engine::CapturePlan& capture, engine::Trace& trace) override;
  engine::Tensor replay(const engine::Node& node, std::span<const engine::Tensor> inputs) override;

  uint32_t cached_tokens() const { return cached_; }
  int device() const { return options_.device; }
  const std::optional<engine::FaultSpec>& fault() const { return options_.fault; }

  struct Impl;  // defined in cuda_lane.cu

 private:
  const engine::Model& model() const;

  CudaLaneOptions options_;
  const engine::Model* model_ = nullptr;
  uint32_t cached_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lockstep::cuda
