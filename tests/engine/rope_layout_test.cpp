// RoPE pairing follows the file: llama.cpp's converter permutes the Q/K rows of llama-family
// checkpoints so that each head's split-half pairs (i, i + d/2) become adjacent pairs (2i, 2i+1),
// and GGUF llama files are then rotated "normal"; HF safetensors keep the rows and rotate split
// halves ("NeoX"). One set of weights written both ways must give the same logits in every lane,
// and the wrong pairing must not.

#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "engine/cpu_lane.h"
#include "engine/metrics.h"
#include "engine/ref_lane.h"
#include "formats/safetensors.h"
#include "tests/engine/lane_test_util.h"
#include "tests/engine/tiny_model.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;
using namespace test_lanes;

// HF name of a llama.cpp tensor name, for the tensors a TinySpec llama model has.
std::string hf_name(const std::string& gguf) {
  static const std::map<std::string, std::string> whole{
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> per_layer{
      {"attn_norm.weight", "input_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"}};
  if (auto it = whole.find(gguf); it != whole.end()) return it->second;
  size_t dot = gguf.find('.', 4);  // "blk.N.rest"
  std::string layer = gguf.substr(4, dot - 4), rest = gguf.substr(dot + 1);
  return "model.layers." + layer + "." + per_layer.at(rest);
}

// Writes the GGUF model's weights as an HF checkpoint, undoing llama.cpp's Q/K row permutation:
// GGUF row 2i+b of a head is HF row b·d/2 + i.
fs::path write_hf_copy(const formats::GgufFile& gguf, const test::TinySpec& s, const fs::path& dir) {
  fs::create_directories(dir);
  test::write_file(dir / "config.json",
                   "{\"model_type\": \"llama\", \"hidden_size\": " + std::to_string(s.hidden) +
                       ", \"num_hidden_layers\": " + std::to_string(s.layers) +
                       ", \"num_attention_heads\": " + std::to_string(s.heads) +
                       ", \"num_key_value_heads\": " + std::to_string(s.kv_heads) +
                       ", \"intermediate_size\": " + std::to_string(s.ffn) +
                       ", \"vocab_size\": " + std::to_string(s.vocab) +
                       ", \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": false}");
  const uint64_t hd = s.hidden / s.heads;
  formats::SafetensorsWriter w;
  for (const formats::GgufTensorInfo& t : gguf.tensors()) {
    std::span<const std::byte> bytes = gguf.tensor_data(t);
    std::vector<float> v(t.elements);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    const bool qk = t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight");
    if (qk) {
      const uint64_t in = t.dims[0], out = t.dims[1];
      std::vector<float> hf(v.size());
      for (uint64_t r = 0; r < out; ++r) {
        const uint64_t head = r / hd, j = r % hd, i = j / 2, b = j % 2;
        const uint64_t hf_row = head * hd + b * (hd / 2) + i;
        std::memcpy(&hf[hf_row * in], &v[r * in], in * sizeof(float));
      }
      v = std::move(hf);
    }
    std::vector<uint64_t> shape(t.dims.rbegin(), t.dims.rend());  // HF [out, in]
    w.add_f32(hf_name(t.name), shape, v);
  }
  w.write(dir / "model.safetensors");
  return dir;
}

TEST(RopeLayout, PermutedGgufAndUnpermutedHfGiveTheSameLogits) {
  test::ScratchDir dir("rope_layout");
  test::TinySpec spec;
  spec.hidden = 64;
  spec.heads = 4;
  spec.kv_heads = 2;  // head dim 16
  Model gguf = open_model(test::write_tiny_gguf(dir.path / "m.gguf", spec), registry());
  Model hf = open_model(write_hf_copy(*gguf.gguf, spec, dir.path / "hf"), registry());
  ASSERT_EQ(gguf.config.rope_layout, RopeLayout::Normal);
  ASSERT_EQ(hf.config.rope_layout, RopeLayout::Neox);

  std::vector<int32_t> tokens{1, 5, 7, 3, 39, 0, 12};
  RefLane ref;
  CpuLane cpu;
  for (Lane* lane : {static_cast<Lane*>(&ref), static_cast<Lane*>(&cpu)}) {
    SCOPED_TRACE(lane->name());
    lane->load(gguf);
    Logits a = prefill(*lane, tokens);
    lane->load(hf);
    Logits b = prefill(*lane, tokens);
    // Only the order of Q·K's terms differs between the two files.
    EXPECT_LE(relative_rms(b.values, a.values), 1e-6);

    // The HF weights rotated as adjacent pairs (the classic porting bug) part visibly.
    Model wrong = open_model(dir.path / "hf", registry());
    wrong.config.rope_layout = RopeLayout::Normal;
    lane->load(wrong);
    Logits c = prefill(*lane, tokens);
    EXPECT_GE(relative_rms(c.values, a.values), 1e-2);
  }
}

}  // namespace
}  // namespace lockstep::engine
