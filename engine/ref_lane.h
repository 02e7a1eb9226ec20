#pragma once
// The `ref` lane: the float64 oracle. Weights are dequantized once at load (exactly ggml's
// to_float values, kept as f32 and widened to double where used). Within a node everything is
// double and every reduction (dot products, norms, softmax sums, attention sums) accumulates
// in double, in element order. It walks the model's Plan node by node and is written to be
// obviously correct, not fast. Each node's output is then rounded to f32, the value a capture
// holds, so that replay() on captured inputs reproduces a forward's captured output bit for
// bit (the rounding costs ~6e-8 relative per node, far below any divergence worth finding).
//
// Conventions beyond lane.h:
//   - forward() returns logits for every token it was given: [tokens, vocab].
//   - Masked attention scores (future keys, keys outside a sliding window) are -inf, as in
//     llama.cpp's masked KQ; their probabilities are exactly 0.
//   - replay() treats its inputs as tokens at positions 0..n-1 (a prefill from position 0),
//     so Rope rotates by those positions and attention covers exactly the given keys.

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/lane.h"

namespace lockstep::engine {

// Bytes RefLane::load holds for `model`: every distinct weight tensor the plan reads, as f32.
uint64_t ref_lane_weight_bytes(const Model& model);
// Memory this process may still take: LOCKSTEP_MEMORY_AVAILABLE (bytes) when set, else
// /proc/meminfo's MemAvailable; nullopt when neither can be read.
std::optional<uint64_t> available_memory_bytes();
// "" when the ref lane's weights of `model` fit the available memory (or it is unknown), else
// why not, in one sentence naming both sizes.
std::string ref_lane_memory_problem(const Model& model);

class RefLane final : public Lane {
 public:
  std::string name() const override { return "ref"; }
  // Dequantizes every weight the plan references. Throws lockstep::Error for RoPE scaling the
  // lane does not compute (anything but linear and llama3), a weight the plan needs but the
  // model did not bind, or weights larger than the available memory
  // (ref_lane_memory_problem), before allocating any.
  void load(const Model& model) override;
  void reset() override;
  // `pos` may be below the cached length (the cache is cut back to `pos` first, so a run can
  // restart from an earlier position); above it is an error, as is an out-of-range token id.
  Logits forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                 Trace& trace) override;
  Tensor replay(const Node& node, std::span<const Tensor> inputs) override;

  uint32_t cached_tokens() const { return cached_; }

 private:
  // One layer's KV cache, after RoPE for K.
  struct LayerCache {
    std::vector<double> k;  // [ctx, kv_dim]
    std::vector<double> v;  // [ctx, kv_dim]
  };

  const Model& model() const;
  const std::vector<float>& weight(const WeightRef& ref) const;
  uint64_t input_width(const Node& node, size_t i) const;
  // Runs one node on its inputs (each [tokens, width], attention probabilities/scores
  // [heads, tokens, ctx]) for `n` tokens at positions pos..pos+n-1. `k_ctx`/`v_ctx` are the
  // keys and values of the whole context [ctx, kv_dim] for attention nodes; `ids` feeds Embed.
  std::vector<double> run_node(const Node& node, std::span<const std::vector<double>* const> in,
                               std::span<const int32_t> ids, uint64_t n, uint32_t pos,
                               std::span<const double> k_ctx, std::span<const double> v_ctx) const;

  const Model* model_ = nullptr;
  // Dequantized tensors by the address of their bytes in the file (tied embeddings share one).
  std::map<const std::byte*, std::vector<float>> dequantized_;
  std::vector<double> rope_inv_freq_;  // [rope_dims / 2]  radians per position, per pair
  std::vector<size_t> last_use_;       // per node: the last node reading its output
  std::vector<LayerCache> cache_;      // [layers]
  uint32_t cached_ = 0;                // tokens in the cache
};

}  // namespace lockstep::engine
