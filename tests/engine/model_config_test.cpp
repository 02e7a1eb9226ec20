#include "engine/model_config.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/engine/tiny_model.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

using formats::GgufValue;

const FamilyRegistry& registry() {
  static const FamilyRegistry r = FamilyRegistry::load();
  return r;
}

ModelConfig gguf_config(const std::filesystem::path& path) {
  formats::GgufFile f = formats::GgufFile::open(path.string());
  return config_from_gguf(f,
                          registry().require_gguf(*f.get_string("general.architecture"), f.path()));
}

ModelConfig hf_config(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(LOCKSTEP_TEST_DATA_DIR) / "hf" / name;
  formats::HfConfig hf = formats::read_hf_config(p);
  return config_from_hf(hf, registry().require_hf(hf.model_type, p.string()), p.string());
}

TEST(ModelConfig, Stories260K) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  ModelConfig c = gguf_config(test::shared_models() / "stories260K.gguf");
  EXPECT_EQ(c.family, "llama");
  EXPECT_EQ(c.format, FileFormat::Gguf);
  EXPECT_EQ(c.hidden, 64u);
  EXPECT_EQ(c.layers, 5u);
  EXPECT_EQ(c.heads, 8u);
  EXPECT_EQ(c.kv_heads, 4u);
  EXPECT_EQ(c.head_dim, 8u);
  EXPECT_EQ(c.ffn, 172u);
  EXPECT_EQ(c.vocab, 512u);
  EXPECT_EQ(c.context, 2048u);
  EXPECT_EQ(c.rope_dims, 8u);
  EXPECT_EQ(c.rope_base, 10000.0);  // key absent: the default
  EXPECT_NEAR(c.norm_eps, 1e-5, 1e-12);
  EXPECT_EQ(c.norm, NormKind::Rms);
  EXPECT_EQ(c.rope_layout, RopeLayout::Normal);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.tied_embeddings);  // output.weight is a separate tensor
  EXPECT_EQ(c.q_dim(), 64u);
  EXPECT_EQ(c.kv_dim(), 32u);
  EXPECT_EQ(c.qkv_dim(), 128u);
  EXPECT_EQ(c.gqa_ratio(), 2u);
  EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(8.0));
  EXPECT_FALSE(c.rope_scaling);
}

TEST(ModelConfig, QuantRefLlama) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"ref-llama-f32.gguf", "ref-llama-Q4_K_M.gguf"}) {
    SCOPED_TRACE(name);
    ModelConfig c = gguf_config(test::shared_models() / "quant-ref" / name);
    EXPECT_EQ(c.hidden, 256u);
    EXPECT_EQ(c.layers, 2u);
    EXPECT_EQ(c.heads, 8u);
    EXPECT_EQ(c.kv_heads, 2u);
    EXPECT_EQ(c.head_dim, 32u);
    EXPECT_EQ(c.gqa_ratio(), 4u);
    EXPECT_EQ(c.ffn, 768u);
    EXPECT_EQ(c.vocab, 512u);
    EXPECT_NEAR(c.norm_eps, 1e-6, 1e-12);
    EXPECT_EQ(c.rope_base, 10000.0);
    EXPECT_EQ(c.rope_layout, RopeLayout::Normal);
    EXPECT_FALSE(c.tied_embeddings);
  }
}

TEST(ModelConfig, QuantRefQwen2) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  for (const char* name : {"ref-qwen2-f32.gguf", "ref-qwen2-Q4_K_M.gguf"}) {
    SCOPED_TRACE(name);
    ModelConfig c = gguf_config(test::shared_models() / "quant-ref" / name);
    EXPECT_EQ(c.family, "qwen2");
    EXPECT_EQ(c.hidden, 256u);
    EXPECT_EQ(c.heads, 4u);
    EXPECT_EQ(c.kv_heads, 2u);
    EXPECT_EQ(c.head_dim, 64u);
    EXPECT_EQ(c.ffn, 512u);
    EXPECT_EQ(c.qkv_dim(), 256u + 2 * 128u);
    EXPECT_TRUE(c.qkv_bias);
    EXPECT_FALSE(c.attn_output_bias);
    EXPECT_EQ(c.rope_layout, RopeLayout::Neox);
    EXPECT_EQ(c.rope_base, 1e6);
    EXPECT_TRUE(c.tied_embeddings);  // no output.weight
  }
}

TEST(ModelConfig, HfLlamaWithLlama3RopeScaling) {
  ModelConfig c = hf_config("config-llama.json");
  EXPECT_EQ(c.format, FileFormat::Safetensors);
  EXPECT_EQ(c.hidden, 2048u);
  EXPECT_EQ(c.heads, 32u);
  EXPECT_EQ(c.kv_heads, 8u);
  EXPECT_EQ(c.head_dim, 64u);
  EXPECT_EQ(c.vocab, 128256u);
  EXPECT_EQ(c.rope_base, 500000.0);
  EXPECT_EQ(c.rope_layout, RopeLayout::Neox);  // HF rows are unpermuted
  EXPECT_TRUE(c.tied_embeddings);
  ASSERT_TRUE(c.rope_scaling);
  EXPECT_EQ(c.rope_scaling->type, "llama3");
  EXPECT_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->original_context, 8192u);
  EXPECT_EQ(c.rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling->high_freq_factor, 4.0);
}

TEST(ModelConfig, HfQwen2ImplicitBiasAndUnusedWindow) {
  ModelConfig c = hf_config("config-qwen2.json");
  EXPECT_EQ(c.hidden, 896u);
  EXPECT_EQ(c.heads, 14u);
  EXPECT_EQ(c.kv_heads, 2u);
  EXPECT_EQ(c.head_dim, 64u);
  EXPECT_EQ(c.gqa_ratio(), 7u);
  EXPECT_TRUE(c.qkv_bias);  // not written in config.json: a family trait
  EXPECT_FALSE(c.attn_output_bias);
  EXPECT_EQ(c.rope_base, 1e6);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_FALSE(c.sliding_window);  // use_sliding_window is false
}

TEST(ModelConfig, HfQwen3HeadDimAndQkNorm) {
  ModelConfig c = hf_config("config-qwen3.json");
  EXPECT_EQ(c.hidden, 1024u);
  EXPECT_EQ(c.head_dim, 128u);  // explicit, not hidden / heads = 64
  EXPECT_EQ(c.q_dim(), 2048u);
  EXPECT_EQ(c.kv_dim(), 1024u);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);  // attention_bias: false
}

TEST(ModelConfig, HfMistralSlidingWindow) {
  ModelConfig c = hf_config("config-mistral.json");
  EXPECT_EQ(c.family, "mistral");
  EXPECT_EQ(c.sliding_window, 4096u);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_NEAR(c.norm_eps, 1e-5, 1e-15);
}

TEST(ModelConfig, HfGraniteMultipliers) {
  ModelConfig c = hf_config("config-granite.json");
  EXPECT_EQ(c.embedding_multiplier, 12.0);
  EXPECT_EQ(c.residual_multiplier, 0.22);
  EXPECT_EQ(c.attention_scale(), 0.015625);
  EXPECT_EQ(c.logits_scaling, 8.0);
  EXPECT_EQ(c.vocab, 49155u);
}

TEST(ModelConfig, HfStarcoder2) {
  ModelConfig c = hf_config("config-starcoder2.json");
  EXPECT_EQ(c.norm, NormKind::Layer);
  EXPECT_EQ(c.activation, Activation::Gelu);
  EXPECT_TRUE(c.qkv_bias);  // use_bias: true
  EXPECT_TRUE(c.attn_output_bias);
  EXPECT_TRUE(c.ffn_bias);
  EXPECT_EQ(c.kv_heads, 2u);
  EXPECT_EQ(c.gqa_ratio(), 12u);
  EXPECT_NEAR(c.norm_eps, 1e-5, 1e-15);
  EXPECT_EQ(c.sliding_window, 4096u);
  EXPECT_TRUE(c.tied_embeddings);  // family default: the file does not say
}

TEST(ModelConfig, HfUseBiasFalseDropsStarcoder2Biases) {
  formats::HfConfig hf = formats::parse_hf_config(
      R"({"model_type": "starcoder2", "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
          "vocab_size": 100, "use_bias": false, "tie_word_embeddings": false})",
      "sc.json");
  ModelConfig c = config_from_hf(hf, *registry().find_hf("starcoder2"), "sc.json");
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.ffn_bias);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_NEAR(c.norm_eps, 1e-5, 1e-15);  // the family's default

  // StarCoder2's MLP is the tanh GELU; the erf "gelu" is a different function.
  formats::HfConfig erf = hf;
  erf.hidden_act = "gelu";
  Error e = test::expect_error(
      [&] { config_from_hf(erf, *registry().find_hf("starcoder2"), "sc.json"); });
  EXPECT_NE(std::string(e.what()).find("\"hidden_act\""), std::string::npos) << e.what();
}

TEST(ModelConfig, GgufGraniteMultipliersFromTheirKeys) {
  test::TinySpec s;
  s.arch = "granite";
  s.extra_kv = {{"granite.embedding_scale", GgufValue::f32(12.0f)},
                {"granite.residual_scale", GgufValue::f32(0.25f)},
                {"granite.attention.scale", GgufValue::f32(0.125f)},
                {"granite.logit_scale", GgufValue::f32(8.0f)}};
  ModelConfig c = gguf_config(test::write_tiny_gguf(test::scratch_dir("granite") / "g.gguf", s));
  EXPECT_EQ(c.family, "granite");
  EXPECT_EQ(c.embedding_multiplier, 12.0);
  EXPECT_EQ(c.residual_multiplier, 0.25);
  EXPECT_EQ(c.attention_scale(), 0.125);
  EXPECT_EQ(c.logits_scaling, 8.0);
}

TEST(ModelConfig, GgufRopeScalingAndDefaults) {
  test::TinySpec s;
  s.extra_kv = {{"llama.rope.freq_base", GgufValue::f32(500000.0f)},
                {"llama.rope.scaling.type", GgufValue::str("linear")},
                {"llama.rope.scaling.factor", GgufValue::f32(4.0f)}};
  ModelConfig c = gguf_config(test::write_tiny_gguf(test::scratch_dir("rope") / "r.gguf", s));
  EXPECT_EQ(c.rope_base, 500000.0);
  ASSERT_TRUE(c.rope_scaling);
  EXPECT_EQ(c.rope_scaling->type, "linear");
  EXPECT_EQ(c.rope_scaling->factor, 4.0);
  EXPECT_EQ(c.rope_dims, c.head_dim);  // rope.dimension_count absent
  EXPECT_EQ(c.vocab, 40u);             // from tokenizer.ggml.tokens
}

// A bad value must fail naming the file and the GGUF key.
struct BadGgufCase {
  std::string label;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::string key;
  friend void PrintTo(const BadGgufCase& c, std::ostream* os) { *os << c.label; }
};

class ModelConfigBadGguf : public ::testing::TestWithParam<BadGgufCase> {};

TEST_P(ModelConfigBadGguf, NamesFileAndKey) {
  test::TinySpec s;
  s.extra_kv = GetParam().kv;
  std::filesystem::path p = test::write_tiny_gguf(test::scratch_dir("badcfg") / "bad.gguf", s);
  formats::GgufFile f = formats::GgufFile::open(p.string());
  Error e = test::expect_error([&] { config_from_gguf(f, *registry().find_name("llama")); });
  EXPECT_EQ(e.file(), p.string());
  EXPECT_NE(std::string(e.what()).find(GetParam().key), std::string::npos) << e.what();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ModelConfigBadGguf,
    ::testing::Values(
        BadGgufCase{"kv_heads_not_dividing",
                    {{"llama.attention.head_count_kv", GgufValue::u32(3)}},
                    "llama.attention.head_count_kv"},
        BadGgufCase{"zero_layers", {{"llama.block_count", GgufValue::u32(0)}}, "llama.block_count"},
        BadGgufCase{"hidden_not_multiple_of_heads",
                    {{"llama.embedding_length", GgufValue::u32(30)}},
                    "llama.embedding_length"},
        BadGgufCase{"layers_as_string",
                    {{"llama.block_count", GgufValue::str("two")}},
                    "llama.block_count"},
        BadGgufCase{"odd_rope_dims",
                    {{"llama.rope.dimension_count", GgufValue::u32(7)}},
                    "llama.rope.dimension_count"},
        BadGgufCase{"rope_dims_above_head_dim",
                    {{"llama.rope.dimension_count", GgufValue::u32(16)}},
                    "llama.rope.dimension_count"},
        BadGgufCase{"negative_eps",
                    {{"llama.attention.layer_norm_rms_epsilon", GgufValue::f32(-1.0f)}},
                    "llama.attention.layer_norm_rms_epsilon"},
        BadGgufCase{"zero_rope_base",
                    {{"llama.rope.freq_base", GgufValue::f32(0.0f)}},
                    "llama.rope.freq_base"},
        BadGgufCase{"scaling_without_factor",
                    {{"llama.rope.scaling.type", GgufValue::str("yarn")}},
                    "llama.rope.scaling.factor"},
        BadGgufCase{"value_length_differs",
                    {{"llama.attention.value_length", GgufValue::u32(4)}},
                    "llama.attention.value_length"}),
    [](const auto& info) { return info.param.label; });

TEST(ModelConfig, GgufFamilyMustCoverTheArchitecture) {
  test::TinySpec s;
  s.arch = "qwen2";
  s.qkv_bias = true;
  std::filesystem::path p = test::write_tiny_gguf(test::scratch_dir("arch") / "q.gguf", s);
  formats::GgufFile f = formats::GgufFile::open(p.string());
  Error e = test::expect_error([&] { config_from_gguf(f, *registry().find_name("llama")); });
  EXPECT_NE(std::string(e.what()).find("general.architecture"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("\"qwen2\""), std::string::npos) << e.what();
}

TEST(ModelConfig, GgufMissingRequiredKeyNamesIt) {
  // A file whose metadata lacks feed_forward_length: written by hand, without TinySpec's keys.
  std::filesystem::path p = test::scratch_dir("nokey") / "m.gguf";
  {
    formats::GgufWriter w(p.string());
    w.set("general.architecture", GgufValue::str("llama"));
    w.set("llama.block_count", GgufValue::u32(1));
    w.set("llama.embedding_length", GgufValue::u32(8));
    w.set("llama.attention.head_count", GgufValue::u32(2));
    w.set("llama.vocab_size", GgufValue::u32(10));
    w.finish();
  }
  formats::GgufFile f = formats::GgufFile::open(p.string());
  Error e = test::expect_error([&] { config_from_gguf(f, *registry().find_name("llama")); });
  EXPECT_NE(std::string(e.what()).find("llama.feed_forward_length"), std::string::npos) << e.what();
}

TEST(ModelConfig, HfBadValuesNameTheKey) {
  const std::string base =
      R"("model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
         "intermediate_size": 96, "vocab_size": 100)";
  struct Case {
    std::string extra, key;
  } cases[] = {
      {R"("num_attention_heads": 8, "num_key_value_heads": 3)", "num_key_value_heads"},
      {R"("num_attention_heads": 6)", "hidden_size"},
      {R"("num_attention_heads": 8, "rms_norm_eps": 0)", "rms_norm_eps"},
      {R"("num_attention_heads": 8, "rope_theta": -5)", "rope_theta"},
      {R"("num_attention_heads": 8, "hidden_act": "gelu")", "hidden_act"},
      {R"("num_attention_heads": 8, "rope_scaling": {"rope_type": "linear"})",
       "rope_scaling.factor"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.extra);
    // The HF reader refuses some of these itself; either way the key must be named.
    Error e = test::expect_error([&] {
      formats::HfConfig hf = formats::parse_hf_config("{" + base + ", " + c.extra + "}", "c.json");
      config_from_hf(hf, *registry().find_name("llama"), "c.json");
    });
    EXPECT_EQ(e.file(), "c.json");
    EXPECT_NE(std::string(e.what()).find("\"" + c.key + "\""), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lockstep::engine
