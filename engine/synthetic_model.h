#pragma once
// Random-weight GGUF models of any family, shape and llama.cpp-style quant mix, streamed to
// disk one tensor at a time. They feed tests, benchmarks and the embedded demo, so the weights
// are deterministic per (seed, tensor name, element index) and scaled to keep activations in
// realistic ranges through many layers:
//   - matrices ~ N(0, 1/fan_in) (fan_in = row length), so each projection keeps the RMS of its
//     input; residual-output projections (attn_output, ffn_down) are further scaled by
//     1/sqrt(2*layers) (GPT-2 init) so the 2*layers branch outputs add up to O(1);
//   - token_embd ~ N(0, 1) when an untied output matrix exists (residual stream RMS starts at
//     1); when tied it doubles as lm_head, so σ = hidden^-1/4 balances residual RMS against
//     logit spread; Granite's embedding multiplier is divided out of σ;
//   - an untied output matrix is multiplied by Granite's logit scale, so logits keep RMS ~1;
//   - norm weights (incl. Q/K norms) 1 + U(-0.1, 0.1); biases N(0, 0.02²).
// Values come from splitmix64 over (tensor key + pair index) through float Box-Muller, so any row
// range can be generated independently and the output does not depend on thread count.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/family.h"
#include "engine/model_config.h"
#include "formats/ggml_type.h"

namespace lockstep::engine {

// llama.cpp's file types (llama_ftype) that Lockstep can write. Q3_K means Q3_K_S.
enum class QuantMix : uint8_t {
  F32,
  F16,
  BF16,
  Q8_0,
  Q4_0,
  Q4_1,
  Q5_0,
  Q5_1,
  Q2_K,
  Q3_K_S,
  Q4_K_S,
  Q4_K_M,
  Q5_K_S,
  Q5_K_M,
  Q6_K,
};
std::string_view quant_mix_name(QuantMix m);
std::optional<QuantMix> parse_quant_mix(std::string_view name);  // case-insensitive
std::vector<std::string> quant_mix_names();
uint32_t llama_file_type(QuantMix m);  // general.file_type

// The type llama.cpp's llama_tensor_get_type would pick, simplified:
//   - 1-D tensors (norms, biases) stay F32;
//   - F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q3_K_S/Q5_K_S/Q6_K: the base type everywhere;
//   - output.weight (or token_embd when tied, since it is then the lm_head) → Q6_K unless the
//     mix is a float type or Q8_0;
//   - Q4_K_M / Q5_K_M: attn_v and ffn_down of "more bits" layers (the first and last eighth,
//     and every third layer between: llama.cpp's use_more_bits) → Q6_K;
//   - Q4_K_S: attn_v of layers < 4 and ffn_down of layers < layers/8 → Q5_K;
//   - Q2_K: attn_v → Q3_K (Q4_K when heads/kv_heads >= 4), ffn_down → Q3_K;
// then, when the row length is not a multiple of the block, llama.cpp's fallback: Q2_K/Q3_K →
// Q4_0 (llama.cpp now picks IQ4_NL, which has no codec here), Q4_K → Q5_0, Q5_K → Q5_1,
// Q6_K → Q8_0; a row that is not a multiple of 32 either falls back to F16.
formats::GgmlType mix_tensor_type(QuantMix mix, WeightRole role, uint32_t layer,
                                  const ModelConfig& config, uint64_t row_length);

struct SyntheticModelOptions {
  std::string family;  // a family name; one without a GGUF architecture (mistral) is written
                       // as "llama", as llama.cpp's converter does
  uint64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, ffn = 0;
  uint64_t vocab = 0;     // 0 with a borrowed tokenizer: its token count
  uint64_t head_dim = 0;  // 0: hidden / heads (which must then divide)
  uint64_t context = 4096;
  std::optional<bool> tied_embeddings;  // default: the family's trait
  QuantMix mix = QuantMix::F32;
  uint64_t seed = 0;
  // Attention sharpness: attn_q and attn_k are scaled by it, so scores grow by its square. At 1
  // scores are ~N(0, 1); trained models peak harder (stories260K reaches 15.6), which is what
  // makes an fp16 softmax without max subtraction overflow. Must be > 0.
  double qk_gain = 1.0;
  std::filesystem::path tokenizer_from;  // copy tokenizer.* from this GGUF; empty: byte vocab
  std::filesystem::path out;
  unsigned threads = 2;
};

// One tensor as it will be written.
struct SyntheticTensor {
  std::string name;
  WeightRole role;
  uint32_t layer = 0;
  formats::GgmlType type = formats::GgmlType::F32;
  std::vector<uint64_t> dims;  // ggml order
  uint64_t bytes = 0;
};

struct SyntheticPlan {
  const Family* family = nullptr;  // the family the file loads as (llama for mistral)
  ModelConfig config;
  std::vector<SyntheticTensor> tensors;
};

// Validates the options (lockstep::Error naming the option on failure) and lists the tensors.
SyntheticPlan plan_synthetic_model(const SyntheticModelOptions& opts,
                                   const FamilyRegistry& families);

struct SyntheticProgress {
  size_t tensor = 0;  // tensors finished
  size_t tensors = 0;
  std::string_view name;  // the last finished tensor
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;  // tensor data bytes
};
using SyntheticProgressFn = std::function<void(const SyntheticProgress&)>;

struct SyntheticSummary {
  uint64_t file_bytes = 0;
  size_t tensors = 0;
  double seconds = 0;
};

// Writes opts.out (through a temporary file renamed on success). Memory: one tensor's encoded
// bytes (the largest, a Q6_K lm_head of 152k × 3584, is ~450 MB) plus a few rows of floats per
// thread. Setting *cancel stops within a few rows and throws lockstep::Error with no file left.
SyntheticSummary write_synthetic_model(const SyntheticModelOptions& opts,
                                       const FamilyRegistry& families,
                                       const SyntheticProgressFn& progress = {},
                                       const std::atomic<bool>* cancel = nullptr);

}  // namespace lockstep::engine
