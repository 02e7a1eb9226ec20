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
// Captures are asynchronous copies into page-locked host buffers on a second stream, each
// started when its node is done (the compute stream waits neither for a copy nor for the
// host; a captured buffer is freed after both its readers and its copy); the host takes each
// cell as its copy lands (worker threads, for captures of 32 MiB or more) or all at the end.
// The kernels: cuda/k_matmul.cu and cuda/k_attention.cu say how they are fast.
// With last_logits_only() and no capture of the final norm or lm_head, those two run on the last
// token only (the matmul's per-output arithmetic does not depend on the token count, so the row
// is bit-identical to the full computation's).
//
// `cuda-graph` (CudaLaneOptions::graphs): the same lane and the same node code. Prefills (more
// than one token) run eagerly; a one-token decode step is captured once into a CUDA graph and
// the instantiated graph is relaunched for every later step. The step's token id, position and
// context length live in a small device buffer written before each launch, and every kernel
// that depends on them reads them there (RoPE, the KV-cache append, scores, softmax, weighted
// sum: launched for the cache capacity, threads past the context exit early). Activations of
// the step have fixed addresses; captured cells are copied inside the graph into fixed
// page-locked buffers ([heads, 1, ctx] cells as heads × capacity floats whose first heads·ctx
// are the cell). The graph is captured again only when something baked into it changes: the
// captured cells, last_logits_only, the KV cache's buffers (growth), the model. Logits and
// cells are bit-identical to the eager lane's.
//
// Layer streaming: when the weights exceed the budget (CudaLaneOptions::weight_budget_bytes, or
// free device memory less a margin for activations and cache), the layers that do not fit stay
// in page-locked host memory and are uploaded, layer by layer, into two device slots on a
// second stream, the upload of the next streamed layer overlapping the compute of the current
// one. The embedding, output norm and lm_head stay resident. Results are bit-identical to a
// resident run. While streaming, cuda-graph decodes eagerly (a graph would bake one slot
// assignment); load() says so on stderr.

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
  // The cuda-graph lane: one-token decode steps replayed from a captured CUDA graph.
  bool graphs = false;
  // Device bytes the weights may take; 0: the free device memory less a margin for activations
  // and the KV cache. Beyond it, layers are streamed from host memory (see above).
  uint64_t weight_budget_bytes = 0;
};

// Where load() put the weights (bytes as held on the device: matrices in their stored type,
// vectors as f32).
struct WeightPlacement {
  uint64_t total_bytes = 0;
  uint64_t non_layer_bytes = 0;  // embedding, output norm, lm_head: always resident
  uint64_t max_layer_bytes = 0;  // the largest layer: the size of a streaming slot
  uint64_t budget_bytes = 0;
  uint32_t layers = 0;
  uint32_t streamed_layers = 0;  // 0: everything resident
};

class CudaLane final : public engine::Lane {
 public:
  // Throws lockstep::Error when the device does not exist or cannot be used.
  explicit CudaLane(CudaLaneOptions options = {});
  ~CudaLane() override;

  std::string name() const override { return options_.graphs ? "cuda-graph" : "cuda"; }
  // Uploads every weight the plan references. Throws lockstep::Error naming the tensor for a
  // type without a kernel (every type with a codec has one) or a shape the plan does not fit,
  // when the fault cannot be planted in this model (see resolve_fault), and when the weight
  // budget cannot hold the non-layer weights plus two streaming slots.
  void load(const engine::Model& model) override;
  void reset() override;
  // `pos` may be below the cached length (the cache is cut back first); above it is an error.
  engine::Logits forward(std::span<const int32_t> tokens, uint32_t pos,
                         const engine::CapturePlan& capture, engine::Trace& trace) override;
  engine::Tensor replay(const engine::Node& node, std::span<const engine::Tensor> inputs) override;

  uint32_t cached_tokens() const { return cached_; }
  int device() const { return options_.device; }
  const std::optional<engine::FaultSpec>& fault() const { return options_.fault; }
  // cuda-graph: how many times a decode step has been captured into a graph since construction.
  uint64_t graph_captures() const;
  const WeightPlacement& placement() const;

  struct Impl;  // defined in cuda_lane.cu

 private:
  const engine::Model& model() const;

  CudaLaneOptions options_;
  const engine::Model* model_ = nullptr;
  uint32_t cached_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lockstep::cuda
