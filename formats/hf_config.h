#pragma once
// Hugging Face `config.json` of a decoder-only model, as a plain struct. The reader records
// what the file says; family rules (Qwen2's implicit QKV bias, default RoPE base, ...)
// belong to the engine.
//
// Required: model_type, hidden_size, num_hidden_layers, num_attention_heads,
// intermediate_size, vocab_size. Everything else is optional; num_key_value_heads defaults
// to num_attention_heads. A missing required key or a key of the wrong type is a
// lockstep::Error naming the file and the key. Unknown keys are ignored.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lockstep::formats {

// `rope_scaling` (older files say "type", newer "rope_type"; both are read into `type`).
struct RopeScaling {
  std::string type;  // "linear", "dynamic", "yarn", "llama3", "default", ...
  std::optional<double> factor;
  // llama3
  std::optional<double> low_freq_factor;
  std::optional<double> high_freq_factor;
  std::optional<uint64_t> original_max_position_embeddings;
  bool operator==(const RopeScaling&) const = default;
};

struct HfConfig {
  std::string model_type;
  std::vector<std::string> architectures;
  uint64_t hidden_size = 0;
  uint64_t num_hidden_layers = 0;
  uint64_t num_attention_heads = 0;
  uint64_t num_key_value_heads = 0;  // = num_attention_heads when the file omits it
  bool num_key_value_heads_given = false;
  uint64_t intermediate_size = 0;
  uint64_t vocab_size = 0;
  std::optional<uint64_t> head_dim;
  std::optional<uint64_t> max_position_embeddings;

  std::optional<double> rms_norm_eps;    // Llama, Qwen, Mistral, Granite
  std::optional<double> layer_norm_eps;  // GPT-style
  std::optional<double> norm_epsilon;    // StarCoder2
  std::optional<double> rope_theta;
  std::optional<RopeScaling> rope_scaling;  // nullopt also when the file says null

  std::optional<bool> tie_word_embeddings;
  std::optional<std::string> hidden_act;
  std::optional<bool> attention_bias;  // Llama, Mistral, Granite
  std::optional<bool> mlp_bias;
  std::optional<bool> use_bias;            // StarCoder2
  std::optional<uint64_t> sliding_window;  // nullopt also when the file says null
  std::optional<bool> use_sliding_window;  // Qwen2/Qwen3 gate sliding_window with this

  // Granite
  std::optional<double> embedding_multiplier;
  std::optional<double> residual_multiplier;
  std::optional<double> attention_multiplier;
  std::optional<double> logits_scaling;

  std::optional<std::string> torch_dtype;  // "torch_dtype", or "dtype" in newer files

  // The norm epsilon under whichever name the file used (rms, layer, norm_epsilon).
  std::optional<double> norm_eps() const;
  // head_dim, or hidden_size / num_attention_heads.
  uint64_t head_dim_or_default() const;
  bool operator==(const HfConfig&) const = default;
};

HfConfig parse_hf_config(std::string_view json, std::string name);
HfConfig read_hf_config(const std::filesystem::path& path);

}  // namespace lockstep::formats
