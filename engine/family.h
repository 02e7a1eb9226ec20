#pragma once
// Model families as data: assets/families/<name>.json names the GGUF `general.architecture`
// and HF `model_type` values a family covers, its traits, and where each weight lives in
// GGUF and HF safetensors files. Adding a family is adding a file (plus kernels only where a
// new op is needed).

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lockstep::engine {

enum class NormKind : uint8_t { Rms, Layer };  // LayerNorm always carries a bias
// SiluGated: down(silu(gate(x)) * up(x)). Gelu: down(gelu(up(x))), the tanh approximation
// (StarCoder2's gelu_pytorch_tanh, llama.cpp's ggml_gelu).
enum class Activation : uint8_t { SiluGated, Gelu };
// Normal: rotate adjacent pairs (x[2i], x[2i+1]); Neox: rotate split halves (x[i], x[i+d/2]).
enum class RopeLayout : uint8_t { Normal, Neox };
enum class FileFormat : uint8_t { Gguf, Safetensors };

std::string_view norm_kind_name(NormKind k);
std::string_view activation_name(Activation a);
std::string_view rope_layout_name(RopeLayout r);

// Every weight a plan may reference. Names follow GGUF's tensor names.
enum class WeightRole : uint8_t {
  TokenEmbd,
  OutputNorm,
  OutputNormBias,
  Output,
  RopeFreqs,
  AttnNorm,
  AttnNormBias,
  AttnQ,
  AttnK,
  AttnV,
  AttnQBias,
  AttnKBias,
  AttnVBias,
  AttnQNorm,
  AttnKNorm,
  AttnOutput,
  AttnOutputBias,
  FfnNorm,
  FfnNormBias,
  FfnGate,
  FfnGateBias,
  FfnUp,
  FfnUpBias,
  FfnDown,
  FfnDownBias,
};

struct WeightRoleInfo {
  WeightRole role;
  std::string_view key;  // key in a family file's tensor maps
  bool per_layer;        // false: one tensor for the whole model
};

inline constexpr std::array<WeightRoleInfo, 25> kWeightRoles{{
    {WeightRole::TokenEmbd, "token_embd", false},
    {WeightRole::OutputNorm, "output_norm", false},
    {WeightRole::OutputNormBias, "output_norm_bias", false},
    {WeightRole::Output, "output", false},
    {WeightRole::RopeFreqs, "rope_freqs", false},
    {WeightRole::AttnNorm, "attn_norm", true},
    {WeightRole::AttnNormBias, "attn_norm_bias", true},
    {WeightRole::AttnQ, "attn_q", true},
    {WeightRole::AttnK, "attn_k", true},
    {WeightRole::AttnV, "attn_v", true},
    {WeightRole::AttnQBias, "attn_q_bias", true},
    {WeightRole::AttnKBias, "attn_k_bias", true},
    {WeightRole::AttnVBias, "attn_v_bias", true},
    {WeightRole::AttnQNorm, "attn_q_norm", true},
    {WeightRole::AttnKNorm, "attn_k_norm", true},
    {WeightRole::AttnOutput, "attn_output", true},
    {WeightRole::AttnOutputBias, "attn_output_bias", true},
    {WeightRole::FfnNorm, "ffn_norm", true},
    {WeightRole::FfnNormBias, "ffn_norm_bias", true},
    {WeightRole::FfnGate, "ffn_gate", true},
    {WeightRole::FfnGateBias, "ffn_gate_bias", true},
    {WeightRole::FfnUp, "ffn_up", true},
    {WeightRole::FfnUpBias, "ffn_up_bias", true},
    {WeightRole::FfnDown, "ffn_down", true},
    {WeightRole::FfnDownBias, "ffn_down_bias", true},
}};
inline constexpr size_t kWeightRoleCount = kWeightRoles.size();

constexpr const WeightRoleInfo& weight_role_info(WeightRole r) {
  return kWeightRoles[static_cast<size_t>(r)];
}
constexpr std::string_view weight_role_name(WeightRole r) {
  return weight_role_info(r).key;
}
std::optional<WeightRole> find_weight_role(std::string_view key);

struct FamilyTraits {
  NormKind norm = NormKind::Rms;
  Activation activation = Activation::SiluGated;
  // Defaults; a file may switch biases on or off (HF attention_bias/mlp_bias/use_bias, GGUF
  // bias tensors present).
  bool qkv_bias = false;
  bool attn_output_bias = false;
  bool ffn_bias = false;
  bool qk_norm = false;  // RMSNorm over each Q and K head before RoPE (Qwen3)
  // GGUF converters permute Q/K rows for llama-style families so that they rotate adjacent
  // pairs; HF safetensors keep unpermuted rows and always rotate split halves.
  RopeLayout gguf_rope = RopeLayout::Normal;
  bool rope_scaling = false;     // the family honours rope scaling keys
  bool tied_embeddings = false;  // HF default when config.json says nothing
  bool sliding_window = false;   // the family honours a sliding attention window
};

// GGUF metadata keys of Granite's multipliers, "{arch}" standing for the architecture.
struct MultiplierKeys {
  std::string embedding;
  std::string residual;
  std::string attention;  // replaces 1/sqrt(head_dim) as the attention score scale
  std::string logits;     // logits are divided by it
};

struct Family {
  std::string name;
  std::filesystem::path source;  // the JSON file, for error messages
  std::vector<std::string> gguf_architectures;
  std::vector<std::string> hf_model_types;
  FamilyTraits traits;
  double hf_norm_eps = 1e-6;  // config.json defaults of the family's transformers class
  double hf_rope_theta = 10000.0;
  std::optional<MultiplierKeys> multipliers;
  // Tensor names per role; "{L}" stands for the layer index. Empty: the family has none.
  std::array<std::string, kWeightRoleCount> gguf_names;
  std::array<std::string, kWeightRoleCount> hf_names;

  RopeLayout rope_layout(FileFormat f) const {
    return f == FileFormat::Gguf ? traits.gguf_rope : RopeLayout::Neox;
  }
  // The tensor name of `role` (with {L} replaced for per-layer roles); empty when the family
  // has no such tensor in that format.
  std::string tensor_name(FileFormat f, WeightRole role, uint32_t layer = 0) const;
};

// Parses one family file; every error names `name` and the offending key.
Family parse_family(std::string_view json, const std::filesystem::path& name);
Family read_family(const std::filesystem::path& path);

std::filesystem::path default_families_dir();  // LOCKSTEP_ASSETS_DIR/families

class FamilyRegistry {
 public:
  // Loads every *.json in `dir` (sorted by file name). Two families claiming the same
  // architecture or model_type, or the same name, are an error naming both files.
  static FamilyRegistry load(const std::filesystem::path& dir = default_families_dir());
  static FamilyRegistry from(std::vector<Family> families);

  const std::vector<Family>& families() const { return families_; }
  const Family* find_name(std::string_view name) const;
  const Family* find_gguf(std::string_view architecture) const;
  const Family* find_hf(std::string_view model_type) const;
  // As find_*, but an unknown value is a lockstep::Error naming `file` and listing the
  // supported values.
  const Family& require_gguf(std::string_view architecture, const std::string& file) const;
  const Family& require_hf(std::string_view model_type, const std::string& file) const;
  std::vector<std::string> gguf_architectures() const;  // sorted
  std::vector<std::string> hf_model_types() const;      // sorted

 private:
  std::vector<Family> families_;
};

}  // namespace lockstep::engine
