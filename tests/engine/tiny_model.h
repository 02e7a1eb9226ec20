#pragma once
// Tiny synthetic models for the engine tests: a GGUF written with formats::GgufWriter (with
// llama.cpp's tensor names spelled out here, independently of the family files) and an HF
// directory (config.json + model.safetensors). Options drop or reshape tensors to build the
// bad files the negative tests need.

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "formats/ggml_type.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "tests/test_util.h"

namespace lockstep::test {

struct TinySpec {
  std::string arch = "llama";
  uint64_t hidden = 32, layers = 2, heads = 4, kv_heads = 2, ffn = 48, vocab = 40;
  bool layer_norm = false;  // LayerNorm with biases (StarCoder2)
  bool gated = true;        // ffn_gate present
  bool qkv_bias = false;
  bool qk_norm = false;
  bool out_bias = false;    // attn_output and ffn biases
  bool tied = false;        // no output.weight
  bool rope_freqs = false;  // rope_freqs.weight (Llama 3.1-style scaled RoPE)
  std::vector<std::pair<std::string, formats::GgufValue>> extra_kv;
  std::set<std::string> drop;                            // tensor names left out
  std::map<std::string, std::vector<uint64_t>> reshape;  // name → dims written instead
  std::map<std::string, formats::GgmlType> retype;       // name → type (filler bytes)

  // StarCoder2's layout: LayerNorm with biases, a non-gated GELU MLP, biases everywhere.
  static TinySpec starcoder2() {
    TinySpec s;
    s.arch = "starcoder2";
    s.layer_norm = true;
    s.gated = false;
    s.qkv_bias = true;
    s.out_bias = true;
    return s;
  }
};

// Tensor names and ggml-order dims of a model laid out as llama.cpp writes it.
inline std::vector<std::pair<std::string, std::vector<uint64_t>>> tiny_tensors(const TinySpec& s) {
  uint64_t hd = s.hidden / s.heads, q = s.hidden, kv = s.kv_heads * hd;
  std::vector<std::pair<std::string, std::vector<uint64_t>>> t{
      {"token_embd.weight", {s.hidden, s.vocab}}, {"output_norm.weight", {s.hidden}}};
  if (s.layer_norm) t.push_back({"output_norm.bias", {s.hidden}});
  if (!s.tied) t.push_back({"output.weight", {s.hidden, s.vocab}});
  if (s.rope_freqs) t.push_back({"rope_freqs.weight", {hd / 2}});
  for (uint64_t L = 0; L < s.layers; ++L) {
    std::string b = "blk." + std::to_string(L) + ".";
    t.push_back({b + "attn_norm.weight", {s.hidden}});
    if (s.layer_norm) t.push_back({b + "attn_norm.bias", {s.hidden}});
    t.push_back({b + "attn_q.weight", {s.hidden, q}});
    t.push_back({b + "attn_k.weight", {s.hidden, kv}});
    t.push_back({b + "attn_v.weight", {s.hidden, kv}});
    if (s.qkv_bias) {
      t.push_back({b + "attn_q.bias", {q}});
      t.push_back({b + "attn_k.bias", {kv}});
      t.push_back({b + "attn_v.bias", {kv}});
    }
    if (s.qk_norm) {
      t.push_back({b + "attn_q_norm.weight", {hd}});
      t.push_back({b + "attn_k_norm.weight", {hd}});
    }
    t.push_back({b + "attn_output.weight", {q, s.hidden}});
    if (s.out_bias) t.push_back({b + "attn_output.bias", {s.hidden}});
    t.push_back({b + "ffn_norm.weight", {s.hidden}});
    if (s.layer_norm) t.push_back({b + "ffn_norm.bias", {s.hidden}});
    if (s.gated) t.push_back({b + "ffn_gate.weight", {s.hidden, s.ffn}});
    t.push_back({b + "ffn_up.weight", {s.hidden, s.ffn}});
    if (s.out_bias) t.push_back({b + "ffn_up.bias", {s.ffn}});
    t.push_back({b + "ffn_down.weight", {s.ffn, s.hidden}});
    if (s.out_bias) t.push_back({b + "ffn_down.bias", {s.hidden}});
  }
  return t;
}

inline std::filesystem::path write_tiny_gguf(const std::filesystem::path& path, const TinySpec& s) {
  using formats::GgufValue;
  formats::GgufWriter w(path.string());
  const std::string a = s.arch + ".";
  w.set("general.architecture", GgufValue::str(s.arch));
  w.set(a + "block_count", GgufValue::u32(static_cast<uint32_t>(s.layers)));
  w.set(a + "embedding_length", GgufValue::u32(static_cast<uint32_t>(s.hidden)));
  w.set(a + "attention.head_count", GgufValue::u32(static_cast<uint32_t>(s.heads)));
  w.set(a + "attention.head_count_kv", GgufValue::u32(static_cast<uint32_t>(s.kv_heads)));
  w.set(a + "feed_forward_length", GgufValue::u32(static_cast<uint32_t>(s.ffn)));
  w.set(a + "context_length", GgufValue::u32(256));
  w.set(a + (s.layer_norm ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon"),
        GgufValue::f32(1e-5f));
  std::vector<GgufValue> tokens;
  for (uint64_t i = 0; i < s.vocab; ++i) tokens.push_back(GgufValue::str("t" + std::to_string(i)));
  w.set("tokenizer.ggml.tokens", GgufValue::array(formats::GgufValueType::String, tokens));
  for (const auto& [k, v] : s.extra_kv) w.set(k, v);

  std::vector<std::pair<std::string, std::vector<uint64_t>>> kept;
  std::vector<formats::GgmlType> types;
  for (auto [name, dims] : tiny_tensors(s)) {
    if (s.drop.count(name)) continue;
    if (auto it = s.reshape.find(name); it != s.reshape.end()) dims = it->second;
    auto rt = s.retype.find(name);
    types.push_back(rt == s.retype.end() ? formats::GgmlType::F32 : rt->second);
    w.add_tensor(name, types.back(), dims);
    kept.push_back({name, dims});
  }
  uint32_t seed = 1;
  for (size_t i = 0; i < kept.size(); ++i) {
    uint64_t n = 1;
    for (uint64_t d : kept[i].second) n *= d;
    if (types[i] == formats::GgmlType::F32) {
      std::vector<float> v = random_nonzero(n, seed++, 0.5f);
      w.write_tensor(std::as_bytes(std::span(v)));
    } else {
      std::vector<std::byte> raw(*formats::ggml_bytes(types[i], n), std::byte{0x11});
      w.write_tensor(raw);
    }
  }
  w.finish();
  return path;
}

// The families' tiny models every lane is checked on, by name: plain Llama, scaled RoPE with
// rope_freqs, StarCoder2 (LayerNorm, GELU, biases, tied) with a sliding window of 3, and Qwen3's
// Q/K norm.
inline std::vector<std::pair<std::string, TinySpec>> tiny_family_specs() {
  std::vector<std::pair<std::string, TinySpec>> specs;
  specs.emplace_back("llama", TinySpec{});
  TinySpec rf;
  rf.rope_freqs = true;
  specs.emplace_back("llama_rope_freqs", rf);
  TinySpec sc = TinySpec::starcoder2();
  sc.tied = true;
  sc.extra_kv = {{"starcoder2.attention.sliding_window", formats::GgufValue::u32(3)}};
  specs.emplace_back("starcoder2", sc);
  TinySpec q3;
  q3.arch = "qwen3";
  q3.qk_norm = true;
  specs.emplace_back("qwen3", q3);
  return specs;
}

}  // namespace lockstep::test
