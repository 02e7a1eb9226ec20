#include "formats/hf_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path hf_data(const std::string& family) {
  return fs::path(LOCKSTEP_TEST_DATA_DIR) / "hf" / ("config-" + family + ".json");
}

struct Expected {
  const char* family;
  const char* architecture;
  uint64_t hidden, layers, heads, kv_heads, ffn, vocab, head_dim;
  double eps;
  std::optional<double> rope_theta;
  std::optional<bool> tied;
  const char* act;
  std::optional<uint64_t> sliding_window;
  const char* dtype;
};

class HfConfigFamilies : public ::testing::TestWithParam<Expected> {};

TEST_P(HfConfigFamilies, ReadsTheFieldsThatMatter) {
  const Expected& e = GetParam();
  HfConfig c = read_hf_config(hf_data(e.family));
  EXPECT_EQ(c.model_type, e.family);
  ASSERT_EQ(c.architectures.size(), 1u);
  EXPECT_EQ(c.architectures[0], e.architecture);
  EXPECT_EQ(c.hidden_size, e.hidden);
  EXPECT_EQ(c.num_hidden_layers, e.layers);
  EXPECT_EQ(c.num_attention_heads, e.heads);
  EXPECT_EQ(c.num_key_value_heads, e.kv_heads);
  EXPECT_TRUE(c.num_key_value_heads_given);
  EXPECT_EQ(c.intermediate_size, e.ffn);
  EXPECT_EQ(c.vocab_size, e.vocab);
  EXPECT_EQ(c.head_dim_or_default(), e.head_dim);
  ASSERT_TRUE(c.norm_eps().has_value());
  EXPECT_DOUBLE_EQ(*c.norm_eps(), e.eps);
  EXPECT_EQ(c.rope_theta, e.rope_theta);
  EXPECT_EQ(c.tie_word_embeddings, e.tied);
  EXPECT_EQ(c.hidden_act, std::optional<std::string>(e.act));
  EXPECT_EQ(c.sliding_window, e.sliding_window);
  EXPECT_EQ(c.torch_dtype, std::optional<std::string>(e.dtype));
}

INSTANTIATE_TEST_SUITE_P(
    Families, HfConfigFamilies,
    ::testing::Values(Expected{"llama", "LlamaForCausalLM", 2048, 16, 32, 8, 8192, 128256, 64, 1e-5,
                               500000.0, true, "silu", std::nullopt, "bfloat16"},
                      Expected{"qwen2", "Qwen2ForCausalLM", 896, 24, 14, 2, 4864, 151936, 64, 1e-6,
                               1e6, true, "silu", 32768, "bfloat16"},
                      Expected{"qwen3", "Qwen3ForCausalLM", 1024, 28, 16, 8, 3072, 151936, 128,
                               1e-6, 1e6, true, "silu", std::nullopt, "bfloat16"},
                      Expected{"mistral", "MistralForCausalLM", 4096, 32, 32, 8, 14336, 32000, 128,
                               1e-5, 10000.0, false, "silu", 4096, "bfloat16"},
                      Expected{"granite", "GraniteForCausalLM", 2048, 40, 32, 8, 8192, 49155, 64,
                               1e-5, 10000.0, true, "silu", std::nullopt, "bfloat16"},
                      Expected{"starcoder2", "Starcoder2ForCausalLM", 3072, 30, 24, 2, 12288, 49152,
                               128, 1e-5, 999999.4420358813, std::nullopt, "gelu_pytorch_tanh",
                               4096, "float32"}),
    [](const auto& param_info) { return std::string(param_info.param.family); });

TEST(HfConfig, FamilySpecificFields) {
  HfConfig llama = read_hf_config(hf_data("llama"));
  ASSERT_TRUE(llama.rope_scaling.has_value());
  EXPECT_EQ(llama.rope_scaling->type, "llama3");
  EXPECT_EQ(llama.rope_scaling->factor, 32.0);
  EXPECT_EQ(llama.rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(llama.rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(llama.rope_scaling->original_max_position_embeddings, 8192u);
  EXPECT_EQ(llama.attention_bias, false);
  EXPECT_EQ(llama.mlp_bias, false);
  EXPECT_EQ(llama.head_dim, 64u);
  EXPECT_EQ(llama.max_position_embeddings, 131072u);

  HfConfig qwen2 = read_hf_config(hf_data("qwen2"));
  EXPECT_EQ(qwen2.attention_bias, std::nullopt) << "Qwen2's biases are implicit";
  EXPECT_EQ(qwen2.use_sliding_window, false);
  EXPECT_EQ(qwen2.head_dim, std::nullopt);

  HfConfig qwen3 = read_hf_config(hf_data("qwen3"));
  EXPECT_EQ(qwen3.rope_scaling, std::nullopt) << "null is absent";
  EXPECT_EQ(qwen3.head_dim, 128u) << "head_dim differs from hidden / heads (64)";

  HfConfig granite = read_hf_config(hf_data("granite"));
  EXPECT_EQ(granite.embedding_multiplier, 12.0);
  EXPECT_EQ(granite.residual_multiplier, 0.22);
  EXPECT_EQ(granite.attention_multiplier, 0.015625);
  EXPECT_EQ(granite.logits_scaling, 8.0);

  HfConfig sc2 = read_hf_config(hf_data("starcoder2"));
  EXPECT_EQ(sc2.use_bias, true);
  EXPECT_EQ(sc2.norm_epsilon, 1e-5);
  EXPECT_EQ(sc2.rms_norm_eps, std::nullopt);
  EXPECT_EQ(sc2.embedding_multiplier, std::nullopt);
}

TEST(HfConfig, DefaultsAndAliases) {
  HfConfig c = parse_hf_config(
      R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 8, "intermediate_size": 172, "vocab_size": 512,
          "dtype": "float16", "rope_scaling": {"type": "linear", "factor": 2},
          "architectures": null, "sliding_window": null})",
      "c.json");
  EXPECT_EQ(c.num_key_value_heads, 8u);
  EXPECT_FALSE(c.num_key_value_heads_given);
  EXPECT_EQ(c.head_dim_or_default(), 8u);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.rope_scaling->type, "linear");
  EXPECT_EQ(c.rope_scaling->factor, 2.0);
  EXPECT_TRUE(c.architectures.empty());
  EXPECT_EQ(c.rope_theta, std::nullopt);
  EXPECT_EQ(c.norm_eps(), std::nullopt);
}

class HfConfigMissingKey : public ::testing::TestWithParam<const char*> {};

TEST_P(HfConfigMissingKey, NamesFileAndKey) {
  json j = json::parse(test::read_file(hf_data("mistral")));
  j.erase(GetParam());
  Error e = test::expect_error([&] { parse_hf_config(j.dump(), "mistral/config.json"); });
  EXPECT_EQ(e.file(), "mistral/config.json");
  EXPECT_NE(std::string(e.what()).find("\"" + std::string(GetParam()) + "\""), std::string::npos)
      << e.what();
}

INSTANTIATE_TEST_SUITE_P(Required, HfConfigMissingKey,
                         ::testing::Values("model_type", "hidden_size", "num_hidden_layers",
                                           "num_attention_heads", "intermediate_size",
                                           "vocab_size"));

struct BadValue {
  const char* label;
  const char* key;
  json value;
  const char* message_part;
};

class HfConfigBadValue : public ::testing::TestWithParam<BadValue> {};

TEST_P(HfConfigBadValue, NamesFileAndKey) {
  const BadValue& c = GetParam();
  json j = json::parse(test::read_file(hf_data("llama")));
  j[c.key] = c.value;
  Error e = test::expect_error([&] { parse_hf_config(j.dump(), "llama/config.json"); });
  std::string msg = e.what();
  EXPECT_EQ(e.file(), "llama/config.json");
  EXPECT_NE(msg.find(c.message_part), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HfConfigBadValue,
    ::testing::Values(
        BadValue{"hidden_string", "hidden_size", "2048", "\"hidden_size\" to be an integer"},
        BadValue{"hidden_float", "hidden_size", 2048.0, "\"hidden_size\" to be an integer"},
        BadValue{"hidden_negative", "hidden_size", -1, "\"hidden_size\""},
        BadValue{"hidden_zero", "hidden_size", 0, "\"hidden_size\" to be an integer in 1.."},
        BadValue{"vocab_absurd", "vocab_size", 1ull << 40, "\"vocab_size\""},
        BadValue{"layers_absurd", "num_hidden_layers", 1ull << 32, "\"num_hidden_layers\""},
        BadValue{"kv_not_divisor", "num_key_value_heads", 7, "to divide num_attention_heads"},
        BadValue{"kv_too_many", "num_key_value_heads", 64, "\"num_key_value_heads\""},
        BadValue{"model_type_number", "model_type", 3, "\"model_type\" to be a string"},
        BadValue{"model_type_empty", "model_type", "", "non-empty"},
        BadValue{"architectures_string", "architectures", "LlamaForCausalLM", "\"architectures\""},
        BadValue{"architectures_numbers", "architectures", json::array({1}),
                 "\"architectures\" to be a string"},
        BadValue{"eps_string", "rms_norm_eps", "1e-5", "\"rms_norm_eps\" to be a finite number"},
        BadValue{"theta_bool", "rope_theta", true, "\"rope_theta\""},
        BadValue{"tie_int", "tie_word_embeddings", 1, "\"tie_word_embeddings\" to be true"},
        BadValue{"bias_string", "attention_bias", "false", "\"attention_bias\""},
        BadValue{"act_number", "hidden_act", 1, "\"hidden_act\""},
        BadValue{"window_negative", "sliding_window", -4096, "\"sliding_window\""},
        BadValue{"multiplier_string", "logits_scaling", "8", "\"logits_scaling\""},
        BadValue{"scaling_array", "rope_scaling", json::array({1}), "\"rope_scaling\""},
        BadValue{"scaling_no_type", "rope_scaling", json{{"factor", 8.0}}, "\"rope_scaling.type\""},
        BadValue{"scaling_factor_string", "rope_scaling",
                 json{{"rope_type", "llama3"}, {"factor", "8"}}, "\"rope_scaling.factor\""},
        BadValue{"head_dim_zero", "head_dim", 0, "\"head_dim\""},
        BadValue{"dtype_number", "torch_dtype", 16, "\"torch_dtype\""}),
    [](const auto& param_info) { return std::string(param_info.param.label); });

TEST(HfConfig, HiddenSizeMustSplitIntoHeadsWithoutHeadDim) {
  json j = json::parse(test::read_file(hf_data("mistral")));
  j["hidden_size"] = 4100;
  Error e = test::expect_error([&] { parse_hf_config(j.dump(), "c.json"); });
  EXPECT_NE(std::string(e.what()).find("multiple of num_attention_heads"), std::string::npos);
  j["head_dim"] = 128;
  EXPECT_EQ(parse_hf_config(j.dump(), "c.json").head_dim_or_default(), 128u);
}

TEST(HfConfig, MalformedJsonAndTopLevel) {
  Error e = test::expect_error([] { parse_hf_config("{\"model_type\": \"llama\",, }", "c.json"); });
  EXPECT_EQ(e.offset(), 23u);
  EXPECT_THROW(parse_hf_config("[]", "c.json"), Error);
  EXPECT_THROW(parse_hf_config("", "c.json"), Error);
  std::string deep = "{\"a\": " + std::string(100, '[') + std::string(100, ']') + "}";
  EXPECT_THROW(parse_hf_config(deep, "c.json"), Error);
  fs::path dir = test::scratch_dir("hf");
  EXPECT_THROW(read_hf_config(dir / "config.json"), Error);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lockstep::formats
