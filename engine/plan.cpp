#include "engine/plan.h"

#include <array>

namespace lockstep::engine {
namespace {

constexpr std::array<std::string_view, 14> kOpNames{
    "embed",       "rms_norm", "layer_norm",        "matmul", "add_bias", "qk_norm", "rope",
    "attn_scores", "softmax",  "attn_weighted_sum", "add",    "silu",     "gelu",    "mul",
};

class Builder {
 public:
  explicit Builder(const ModelConfig& c) : c_(c) {}

  size_t add(std::optional<Stage> stage, std::optional<uint32_t> layer, Op op,
             std::vector<size_t> inputs, std::vector<WeightRef> weights, uint64_t width) {
    Node n;
    n.index = nodes_.size();
    n.stage = stage;
    n.layer = layer;
    n.op = op;
    n.inputs = std::move(inputs);
    n.weights = std::move(weights);
    n.width = width;
    nodes_.push_back(std::move(n));
    return nodes_.back().index;
  }
  Node& last() { return nodes_.back(); }

  // A norm node: RMSNorm, or LayerNorm with its bias.
  size_t norm(Stage stage, std::optional<uint32_t> layer, size_t input, WeightRole w,
              WeightRole b) {
    bool layer_norm = c_.norm == NormKind::Layer;
    size_t i = add(stage, layer, layer_norm ? Op::LayerNorm : Op::RmsNorm, {input}, {{w, layer}},
                   c_.hidden);
    if (layer_norm) last().biases = {{b, layer}};
    return i;
  }

  // A projection with its optional bias: projections include their bias.
  size_t matmul(Stage stage, uint32_t layer, size_t input, WeightRole w, WeightRole b,
                bool has_bias, uint64_t width) {
    size_t i = add(stage, layer, Op::MatMul, {input}, {{w, layer}}, width);
    if (has_bias) last().biases = {{b, layer}};
    return i;
  }

  // One transformer block, reading the residual stream `x`; returns post_ffn_residual.
  size_t block(uint32_t L, size_t x) {
    using R = WeightRole;
    size_t attn_norm = norm(Stage::AttnNorm, L, x, R::AttnNorm, R::AttnNormBias);
    size_t qkv = add(Stage::QkvMatmul, L, Op::MatMul, {attn_norm},
                     {{R::AttnQ, L}, {R::AttnK, L}, {R::AttnV, L}}, c_.qkv_dim());
    if (c_.qkv_bias) {
      qkv = add(Stage::QkvBias, L, Op::AddBias, {qkv}, {}, c_.qkv_dim());
      last().biases = {{R::AttnQBias, L}, {R::AttnKBias, L}, {R::AttnVBias, L}};
    }
    size_t rope_src = qkv;
    if (c_.qk_norm)
      rope_src = add(std::nullopt, L, Op::QkNorm, {qkv}, {{R::AttnQNorm, L}, {R::AttnKNorm, L}},
                     c_.qkv_dim());
    std::vector<WeightRef> freqs;
    if (c_.rope_freq_factors) freqs.push_back({R::RopeFreqs, std::nullopt});
    size_t q = add(Stage::QPostRope, L, Op::Rope, {rope_src}, freqs, c_.q_dim());
    last().part = QkvPart::Q;
    size_t k = add(Stage::KPostRope, L, Op::Rope, {rope_src}, freqs, c_.kv_dim());
    last().part = QkvPart::K;
    size_t scores = add(Stage::AttnScores, L, Op::AttnScores, {q, k}, {}, c_.heads);
    last().scale = c_.attention_scale();
    last().width_times_ctx = true;
    size_t probs = add(Stage::AttnSoftmax, L, Op::Softmax, {scores}, {}, c_.heads);
    last().width_times_ctx = true;
    // V is not normed or rotated: read it from the QKV node itself.
    size_t attn = add(Stage::Attention, L, Op::AttnWeightedSum, {probs, qkv}, {}, c_.q_dim());
    last().part = QkvPart::V;
    size_t out = matmul(Stage::AttnOut, L, attn, R::AttnOutput, R::AttnOutputBias,
                        c_.attn_output_bias, c_.hidden);
    size_t resid = add(Stage::PostAttnResidual, L, Op::Add, {x, out}, {}, c_.hidden);
    last().scale = c_.residual_multiplier;

    size_t ffn_norm = norm(Stage::FfnNorm, L, resid, R::FfnNorm, R::FfnNormBias);
    size_t ffn_in;
    if (c_.activation == Activation::SiluGated) {
      size_t gate =
          matmul(Stage::FfnGate, L, ffn_norm, R::FfnGate, R::FfnGateBias, c_.ffn_bias, c_.ffn);
      size_t up = matmul(Stage::FfnUp, L, ffn_norm, R::FfnUp, R::FfnUpBias, c_.ffn_bias, c_.ffn);
      size_t act = add(Stage::FfnSilu, L, Op::Silu, {gate}, {}, c_.ffn);
      ffn_in = add(Stage::FfnSwigl, L, Op::Mul, {act, up}, {}, c_.ffn);
    } else {
      // Non-gated MLP: ffn_silu holds the activation's output, whatever the activation.
      size_t up = matmul(Stage::FfnUp, L, ffn_norm, R::FfnUp, R::FfnUpBias, c_.ffn_bias, c_.ffn);
      ffn_in = add(Stage::FfnSilu, L, Op::Gelu, {up}, {}, c_.ffn);
    }
    size_t down =
        matmul(Stage::FfnOut, L, ffn_in, R::FfnDown, R::FfnDownBias, c_.ffn_bias, c_.hidden);
    size_t resid2 = add(Stage::PostFfnResidual, L, Op::Add, {resid, down}, {}, c_.hidden);
    last().scale = c_.residual_multiplier;
    return resid2;
  }

  Plan build() {
    using R = WeightRole;
    size_t x = add(Stage::Embedding, 0u, Op::Embed, {}, {{R::TokenEmbd, std::nullopt}}, c_.hidden);
    last().scale = c_.embedding_multiplier;
    for (uint32_t L = 0; L < c_.layers; ++L) x = block(L, x);
    size_t fin = norm(Stage::FinalNorm, std::nullopt, x, R::OutputNorm, R::OutputNormBias);
    R head = c_.tied_embeddings ? R::TokenEmbd : R::Output;
    add(Stage::LmHead, std::nullopt, Op::MatMul, {fin}, {{head, std::nullopt}}, c_.vocab);
    last().scale = 1.0 / c_.logits_scaling;
    return Plan{std::move(nodes_)};
  }

 private:
  const ModelConfig& c_;
  std::vector<Node> nodes_;
};

}  // namespace

std::string_view op_name(Op op) {
  return kOpNames[static_cast<size_t>(op)];
}

const Node* Plan::find(Stage stage, std::optional<uint32_t> layer) const {
  for (const Node& n : nodes)
    if (n.stage == stage && n.layer == layer) return &n;
  return nullptr;
}

Plan build_plan(const ModelConfig& config) {
  validate(config);
  return Builder(config).build();
}

}  // namespace lockstep::engine
