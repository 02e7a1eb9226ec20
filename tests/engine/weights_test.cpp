#include "engine/weights.h"

#include <gtest/gtest.h>

#include "tests/engine/tiny_model.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

const FamilyRegistry& registry() {
  static const FamilyRegistry r = FamilyRegistry::load();
  return r;
}

// Every bound tensor's bytes must be exactly its type's size for its dims, inside the file.
void expect_consistent(const TensorRef& t, const formats::GgufFile& f) {
  SCOPED_TRACE(t.name);
  const formats::GgufTensorInfo* info = f.find_tensor(t.name);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(t.type, info->type);
  EXPECT_EQ(t.data.size(), *formats::ggml_bytes(t.type, t.elements()));
  EXPECT_EQ(t.data.data(), f.tensor_data(*info).data());
}

TEST(Weights, Stories260K) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Model m = open_model(test::shared_models() / "stories260K.gguf", registry());
  const Weights& w = m.weights;
  ASSERT_EQ(w.layers.size(), 5u);
  EXPECT_FALSE(w.tied_embeddings);
  ASSERT_TRUE(w.token_embd && w.output && w.output_norm);
  EXPECT_EQ(w.output->name, "output.weight");
  EXPECT_EQ(w.token_embd->dims, (std::vector<uint64_t>{64, 512}));
  for (uint32_t L = 0; L < 5; ++L) {
    const LayerWeights& l = w.layers[L];
    ASSERT_TRUE(l.attn_q && l.attn_k && l.attn_v && l.attn_output && l.ffn_gate && l.ffn_up &&
                l.ffn_down && l.attn_norm && l.ffn_norm);
    EXPECT_EQ(l.attn_q->name, "blk." + std::to_string(L) + ".attn_q.weight");
    EXPECT_EQ(l.attn_k->dims, (std::vector<uint64_t>{64, 32}));
    EXPECT_EQ(l.ffn_gate->dims, (std::vector<uint64_t>{64, 172}));
    EXPECT_EQ(l.ffn_down->dims, (std::vector<uint64_t>{172, 64}));
    EXPECT_EQ(l.ffn_up->type, formats::GgmlType::F32);
    EXPECT_FALSE(l.attn_q_bias);  // llama: no QKV bias
    EXPECT_FALSE(l.attn_norm_bias);
    expect_consistent(*l.ffn_down, *m.gguf);
  }
  // 2 globals + 9 per layer: every tensor in the file and nothing else.
  size_t bound = 3;
  for (const auto& l : w.layers)
    for (const auto& r : kWeightRoles)
      if (r.per_layer && w.find(r.role, static_cast<uint32_t>(&l - w.layers.data()))) ++bound;
  EXPECT_EQ(bound, m.gguf->tensors().size());
}

TEST(Weights, QuantRefLlamaMixedTypes) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Model m = open_model(test::shared_models() / "quant-ref" / "ref-llama-Q4_K_M.gguf", registry());
  std::set<formats::GgmlType> types;
  for (WeightRole r : required_roles(m.config))
    for (uint32_t L = 0; L < m.config.layers; ++L) {
      const TensorRef* t = m.weights.find(r, L);
      ASSERT_NE(t, nullptr) << weight_role_name(r);
      expect_consistent(*t, *m.gguf);
      types.insert(t->type);
    }
  // llama.cpp's Q4_K_M mix: Q4_K matrices, Q6_K for some, F32 norms.
  EXPECT_TRUE(types.count(formats::GgmlType::Q4_K));
  EXPECT_TRUE(types.count(formats::GgmlType::Q6_K));
  EXPECT_TRUE(types.count(formats::GgmlType::F32));
}

TEST(Weights, QuantRefQwen2TiedWithBiases) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Model m = open_model(test::shared_models() / "quant-ref" / "ref-qwen2-f32.gguf", registry());
  const Weights& w = m.weights;
  EXPECT_TRUE(w.tied_embeddings);
  ASSERT_TRUE(w.output);
  EXPECT_EQ(w.output->name, "token_embd.weight");
  EXPECT_EQ(w.output->data.data(), w.token_embd->data.data());
  for (const LayerWeights& l : w.layers) {
    ASSERT_TRUE(l.attn_q_bias && l.attn_k_bias && l.attn_v_bias);
    EXPECT_EQ(l.attn_q_bias->dims, (std::vector<uint64_t>{256}));
    EXPECT_EQ(l.attn_k_bias->dims, (std::vector<uint64_t>{128}));
    EXPECT_FALSE(l.attn_output_bias);
  }
}

TEST(Weights, SyntheticStarcoder2) {
  test::TinySpec s = test::TinySpec::starcoder2();
  s.tied = true;
  Model m = open_model(test::write_tiny_gguf(test::scratch_dir("sc2") / "sc2.gguf", s), registry());
  for (const LayerWeights& l : m.weights.layers) {
    EXPECT_FALSE(l.ffn_gate);
    ASSERT_TRUE(l.ffn_up_bias && l.ffn_down_bias && l.attn_norm_bias && l.ffn_norm_bias &&
                l.attn_output_bias);
    EXPECT_EQ(l.ffn_up_bias->dims, (std::vector<uint64_t>{48}));
  }
  ASSERT_TRUE(m.weights.output_norm_bias);
  EXPECT_EQ(m.weights.output->name, "token_embd.weight");
}

// Each broken file must fail naming the tensor and, for shapes, both shapes.
struct BadTensorCase {
  std::string label;
  std::function<void(test::TinySpec&)> edit;
  std::vector<std::string> expect_in_message;
  friend void PrintTo(const BadTensorCase& c, std::ostream* os) { *os << c.label; }
};

class WeightsBadFile : public ::testing::TestWithParam<BadTensorCase> {};

TEST_P(WeightsBadFile, NamesTheTensor) {
  test::TinySpec s;
  GetParam().edit(s);
  std::filesystem::path p = test::write_tiny_gguf(test::scratch_dir("badw") / "bad.gguf", s);
  Error e = test::expect_error([&] { open_model(p, registry()); });
  std::string msg = e.what();
  EXPECT_NE(msg.find(p.string()), std::string::npos) << msg;
  for (const std::string& part : GetParam().expect_in_message)
    EXPECT_NE(msg.find(part), std::string::npos) << "missing \"" << part << "\" in: " << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, WeightsBadFile,
    ::testing::Values(
        BadTensorCase{"missing_layer_tensor",
                      [](test::TinySpec& s) { s.drop = {"blk.1.attn_k.weight"}; },
                      {"blk.1.attn_k.weight [32, 16]", "found none"}},
        BadTensorCase{"missing_embedding",
                      [](test::TinySpec& s) { s.drop = {"token_embd.weight"}; },
                      {"token_embd.weight", "found none"}},
        BadTensorCase{"wrong_shape",
                      [](test::TinySpec& s) {
                        s.reshape = {{"blk.0.ffn_up.weight", {32, 50}}};
                      },
                      {"blk.0.ffn_up.weight of shape [32, 48]", "found shape [32, 50]"}},
        BadTensorCase{"transposed",
                      [](test::TinySpec& s) {
                        s.reshape = {{"blk.1.ffn_down.weight", {32, 48}}};
                      },
                      {"blk.1.ffn_down.weight of shape [48, 32]", "found shape [32, 48]"}},
        BadTensorCase{"wrong_rank",
                      [](test::TinySpec& s) {
                        s.reshape = {{"output_norm.weight", {32, 1}}};
                      },
                      {"output_norm.weight of shape [32]", "found shape [32, 1]"}},
        BadTensorCase{"rope_freqs_wrong_length",
                      [](test::TinySpec& s) {
                        s.rope_freqs = true;
                        s.reshape = {{"rope_freqs.weight", {8}}};
                      },
                      {"rope_freqs.weight of shape [4]", "found shape [8]"}},
        BadTensorCase{"type_without_codec",
                      [](test::TinySpec& s) {
                        s.retype = {{"blk.0.attn_q.weight", formats::GgmlType::Q8_1}};
                      },
                      {"blk.0.attn_q.weight", "Q8_1"}},
        // Qwen2 always has QKV biases: a file without them is broken.
        BadTensorCase{"qwen2_without_bias",
                      [](test::TinySpec& s) { s.arch = "qwen2"; },
                      {"blk.0.attn_q.bias", "found none"}},
        BadTensorCase{"qwen3_without_qk_norm",
                      [](test::TinySpec& s) { s.arch = "qwen3"; },
                      {"blk.0.attn_q_norm.weight", "found none"}},
        BadTensorCase{"unknown_architecture",
                      [](test::TinySpec& s) { s.arch = "gpt2"; },
                      {"\"gpt2\"", "granite, llama, qwen2, qwen3, starcoder2"}}),
    [](const auto& info) { return info.param.label; });

// An HF checkpoint: config.json + model.safetensors, [out, in] matrices read as ggml [in, out].
void write_hf_model(const std::filesystem::path& dir, bool with_lm_head, bool bad_shape = false) {
  test::write_file(dir / "config.json", R"({
    "model_type": "qwen3", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 48, "vocab_size": 40,
    "tie_word_embeddings": false})");
  formats::SafetensorsWriter w;
  uint32_t seed = 7;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    w.add_f32(name, shape, test::random_nonzero(n, seed++));
  };
  add("model.embed_tokens.weight", {40, 32});
  add("model.norm.weight", {32});
  if (with_lm_head) add("lm_head.weight", {40, 32});
  for (int L = 0; L < 2; ++L) {
    std::string p = "model.layers." + std::to_string(L) + ".";
    add(p + "input_layernorm.weight", {32});
    add(p + "self_attn.q_proj.weight", {64, 32});
    add(p + "self_attn.k_proj.weight", {32, 32});
    add(p + "self_attn.v_proj.weight", {32, 32});
    add(p + "self_attn.q_norm.weight", {16});
    add(p + "self_attn.k_norm.weight", {16});
    add(p + "self_attn.o_proj.weight", {32, bad_shape ? 32u : 64u});
    add(p + "post_attention_layernorm.weight", {32});
    add(p + "mlp.gate_proj.weight", {48, 32});
    add(p + "mlp.up_proj.weight", {48, 32});
    add(p + "mlp.down_proj.weight", {32, 48});
  }
  w.write(dir / "model.safetensors");
}

TEST(Weights, SafetensorsQwen3) {
  std::filesystem::path dir = test::scratch_dir("hf_qwen3");
  write_hf_model(dir, true);
  Model m = open_model(dir, registry());
  EXPECT_EQ(m.config.format, FileFormat::Safetensors);
  EXPECT_EQ(m.config.rope_layout, RopeLayout::Neox);
  const LayerWeights& l = m.weights.layers[1];
  ASSERT_TRUE(l.attn_q && l.attn_q_norm && l.attn_output);
  EXPECT_EQ(l.attn_q->name, "model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(l.attn_q->dims, (std::vector<uint64_t>{32, 64}));  // HF [64, 32] in ggml order
  EXPECT_EQ(l.attn_output->dims, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(l.attn_q_norm->dims, (std::vector<uint64_t>{16}));
  EXPECT_EQ(l.attn_q->type, formats::GgmlType::F32);
  EXPECT_EQ(l.attn_q->data.size(), 64u * 32u * 4u);
  EXPECT_EQ(m.weights.output->name, "lm_head.weight");
}

TEST(Weights, SafetensorsMissingLmHeadNamesIt) {
  std::filesystem::path dir = test::scratch_dir("hf_nohead");
  write_hf_model(dir, false);
  Error e = test::expect_error([&] { open_model(dir, registry()); });
  EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
}

TEST(Weights, SafetensorsWrongShapeNamesBothShapes) {
  std::filesystem::path dir = test::scratch_dir("hf_shape");
  write_hf_model(dir, true, true);
  Error e = test::expect_error([&] { open_model(dir, registry()); });
  std::string msg = e.what();
  EXPECT_NE(msg.find("model.layers.0.self_attn.o_proj.weight of shape [64, 32]"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("found shape [32, 32]"), std::string::npos) << msg;
}

}  // namespace
}  // namespace lockstep::engine
