#pragma once
// One plain struct with everything a plan and a lane need to know about a model's shape and
// numerics, built from GGUF metadata or an HF config.json plus the family's traits. Family
// defaults are resolved here (bias switches, RoPE layout per file format, tied embeddings),
// so a plan needs only the config.

#include <cstdint>
#include <optional>
#include <string>

#include "engine/family.h"
#include "formats/gguf.h"
#include "formats/hf_config.h"

namespace lockstep::engine {

struct RopeScalingConfig {
  std::string type;  // "linear", "yarn", "llama3", ...
  double factor = 1.0;
  std::optional<uint64_t> original_context;
  std::optional<double> low_freq_factor;   // llama3
  std::optional<double> high_freq_factor;  // llama3
};

struct ModelConfig {
  std::string source;  // file the config came from, for error messages
  FileFormat format = FileFormat::Gguf;
  std::string family;        // Family::name
  std::string architecture;  // GGUF general.architecture or HF model_type

  uint64_t hidden = 0;
  uint64_t layers = 0;
  uint64_t heads = 0;
  uint64_t kv_heads = 0;
  uint64_t head_dim = 0;
  uint64_t ffn = 0;
  uint64_t vocab = 0;
  uint64_t context = 0;  // trained context length; 0 when the file does not say

  NormKind norm = NormKind::Rms;
  double norm_eps = 1e-5;
  Activation activation = Activation::SiluGated;
  bool qkv_bias = false;
  bool attn_output_bias = false;
  bool ffn_bias = false;
  bool qk_norm = false;
  bool tied_embeddings = false;  // lm_head reads token_embd

  RopeLayout rope_layout = RopeLayout::Normal;
  double rope_base = 10000.0;
  uint64_t rope_dims = 0;  // rotated dimensions per head (<= head_dim)
  std::optional<RopeScalingConfig> rope_scaling;
  // GGUF files of Llama 3.1-style scaled RoPE carry rope_freqs.weight, one divisor per rotated
  // pair, instead of a rope.scaling.type key; Rope nodes then reference it.
  bool rope_freq_factors = false;
  std::optional<uint64_t> sliding_window;

  // Granite; 1.0 (and attention_scale unset) elsewhere.
  double embedding_multiplier = 1.0;
  double residual_multiplier = 1.0;
  std::optional<double> attention_multiplier;  // replaces 1/sqrt(head_dim)
  double logits_scaling = 1.0;                 // logits are divided by it

  uint64_t q_dim() const { return heads * head_dim; }
  uint64_t kv_dim() const { return kv_heads * head_dim; }
  uint64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }  // fused [Q | K | V] per token
  uint64_t gqa_ratio() const { return kv_heads == 0 ? 0 : heads / kv_heads; }
  double attention_scale() const;  // multiplier of Q·K
};

// `family` must cover the file's general.architecture (see FamilyRegistry::require_gguf).
ModelConfig config_from_gguf(const formats::GgufFile& file, const Family& family);
ModelConfig config_from_hf(const formats::HfConfig& hf, const Family& family,
                           const std::string& source);

// Throws lockstep::Error naming config.source and the offending key when the numbers cannot
// describe a model (zero sizes, heads not divisible by kv_heads, odd rope dims, ...). The
// config_from_* functions call it.
void validate(const ModelConfig& config);

}  // namespace lockstep::engine
