#pragma once
// Weights binding: every tensor a model's plan needs, found by name through the family's
// tensor maps, checked for presence, shape and type, and exposed as views into the mapped
// file (no copies). Shapes use ggml order for both formats: dims[0] is the innermost
// (the input width of a matrix), so a safetensors [out, in] matrix reads as [in, out].

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/family.h"
#include "engine/model_config.h"
#include "engine/plan.h"
#include "formats/ggml_type.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"

namespace lockstep::engine {

struct TensorRef {
  std::string name;  // as stored in the file
  formats::GgmlType type = formats::GgmlType::F32;
  std::vector<uint64_t> dims;       // ggml order
  std::span<const std::byte> data;  // raw bytes inside the file's map
  uint64_t elements() const;
};

// Optional fields are absent when the config does not call for the tensor.
struct LayerWeights {
  std::optional<TensorRef> attn_norm;         // [hidden]
  std::optional<TensorRef> attn_norm_bias;    // [hidden]  LayerNorm
  std::optional<TensorRef> attn_q;            // [hidden, q_dim]
  std::optional<TensorRef> attn_k;            // [hidden, kv_dim]
  std::optional<TensorRef> attn_v;            // [hidden, kv_dim]
  std::optional<TensorRef> attn_q_bias;       // [q_dim]
  std::optional<TensorRef> attn_k_bias;       // [kv_dim]
  std::optional<TensorRef> attn_v_bias;       // [kv_dim]
  std::optional<TensorRef> attn_q_norm;       // [head_dim]  Qwen3
  std::optional<TensorRef> attn_k_norm;       // [head_dim]  Qwen3
  std::optional<TensorRef> attn_output;       // [q_dim, hidden]
  std::optional<TensorRef> attn_output_bias;  // [hidden]
  std::optional<TensorRef> ffn_norm;          // [hidden]
  std::optional<TensorRef> ffn_norm_bias;     // [hidden]  LayerNorm
  std::optional<TensorRef> ffn_gate;          // [hidden, ffn]  gated MLP
  std::optional<TensorRef> ffn_gate_bias;     // [ffn]
  std::optional<TensorRef> ffn_up;            // [hidden, ffn]
  std::optional<TensorRef> ffn_up_bias;       // [ffn]
  std::optional<TensorRef> ffn_down;          // [ffn, hidden]
  std::optional<TensorRef> ffn_down_bias;     // [hidden]
};

struct Weights {
  std::optional<TensorRef> token_embd;        // [hidden, vocab]
  std::optional<TensorRef> output_norm;       // [hidden]
  std::optional<TensorRef> output_norm_bias;  // [hidden]  LayerNorm
  // [hidden, vocab]; with tied embeddings the same tensor as token_embd.
  std::optional<TensorRef> output;
  std::optional<TensorRef> rope_freqs;  // [rope_dims / 2]  see ModelConfig::rope_freq_factors
  bool tied_embeddings = false;
  std::vector<LayerWeights> layers;

  // The bound tensor of `role` (layer ignored for whole-model roles); nullptr when absent.
  const TensorRef* find(WeightRole role, uint32_t layer = 0) const;
  const TensorRef* find(const WeightRef& ref) const {
    return find(ref.role, ref.layer.value_or(0));
  }
};

// The roles `config` needs, and the ggml-order shape each must have.
std::vector<WeightRole> required_roles(const ModelConfig& config);
std::vector<uint64_t> expected_dims(const ModelConfig& config, WeightRole role);

// Resolve every required tensor. A missing tensor, a wrong shape, or a type Lockstep has no
// codec for is a lockstep::Error naming the file and tensor (and expected and found shape).
Weights bind_gguf(const formats::GgufFile& file, const Family& family, const ModelConfig& config);
Weights bind_safetensors(const formats::SafetensorsModel& model, const Family& family,
                         const ModelConfig& config);

// A loaded model: the open file, its family, config, bound weights and forward plan. The
// weights point into the file's map, which the shared pointers keep alive.
struct Model {
  std::shared_ptr<const formats::GgufFile> gguf;                 // null for safetensors
  std::shared_ptr<const formats::SafetensorsModel> safetensors;  // null for GGUF
  Family family;
  ModelConfig config;
  Weights weights;
  Plan plan;
};

// `path`: a .gguf file, or a directory holding config.json and safetensors (one file, or
// sharded with an index). Unknown architectures are refused listing the supported ones.
Model open_model(const std::filesystem::path& path, const FamilyRegistry& families);

}  // namespace lockstep::engine
