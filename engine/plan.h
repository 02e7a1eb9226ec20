#pragma once
// The forward plan: the ordered nodes of one forward pass, built from a ModelConfig (which
// carries the family's traits, resolved for the file). Every lane walks the same plan and
// implements each op; capture is "after node N, copy its output if the capture plan asks".
//
// Activations are per token: a node's output is [tokens, width], except attn_scores and
// attn_softmax, whose width is heads × ctx (ctx = tokens seen so far, known only at run time).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/family.h"
#include "engine/model_config.h"
#include "engine/stages.h"

namespace lockstep::engine {

enum class Op : uint8_t {
  Embed,       // rows of weights[0] for each token id, × scale
  RmsNorm,     // x / rms(x) · weights[0]  (eps = config.norm_eps)
  LayerNorm,   // (x − mean) / std · weights[0] + biases[0]
  MatMul,      // x · Wᵀ for each matrix in weights, outputs concatenated, + biases, × scale
  AddBias,     // x + concat(biases)
  QkNorm,      // RMSNorm of each Q head (weights[0]) and K head (weights[1]); V passes
  Rope,        // rotate the `part` (Q or K) slice per the config; weights[0], if any:
               // rope_freqs, one frequency divisor per rotated pair
  AttnScores,  // scale · Q·Kᵀ per head over the KV cache, causal (and sliding) mask
  Softmax,     // row-wise over ctx, per head
  AttnWeightedSum,  // probabilities (input 0) · V (the V slice of input 1), heads concatenated
  Add,              // input 0 + scale · input 1  (residual; scale is Granite's multiplier)
  Silu,             // x · sigmoid(x)
  Gelu,             // tanh approximation
  Mul,              // input 0 ⊙ input 1
};
std::string_view op_name(Op op);

// Which slice of a fused [Q | K | V] input an op reads.
enum class QkvPart : uint8_t { All, Q, K, V };

struct WeightRef {
  WeightRole role;
  std::optional<uint32_t> layer;  // none for whole-model weights
  bool operator==(const WeightRef&) const = default;
};

struct Node {
  size_t index = 0;
  // The stage this node's output is captured as; none for steps inside a stage (Qwen3's
  // Q/K norm before RoPE), whose output no capture point names.
  std::optional<Stage> stage;
  std::optional<uint32_t> layer;  // none for whole-model nodes
  Op op = Op::Embed;
  std::vector<size_t> inputs;      // indices of earlier nodes; Embed reads the token ids
  std::vector<WeightRef> weights;  // matrices or norm weights, in the order the op uses them
  std::vector<WeightRef> biases;   // added after the op (MatMul, AddBias, LayerNorm's beta)
  QkvPart part = QkvPart::All;     // for Rope (the slice rotated) and AttnWeightedSum (V)
  double scale = 1.0;              // see Op
  // Output width per token; for attn_scores/attn_softmax this is `heads` and the width is
  // heads × ctx (see width_for).
  uint64_t width = 0;
  bool width_times_ctx = false;

  uint64_t width_for(uint64_t ctx) const { return width_times_ctx ? width * ctx : width; }
};

struct Plan {
  std::vector<Node> nodes;
  // The node whose output is the cell (stage, layer); nullptr when the plan has none.
  const Node* find(Stage stage, std::optional<uint32_t> layer) const;
};

Plan build_plan(const ModelConfig& config);

}  // namespace lockstep::engine
