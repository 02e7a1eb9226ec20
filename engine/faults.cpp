#include "engine/faults.h"

#include <algorithm>
#include <array>
#include <charconv>

#include "formats/error.h"

namespace lockstep::engine {
namespace {

// The fast lanes carry every fault, with the same arithmetic (cuda/cuda_lane.cu mirrors the cpu lane).
constexpr std::array<std::string_view, 2> kFastLanes{"cpu", "cuda"};

constexpr std::array<Stage, 6> kMatmulStages{Stage::QkvMatmul, Stage::AttnOut, Stage::FfnGate,
                                             Stage::FfnUp,     Stage::FfnOut,  Stage::LmHead};
constexpr std::array<Stage, 2> kAttentionStages{Stage::AttnScores, Stage::Attention};
constexpr std::array<Stage, 2> kRopeStages{Stage::QPostRope, Stage::KPostRope};
constexpr std::array<Stage, 1> kQkvBiasStages{Stage::QkvBias};
constexpr std::array<Stage, 3> kNormStages{Stage::AttnNorm, Stage::FfnNorm, Stage::FinalNorm};
constexpr std::array<Stage, 1> kSoftmaxStages{Stage::AttnSoftmax};
constexpr std::array<Stage, 1> kSiluStages{Stage::FfnSilu};
constexpr std::array<Stage, 1> kScoreStages{Stage::AttnScores};
// Every stage whose rows are per token ([tokens, width]).
constexpr std::array<Stage, 18> kRowStages{
    Stage::Embedding,        Stage::AttnNorm,  Stage::QkvMatmul, Stage::QkvBias,
    Stage::QPostRope,        Stage::KPostRope, Stage::Attention, Stage::AttnOut,
    Stage::PostAttnResidual, Stage::FfnNorm,   Stage::FfnGate,   Stage::FfnUp,
    Stage::FfnSilu,          Stage::FfnSwigl,  Stage::FfnOut,    Stage::PostFfnResidual,
    Stage::FinalNorm,        Stage::LmHead};

constexpr std::array<FaultInfo, 10> kFaults{{
    {FaultKind::GemvTransposed, "gemv_transposed",
     "A matmul reads its weight matrix with the wrong stride: W is stored [N, K] (N output rows "
     "of K inputs) but is indexed as [K, N], y[o] = sum_i W[i*N + o] * x[i]. This is the F32 "
     "GEMV bug aprender shipped. Outputs keep roughly the right scale but are nearly "
     "uncorrelated with the right ones (cosine near 0). The lane dequantizes the matrix to f32 "
     "and lays it out wrongly once at load, so it works on every weight type.",
     kFastLanes, kMatmulStages, Stage::LmHead, BugClass::Layout, false},
    {FaultKind::GqaHeadMap, "gqa_head_map",
     "Grouped-query attention maps query head h to KV head h % kv_heads instead of "
     "h / (heads / kv_heads): the interleaved mapping in place of the blocked one, as when "
     "repeat_interleave and repeat/tile are mixed up. Heads where both mappings agree (head 0, "
     "the last head) stay right; the others use another group's keys (at attn_scores) or values "
     "(at attention). Refused on models without grouping (kv_heads = heads, or one KV head), "
     "where both mappings are the same.",
     kFastLanes, kAttentionStages, Stage::AttnScores, BugClass::HeadMapping, false},
    {FaultKind::RopeNeoxSwap, "rope_neox_swap",
     "RoPE rotates the other pairing: adjacent pairs (2i, 2i+1) where the model wants split "
     "halves (i, i + d/2), or the other way round; the NeoX/normal mix-up of a checkpoint "
     "converted with (or without) llama.cpp's Q/K permutation. Position 0 rotates by zero, so "
     "the first token is untouched; the error is periodic in channel within each head.",
     kFastLanes, kRopeStages, Stage::QPostRope, BugClass::Position, true},
    {FaultKind::DropQkvBias, "drop_qkv_bias",
     "The QKV bias is never added (qkv_bias equals qkv_matmul), as in an engine that loads "
     "Qwen2's q/k/v biases but skips the add, or a loader that misses the .bias tensors. "
     "Shows as an offset mean per channel. Only families with QKV bias have the cell.",
     kFastLanes, kQkvBiasStages, Stage::QkvBias, BugClass::Bias, false},
    {FaultKind::RmsEpsWrong, "rms_eps_wrong",
     "The norm uses eps = 1e-2 instead of the model's. The real bug swaps 1e-5 and 1e-6 "
     "(Llama 2 and Llama 3 configs, a hard-coded default), which moves a unit-RMS row by about "
     "d_eps / 2 = 5e-6 relative: under the 1e-4 a bisector flags. 1e-2 moves it by ~0.5% (more "
     "where the input's RMS is below 1), the same bug made big enough to find. Shows as a "
     "per-token scale (high cosine, norm ratio below 1).",
     kFastLanes, kNormStages, Stage::AttnNorm, BugClass::Scale, false},
    {FaultKind::KvCacheOffByOne, "kv_cache_off_by_one",
     "Attention reads position j's key from KV-cache slot j - 1 (slot 0 for j = 0): the "
     "cache's read index lags its write index by one, so a query at position p > 0 misses its "
     "own key and sees the first key twice. Position 0 reads slot 0 and is right, so the error "
     "shows only at positions > 0, in prefill and decode alike. Planted at attention, the "
     "values are read shifted instead of the keys.",
     kFastLanes, kAttentionStages, Stage::AttnScores, BugClass::Position, true},
    {FaultKind::SoftmaxNoMax, "softmax_no_max",
     "Softmax takes exp(s) without subtracting the row max and keeps each term, the running sum "
     "and the result in fp16, as a half-precision attention kernel does. A score above ~11.09 "
     "overflows fp16 (exp(11.09) > 65504) and the row turns to NaN or zeros: the Qwen2 KQ "
     "overflow class. On a model whose scores stay small nothing overflows; there the cell is "
     "marked only by the fp16 rounding (~3e-4 relative) and the overflow shows only where "
     "scores are large (stories260K's layer 2 reaches 15.6 and turns to NaN).",
     kFastLanes, kSoftmaxStages, Stage::AttnSoftmax, BugClass::Overflow, false},
    {FaultKind::SiluAsGelu, "silu_as_gelu",
     "The gated MLP's activation is GELU (tanh approximation) instead of SiLU: a GELU family's "
     "activation (StarCoder2, GPT-2) reused for a SiLU one. GELU(x) is close to x*sigmoid(1.702x), "
     "a sharper SiLU: high cosine, norm ratio above 1, so it reads as a scale error. Only "
     "SiLU-gated families have it.",
     kFastLanes, kSiluStages, Stage::FfnSilu, BugClass::Scale, false},
    {FaultKind::AttnScaleMissing, "attn_scale_missing",
     "Attention scores are not multiplied by the attention scale (1/sqrt(head_dim), or the "
     "family's multiplier), as in a kernel that forgot it or applied it on only one path. "
     "Scores are sqrt(head_dim) times too large: high cosine, norm ratio != 1. Refused on a "
     "model whose attention scale is 1.",
     kFastLanes, kScoreStages, Stage::AttnScores, BugClass::Scale, false},
    {FaultKind::PartialWrite, "partial_write",
     "The node writes only the first half of each token's output row and leaves the rest zero, "
     "as a kernel launched with too few blocks (a grid size rounded down) does. Zeros past "
     "some index.",
     kFastLanes, kRowStages, Stage::AttnOut, BugClass::PartialWrite, false},
}};

std::string join(std::span<const Stage> stages) {
  std::string s;
  for (Stage st : stages) s += (s.empty() ? "" : ", ") + std::string(stage_name(st));
  return s;
}

std::string fault_name_list() {
  std::string s;
  for (const FaultInfo& f : kFaults) s += (s.empty() ? "" : ", ") + std::string(f.name);
  return s;
}

bool op_fits(FaultKind kind, Op op) {
  switch (kind) {
    case FaultKind::GemvTransposed:
      return op == Op::MatMul;
    case FaultKind::GqaHeadMap:
    case FaultKind::KvCacheOffByOne:
      return op == Op::AttnScores || op == Op::AttnWeightedSum;
    case FaultKind::RopeNeoxSwap:
      return op == Op::Rope;
    case FaultKind::DropQkvBias:
      return op == Op::AddBias;
    case FaultKind::RmsEpsWrong:
      return op == Op::RmsNorm || op == Op::LayerNorm;
    case FaultKind::SoftmaxNoMax:
      return op == Op::Softmax;
    case FaultKind::SiluAsGelu:
      return op == Op::Silu;
    case FaultKind::AttnScaleMissing:
      return op == Op::AttnScores;
    case FaultKind::PartialWrite:
      return true;
  }
  return false;
}

}  // namespace

std::string_view bug_class_name(BugClass c) {
  constexpr std::array<std::string_view, 7> names{
      "layout", "scale", "bias", "position", "head_mapping", "overflow", "partial_write"};
  return names[static_cast<size_t>(c)];
}

std::string_view bug_class_label(BugClass c) {
  constexpr std::array<std::string_view, 7> labels{"transposed/mis-strided layout",
                                                   "missing/extra scale",
                                                   "bias missing/doubled",
                                                   "RoPE/position/KV cache",
                                                   "head mapping",
                                                   "overflow",
                                                   "partial write"};
  return labels[static_cast<size_t>(c)];
}

std::span<const FaultInfo> fault_registry() {
  return kFaults;
}

const FaultInfo& fault_info(FaultKind kind) {
  return kFaults[static_cast<size_t>(kind)];
}

std::optional<FaultKind> find_fault(std::string_view name) {
  for (const FaultInfo& f : kFaults)
    if (f.name == name) return f.kind;
  return std::nullopt;
}

std::vector<std::string> fault_names() {
  std::vector<std::string> v;
  for (const FaultInfo& f : kFaults) v.emplace_back(f.name);
  return v;
}

FaultSpec FaultSpec::defaults(FaultKind kind) {
  return {kind, fault_info(kind).default_stage, std::nullopt};
}

FaultSpec FaultSpec::parse(std::string_view text) {
  const size_t at = text.find('@');
  const std::string_view name = text.substr(0, at);
  const std::optional<FaultKind> kind = find_fault(name);
  if (!kind)
    throw Error("unknown fault \"" + std::string(name) + "\"; faults: " + fault_name_list());
  const FaultInfo& info = fault_info(*kind);
  FaultSpec spec = defaults(*kind);
  if (at == std::string_view::npos) return spec;

  const std::string_view target = text.substr(at + 1);
  const size_t comma = target.find(',');
  const std::string_view stage_text = target.substr(0, comma);
  const std::string where = "fault " + std::string(name) + ": ";
  const std::string valid = "; it can be planted at " + join(info.stages);
  const std::optional<Stage> stage = find_stage(stage_text);
  if (!stage) throw Error(where + "unknown stage \"" + std::string(stage_text) + "\"" + valid);
  if (std::find(info.stages.begin(), info.stages.end(), *stage) == info.stages.end())
    throw Error(where + "cannot be planted at " + std::string(stage_text) + valid);
  spec.stage = *stage;
  if (comma == std::string_view::npos) return spec;

  const std::string_view layer_text = target.substr(comma + 1);
  if (!stage_info(*stage).per_layer)
    throw Error(where + std::string(stage_text) + " is a whole-model stage and takes no layer (\"" +
                std::string(layer_text) + "\")");
  uint32_t layer = 0;
  const auto [end, ec] =
      std::from_chars(layer_text.data(), layer_text.data() + layer_text.size(), layer);
  if (layer_text.empty() || ec != std::errc() || end != layer_text.data() + layer_text.size())
    throw Error(where + "layer \"" + std::string(layer_text) +
                "\" is not a layer number (NAME@stage,layer as in rms_eps_wrong@attn_norm,3)");
  spec.layer = layer;
  return spec;
}

std::string FaultSpec::str() const {
  std::string s = std::string(fault_info(kind).name) + "@" + std::string(stage_name(stage));
  if (layer) s += "," + std::to_string(*layer);
  return s;
}

Cell FaultSpec::first_cell() const {
  if (!stage_info(stage).per_layer) return {stage, std::nullopt};
  return {stage, layer.value_or(0)};
}

std::vector<bool> resolve_fault(const FaultSpec& spec, const Plan& plan, const ModelConfig& c) {
  const FaultInfo& info = fault_info(spec.kind);
  const std::string where = "fault " + spec.str() + ": ";
  if (spec.layer && *spec.layer >= c.layers)
    throw Error(where + "layer " + std::to_string(*spec.layer) + " is past the model's last (" +
                std::to_string(c.layers - 1) + ")");
  std::vector<bool> hit(plan.nodes.size(), false);
  bool any = false;
  for (const Node& node : plan.nodes) {
    if (node.stage != spec.stage) continue;
    if (spec.layer && node.layer != spec.layer) continue;
    if (!op_fits(spec.kind, node.op))
      throw Error(where + "the model computes " + std::string(stage_name(spec.stage)) + " with " +
                  std::string(op_name(node.op)) + ", which " + std::string(info.name) +
                  " does not apply to");
    hit[node.index] = any = true;
  }
  if (!any)
    throw Error(where + "the model (" + c.family + ") has no " +
                std::string(stage_name(spec.stage)) + " cell");
  const bool at_scores = spec.stage == Stage::AttnScores || spec.stage == Stage::Attention;
  if (spec.kind == FaultKind::GqaHeadMap && at_scores && (c.kv_heads <= 1 || c.kv_heads >= c.heads))
    throw Error(where + "the model has " + std::to_string(c.heads) + " query heads and " +
                std::to_string(c.kv_heads) +
                " KV heads; without grouping both head mappings are the same");
  if (spec.kind == FaultKind::AttnScaleMissing && c.attention_scale() == 1.0)
    throw Error(where + "the model's attention scale is 1, so leaving it out changes nothing");
  if (spec.kind == FaultKind::RopeNeoxSwap && c.rope_dims < 4)
    throw Error(where + "with " + std::to_string(c.rope_dims) +
                " rotated dims per head both pairings are the same");
  return hit;
}

std::string fault_list_text() {
  std::string s;
  for (const FaultInfo& f : kFaults) {
    const FaultSpec d = FaultSpec::defaults(f.kind);
    s += std::string(f.name) + "  (default " + d.str() +
         (stage_info(d.stage).per_layer ? " in every layer" : "") + "; stages: " + join(f.stages) +
         "; diagnosis: " + std::string(bug_class_label(f.diagnosis)) + ")\n  " +
         std::string(f.description) + "\n";
  }
  return s;
}

}  // namespace lockstep::engine
