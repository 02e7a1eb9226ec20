#pragma once
// The capture points of one forward pass, in plan order, with aprender's names. One table:
// name, whether the stage is per layer, and how its width is derived from the config.

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lockstep::engine {

enum class Stage : uint8_t {
  Embedding, AttnNorm, QkvMatmul, QkvBias, QPostRope, KPostRope, AttnScores, AttnSoftmax,
  Attention, AttnOut, PostAttnResidual, FfnNorm, FfnGate, FfnUp, FfnSilu, FfnSwigl, FfnOut,
  PostFfnResidual, FinalNorm, LmHead, MoeRouter, MoeFfnOut,
};

// What a stage's per-token width is made of (resolved against a model config by the plan).
enum class StageWidth : uint8_t {
  Hidden, Qkv, QDim, KvDim, HeadsTimesCtx, Ffn, Vocab, Experts,
};

struct StageInfo {
  Stage stage;
  std::string_view name;
  bool per_layer;  // false: whole-model stage, stored without a layer (APRT layer 0xFFFFFFFF)
  StageWidth width;
  bool reserved;   // named by aprender (MoE) but not produced by Lockstep's plans yet
};

inline constexpr std::array<StageInfo, 22> kStages{{
    {Stage::Embedding, "embedding", true, StageWidth::Hidden, false},
    {Stage::AttnNorm, "attn_norm", true, StageWidth::Hidden, false},
    {Stage::QkvMatmul, "qkv_matmul", true, StageWidth::Qkv, false},
    {Stage::QkvBias, "qkv_bias", true, StageWidth::Qkv, false},
    {Stage::QPostRope, "q_post_rope", true, StageWidth::QDim, false},
    {Stage::KPostRope, "k_post_rope", true, StageWidth::KvDim, false},
    {Stage::AttnScores, "attn_scores", true, StageWidth::HeadsTimesCtx, false},
    {Stage::AttnSoftmax, "attn_softmax", true, StageWidth::HeadsTimesCtx, false},
    {Stage::Attention, "attention", true, StageWidth::QDim, false},
    {Stage::AttnOut, "attn_out", true, StageWidth::Hidden, false},
    {Stage::PostAttnResidual, "post_attn_residual", true, StageWidth::Hidden, false},
    {Stage::FfnNorm, "ffn_norm", true, StageWidth::Hidden, false},
    {Stage::FfnGate, "ffn_gate", true, StageWidth::Ffn, false},
    {Stage::FfnUp, "ffn_up", true, StageWidth::Ffn, false},
    {Stage::FfnSilu, "ffn_silu", true, StageWidth::Ffn, false},
    {Stage::FfnSwigl, "ffn_swigl", true, StageWidth::Ffn, false},
    {Stage::FfnOut, "ffn_out", true, StageWidth::Hidden, false},
    {Stage::PostFfnResidual, "post_ffn_residual", true, StageWidth::Hidden, false},
    {Stage::FinalNorm, "final_norm", false, StageWidth::Hidden, false},
    {Stage::LmHead, "lm_head", false, StageWidth::Vocab, false},
    {Stage::MoeRouter, "moe_router", true, StageWidth::Experts, true},
    {Stage::MoeFfnOut, "moe_ffn_out", true, StageWidth::Hidden, true},
}};

constexpr const StageInfo& stage_info(Stage s) { return kStages[static_cast<size_t>(s)]; }
constexpr std::string_view stage_name(Stage s) { return stage_info(s).name; }

// [tokens, width] stages whose rows split into heads of head_dim channels (qkv_matmul and
// qkv_bias: the fused [Q|K|V] heads, Q's then K's then V's).
constexpr bool per_head_rows(Stage s) {
  return s == Stage::QkvMatmul || s == Stage::QkvBias || s == Stage::QPostRope ||
         s == Stage::KPostRope || s == Stage::Attention;
}

// The [heads, tokens, ctx] stages: attn_scores and attn_softmax.
constexpr bool attention_matrix(Stage s) {
  return stage_info(s).width == StageWidth::HeadsTimesCtx;
}

constexpr std::optional<Stage> find_stage(std::string_view name) {
  for (const auto& s : kStages)
    if (s.name == name) return s.stage;
  return std::nullopt;
}

}  // namespace lockstep::engine
