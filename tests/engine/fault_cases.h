#pragma once
// The planted-fault targets the fault, diagnose and bisect tests share: every fault at its
// default target and at other stages and layers, on Llama (normal RoPE, no biases), Qwen2 (NeoX
// RoPE, QKV bias) and StarCoder2 (LayerNorm, a non-gated GELU MLP, biases everywhere), each on
// the families that have the cell it targets, so every fault shows on at least two of them.

#include <ostream>
#include <string>
#include <vector>

namespace lockstep::engine::test_faults {

struct FaultCase {
  std::string spec;
  std::string family;
};
inline void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.spec << " on " << c.family; }

inline std::vector<FaultCase> fault_cases() {
  std::vector<FaultCase> cases;
  for (const std::string family : {"llama", "qwen2", "starcoder2"})
    for (const std::string spec :
         {"gemv_transposed", "gemv_transposed@qkv_matmul,1", "gemv_transposed@ffn_up",
          "gqa_head_map", "gqa_head_map@attention", "rope_neox_swap",
          "rope_neox_swap@k_post_rope", "drop_qkv_bias", "rms_eps_wrong",
          "rms_eps_wrong@ffn_norm,1", "rms_eps_wrong@final_norm", "kv_cache_off_by_one",
          "kv_cache_off_by_one@attention,1", "softmax_no_max", "silu_as_gelu",
          "attn_scale_missing", "partial_write", "partial_write@attention",
          "partial_write@ffn_swigl,1", "partial_write@lm_head"}) {
      const bool gated = family != "starcoder2";
      if (spec == "drop_qkv_bias" && family == "llama") continue;
      if (!gated && (spec == "silu_as_gelu" || spec == "partial_write@ffn_swigl,1")) continue;
      cases.push_back({spec, family});
    }
  return cases;
}

}  // namespace lockstep::engine::test_faults
