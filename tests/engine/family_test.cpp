#include "engine/family.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

using nlohmann::json;

json family_json(const std::string& name) {
  return json::parse(test::read_file(default_families_dir() / (name + ".json")));
}

TEST(Family, RegistryLoadsTheSixFamilies) {
  FamilyRegistry r = FamilyRegistry::load();
  std::vector<std::string> names;
  for (const Family& f : r.families()) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"granite", "llama", "mistral", "qwen2", "qwen3",
                                             "starcoder2"}));
  EXPECT_EQ(r.gguf_architectures(),
            (std::vector<std::string>{"granite", "llama", "qwen2", "qwen3", "starcoder2"}));
  EXPECT_EQ(r.hf_model_types(), (std::vector<std::string>{"granite", "llama", "mistral", "qwen2",
                                                          "qwen3", "starcoder2"}));
  EXPECT_EQ(r.find_gguf("qwen2"), r.find_name("qwen2"));
  EXPECT_EQ(r.find_hf("mistral"), r.find_name("mistral"));
  // llama.cpp writes Mistral 7B GGUFs as "llama"; no GGUF architecture "mistral" exists.
  EXPECT_EQ(r.find_gguf("mistral"), nullptr);
}

struct TraitCase {
  std::string family;
  NormKind norm;
  Activation activation;
  bool qkv_bias, attn_output_bias, ffn_bias, qk_norm;
  RopeLayout gguf_rope;
  bool tied, multipliers, sliding_window;
  friend void PrintTo(const TraitCase& c, std::ostream* os) { *os << c.family; }
};

class FamilyTraitTable : public ::testing::TestWithParam<TraitCase> {};

TEST_P(FamilyTraitTable, MatchTheArchitecture) {
  const TraitCase& c = GetParam();
  FamilyRegistry r = FamilyRegistry::load();
  const Family* f = r.find_name(c.family);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->traits.norm, c.norm);
  EXPECT_EQ(f->traits.activation, c.activation);
  EXPECT_EQ(f->traits.qkv_bias, c.qkv_bias);
  EXPECT_EQ(f->traits.attn_output_bias, c.attn_output_bias);
  EXPECT_EQ(f->traits.ffn_bias, c.ffn_bias);
  EXPECT_EQ(f->traits.qk_norm, c.qk_norm);
  EXPECT_EQ(f->rope_layout(FileFormat::Gguf), c.gguf_rope);
  // HF checkpoints keep unpermuted Q/K rows: split halves whatever the family.
  EXPECT_EQ(f->rope_layout(FileFormat::Safetensors), RopeLayout::Neox);
  EXPECT_EQ(f->traits.tied_embeddings, c.tied);
  EXPECT_EQ(f->multipliers.has_value(), c.multipliers);
  EXPECT_EQ(f->traits.sliding_window, c.sliding_window);
  // The names the manifest and UI print are the file's own spellings.
  json j = family_json(c.family);
  EXPECT_EQ(norm_kind_name(f->traits.norm), j["traits"]["norm"].get<std::string>());
  EXPECT_EQ(activation_name(f->traits.activation), j["traits"]["activation"].get<std::string>());
  EXPECT_EQ(rope_layout_name(f->traits.gguf_rope), j["traits"]["gguf_rope"].get<std::string>());
  // A gated MLP has a gate in both maps; a non-gated one in neither.
  bool gated = c.activation == Activation::SiluGated;
  EXPECT_EQ(!f->tensor_name(FileFormat::Gguf, WeightRole::FfnGate).empty(), gated);
  EXPECT_EQ(!f->tensor_name(FileFormat::Safetensors, WeightRole::FfnGate).empty(), gated);
}

using N = NormKind;
using A = Activation;
using R = RopeLayout;
INSTANTIATE_TEST_SUITE_P(Families, FamilyTraitTable,
                         ::testing::Values(TraitCase{"llama", N::Rms, A::SiluGated, false, false,
                                                     false, false, R::Normal, false, false, false},
                                           TraitCase{"mistral", N::Rms, A::SiluGated, false, false,
                                                     false, false, R::Normal, false, false, true},
                                           TraitCase{"granite", N::Rms, A::SiluGated, false, false,
                                                     false, false, R::Normal, false, true, false},
                                           TraitCase{"qwen2", N::Rms, A::SiluGated, true, false,
                                                     false, false, R::Neox, false, false, true},
                                           TraitCase{"qwen3", N::Rms, A::SiluGated, false, false,
                                                     false, true, R::Neox, false, false, true},
                                           TraitCase{"starcoder2", N::Layer, A::Gelu, true, true,
                                                     true, false, R::Neox, true, false, true}),
                         [](const auto& info) { return info.param.family; });

TEST(Family, TensorNamesPerFormat) {
  FamilyRegistry r = FamilyRegistry::load();
  const Family& llama = *r.find_name("llama");
  EXPECT_EQ(llama.tensor_name(FileFormat::Gguf, WeightRole::AttnQ, 3), "blk.3.attn_q.weight");
  EXPECT_EQ(llama.tensor_name(FileFormat::Safetensors, WeightRole::AttnQ, 3),
            "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(llama.tensor_name(FileFormat::Gguf, WeightRole::TokenEmbd), "token_embd.weight");
  EXPECT_EQ(llama.tensor_name(FileFormat::Safetensors, WeightRole::Output), "lm_head.weight");
  EXPECT_EQ(llama.tensor_name(FileFormat::Gguf, WeightRole::AttnQNorm, 0), "");

  const Family& qwen3 = *r.find_name("qwen3");
  EXPECT_EQ(qwen3.tensor_name(FileFormat::Gguf, WeightRole::AttnKNorm, 1),
            "blk.1.attn_k_norm.weight");
  EXPECT_EQ(qwen3.tensor_name(FileFormat::Safetensors, WeightRole::AttnQNorm, 12),
            "model.layers.12.self_attn.q_norm.weight");

  const Family& sc = *r.find_name("starcoder2");
  EXPECT_EQ(sc.tensor_name(FileFormat::Safetensors, WeightRole::FfnUp, 0),
            "model.layers.0.mlp.c_fc.weight");
  EXPECT_EQ(sc.tensor_name(FileFormat::Safetensors, WeightRole::FfnDownBias, 2),
            "model.layers.2.mlp.c_proj.bias");
  EXPECT_EQ(sc.tensor_name(FileFormat::Safetensors, WeightRole::AttnNormBias, 0),
            "model.layers.0.input_layernorm.bias");
  EXPECT_EQ(sc.tensor_name(FileFormat::Gguf, WeightRole::OutputNormBias), "output_norm.bias");

  const Family& granite = *r.find_name("granite");
  ASSERT_TRUE(granite.multipliers);
  EXPECT_EQ(granite.multipliers->logits, "{arch}.logit_scale");
  EXPECT_EQ(granite.multipliers->attention, "{arch}.attention.scale");
}

TEST(Family, UnknownArchitectureListsTheSupportedOnes) {
  FamilyRegistry r = FamilyRegistry::load();
  Error e = test::expect_error([&] { r.require_gguf("gpt2", "model.gguf"); });
  std::string msg = e.what();
  EXPECT_NE(msg.find("model.gguf"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"gpt2\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("granite, llama, qwen2, qwen3, starcoder2"), std::string::npos) << msg;
  Error h = test::expect_error([&] { r.require_hf("phi3", "config.json"); });
  EXPECT_NE(std::string(h.what()).find("mistral"), std::string::npos) << h.what();
}

// Each broken document must fail naming the file and the key.
struct BadFamilyCase {
  std::string label;
  std::function<void(json&)> edit;
  std::string key;
  friend void PrintTo(const BadFamilyCase& c, std::ostream* os) { *os << c.label; }
};

class BadFamily : public ::testing::TestWithParam<BadFamilyCase> {};

TEST_P(BadFamily, NamesFileAndKey) {
  json j = family_json("llama");
  GetParam().edit(j);
  Error e = test::expect_error([&] { parse_family(j.dump(), "broken.json"); });
  std::string msg = e.what();
  EXPECT_EQ(e.file(), "broken.json");
  EXPECT_NE(msg.find(GetParam().key), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadFamily,
    ::testing::Values(
        BadFamilyCase{"missing_name", [](json& j) { j.erase("name"); }, "\"name\""},
        BadFamilyCase{"bad_norm", [](json& j) { j["traits"]["norm"] = "batch"; }, "traits.norm"},
        BadFamilyCase{"bias_not_bool", [](json& j) { j["traits"]["qkv_bias"] = 1; },
                      "traits.qkv_bias"},
        BadFamilyCase{"no_rope", [](json& j) { j["traits"].erase("gguf_rope"); },
                      "traits.gguf_rope"},
        BadFamilyCase{"unknown_role",
                      [](json& j) { j["tensors"]["gguf"]["attn_qkv"] = "blk.{L}.attn_qkv.weight"; },
                      "tensors.gguf.attn_qkv"},
        BadFamilyCase{"layer_name_without_L",
                      [](json& j) { j["tensors"]["hf"]["attn_q"] = "q_proj.weight"; },
                      "tensors.hf.attn_q"},
        BadFamilyCase{"global_name_with_L",
                      [](json& j) { j["tensors"]["gguf"]["output"] = "blk.{L}.output.weight"; },
                      "tensors.gguf.output"},
        BadFamilyCase{"gate_missing", [](json& j) { j["tensors"]["hf"].erase("ffn_gate"); },
                      "tensors.hf.ffn_gate"},
        // Traits that need a tensor the maps do not name.
        BadFamilyCase{"qk_norm_without_names", [](json& j) { j["traits"]["qk_norm"] = true; },
                      "tensors.gguf.attn_q_norm"},
        BadFamilyCase{"layer_norm_without_bias", [](json& j) { j["traits"]["norm"] = "layer"; },
                      "tensors.gguf.output_norm_bias"},
        BadFamilyCase{"negative_eps", [](json& j) { j["hf_defaults"]["norm_eps"] = -1; },
                      "hf_defaults.norm_eps"},
        BadFamilyCase{"covers_nothing",
                      [](json& j) {
                        j["gguf_architectures"] = json::array();
                        j["hf_model_types"] = json::array();
                      },
                      "gguf_architectures"},
        BadFamilyCase{"multiplier_not_string",
                      [](json& j) {
                        j["multipliers"] = {{"embedding", 1}};
                      },
                      "multipliers.embedding"}),
    [](const auto& info) { return info.param.label; });

TEST(Family, MalformedJsonNamesTheFile) {
  Error e = test::expect_error([] { parse_family("{\"name\": ", "cut.json"); });
  EXPECT_NE(std::string(e.what()).find("cut.json"), std::string::npos) << e.what();
}

TEST(Family, TwoFamiliesClaimingOneArchitectureNameBothFiles) {
  std::filesystem::path dir = test::scratch_dir("family_clash");
  json a = family_json("llama");
  json b = family_json("mistral");
  b["gguf_architectures"] = {"llama"};
  test::write_file(dir / "a.json", a.dump());
  test::write_file(dir / "b.json", b.dump());
  Error e = test::expect_error([&] { FamilyRegistry::load(dir); });
  std::string msg = e.what();
  EXPECT_NE(msg.find("a.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("b.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"llama\""), std::string::npos) << msg;
  std::filesystem::remove_all(dir);
}

TEST(Family, RegistryLoadNamesTheBrokenFile) {
  std::filesystem::path dir = test::scratch_dir("family_broken");
  json a = family_json("qwen2");
  a["traits"]["activation"] = "relu";
  test::write_file(dir / "qwen2.json", a.dump());
  Error e = test::expect_error([&] { FamilyRegistry::load(dir); });
  EXPECT_NE(std::string(e.what()).find("qwen2.json"), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find("traits.activation"), std::string::npos) << e.what();
  std::filesystem::remove_all(dir);
}

TEST(Family, EmptyDirectoryIsAnError) {
  std::filesystem::path dir = test::scratch_dir("family_empty");
  Error e = test::expect_error([&] { FamilyRegistry::load(dir); });
  EXPECT_NE(std::string(e.what()).find(dir.string()), std::string::npos) << e.what();
}

}  // namespace
}  // namespace lockstep::engine
