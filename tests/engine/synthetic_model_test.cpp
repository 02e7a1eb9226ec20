// Synthetic models: every family and mix opens with open_model (names, dims and metadata bind),
// inspects and tokenizes; bytes are deterministic; the quant mix follows the documented rule.
#include "engine/synthetic_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "engine/inspect.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "formats/ggml_codec.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;
using formats::GgmlType;

const FamilyRegistry& registry() {
  static const FamilyRegistry r = FamilyRegistry::load();
  return r;
}

SyntheticModelOptions small(const std::string& family, QuantMix mix, const fs::path& out) {
  SyntheticModelOptions o;
  o.family = family;
  o.hidden = 256;
  o.layers = 2;
  o.heads = 4;
  o.kv_heads = 2;
  o.ffn = 512;
  o.vocab = 300;
  o.context = 128;
  o.mix = mix;
  o.seed = 7;
  o.out = out;
  return o;
}

std::map<std::string, GgmlType> file_types(const formats::GgufFile& f) {
  std::map<std::string, GgmlType> m;
  for (const formats::GgufTensorInfo& t : f.tensors()) m[t.name] = t.type;
  return m;
}

struct FamilyCase {
  std::string family;
  QuantMix mix;
};

class SyntheticFamily : public ::testing::TestWithParam<FamilyCase> {};

TEST_P(SyntheticFamily, OpensInspectsAndTokenizes) {
  const FamilyCase& p = GetParam();
  test::ScratchDir scratch("synthetic-family");
  fs::path path = scratch.path / "m.gguf";
  SyntheticModelOptions o = small(p.family, p.mix, path);
  SyntheticPlan plan = plan_synthetic_model(o, registry());
  SyntheticSummary s = write_synthetic_model(o, registry());
  EXPECT_EQ(s.file_bytes, fs::file_size(path));
  EXPECT_EQ(s.tensors, plan.tensors.size());

  Model m = open_model(path, registry());  // binds every tensor with shape checks
  EXPECT_EQ(m.family.name, p.family == "mistral" ? "llama" : p.family);
  EXPECT_EQ(m.config.hidden, 256u);
  EXPECT_EQ(m.config.layers, 2u);
  EXPECT_EQ(m.config.heads, 4u);
  EXPECT_EQ(m.config.kv_heads, 2u);
  EXPECT_EQ(m.config.head_dim, 64u);
  EXPECT_EQ(m.config.ffn, 512u);
  EXPECT_EQ(m.config.vocab, 300u);
  EXPECT_EQ(m.config.context, 128u);
  EXPECT_EQ(m.config.qkv_bias, plan.config.qkv_bias);
  EXPECT_EQ(m.config.qk_norm, plan.config.qk_norm);
  EXPECT_EQ(m.config.tied_embeddings, plan.config.tied_embeddings);
  EXPECT_EQ(m.config.norm, plan.config.norm);
  if (p.family == "granite") {
    EXPECT_DOUBLE_EQ(m.config.embedding_multiplier, 12.0);
    EXPECT_NEAR(m.config.residual_multiplier, 0.22, 1e-6);
    ASSERT_TRUE(m.config.attention_multiplier.has_value());
    EXPECT_DOUBLE_EQ(*m.config.attention_multiplier, 1.0 / 64);
    EXPECT_DOUBLE_EQ(m.config.logits_scaling, 8.0);
  }
  if (p.family == "qwen2") {
    EXPECT_TRUE(m.config.qkv_bias);
    EXPECT_NE(m.gguf->find_tensor("blk.1.attn_k.bias"), nullptr);
  }
  if (p.family == "qwen3") {
    EXPECT_NE(m.gguf->find_tensor("blk.0.attn_q_norm.weight"), nullptr);
  }
  if (p.family == "starcoder2") {
    EXPECT_EQ(m.config.norm, NormKind::Layer);
    EXPECT_NE(m.gguf->find_tensor("blk.0.ffn_norm.bias"), nullptr);
    EXPECT_NE(m.gguf->find_tensor("blk.0.ffn_down.bias"), nullptr);
  }
  // Exactly the planned tensors, with the planned types; 1-D tensors stay F32.
  std::map<std::string, GgmlType> types = file_types(*m.gguf);
  ASSERT_EQ(types.size(), plan.tensors.size());
  for (const SyntheticTensor& t : plan.tensors) {
    EXPECT_EQ(types[t.name], t.type) << t.name;
    if (t.dims.size() == 1) {
      EXPECT_EQ(t.type, GgmlType::F32) << t.name;
    }
  }

  nlohmann::json report = inspect(path);
  EXPECT_EQ(report["kind"], "gguf");
  EXPECT_EQ(report["tensors"].size(), plan.tensors.size());

  Tokenizer tok = Tokenizer::from_gguf(*m.gguf);
  EXPECT_EQ(tok.vocab_size(), 300);
  std::vector<int32_t> ids = tok.encode("hello, world! \xC3\xA9", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
  for (int32_t id : ids) EXPECT_LT(id, 300);
  EXPECT_EQ(tok.decode(std::span(ids).subspan(1)), " hello, world! \xC3\xA9");
}

std::vector<FamilyCase> family_cases() {
  std::vector<FamilyCase> v;
  for (const char* f : {"llama", "qwen2", "qwen3", "mistral", "granite", "starcoder2"})
    for (QuantMix m : {QuantMix::F16, QuantMix::Q4_K_M}) v.push_back({f, m});
  for (QuantMix m : {QuantMix::F32, QuantMix::BF16, QuantMix::Q8_0, QuantMix::Q4_0, QuantMix::Q4_1,
                     QuantMix::Q5_0, QuantMix::Q5_1, QuantMix::Q2_K, QuantMix::Q3_K_S,
                     QuantMix::Q4_K_S, QuantMix::Q5_K_S, QuantMix::Q5_K_M, QuantMix::Q6_K})
    v.push_back({"qwen2", m});
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, SyntheticFamily, ::testing::ValuesIn(family_cases()),
                         [](const auto& info) {
                           return info.param.family + "_" +
                                  std::string(quant_mix_name(info.param.mix));
                         });

TEST(Synthetic, SameSeedSameBytesAnyThreadCount) {
  test::ScratchDir scratch("synthetic-determinism");
  fs::path dir = scratch.path;
  SyntheticModelOptions o = small("qwen2", QuantMix::Q4_K_M, dir / "a.gguf");
  o.ffn = 1024;  // big enough that tensors are split across threads
  write_synthetic_model(o, registry());
  o.out = dir / "b.gguf";
  write_synthetic_model(o, registry());
  o.out = dir / "c.gguf";
  o.threads = 1;
  write_synthetic_model(o, registry());
  o.out = dir / "d.gguf";
  o.seed = 8;
  write_synthetic_model(o, registry());
  std::string a = test::read_file(dir / "a.gguf");
  EXPECT_EQ(a, test::read_file(dir / "b.gguf"));
  EXPECT_EQ(a, test::read_file(dir / "c.gguf"));
  std::string d = test::read_file(dir / "d.gguf");
  ASSERT_EQ(a.size(), d.size());
  EXPECT_NE(a, d);
}

// Layers that get Q6_K under llama.cpp's use_more_bits for 8 layers: 0, 3, 6, 7.
TEST(Synthetic, KMediumMixesUseQ6KOnMoreBitsLayers) {
  for (auto [mix, base] :
       {std::pair{QuantMix::Q4_K_M, GgmlType::Q4_K}, std::pair{QuantMix::Q5_K_M, GgmlType::Q5_K}}) {
    test::ScratchDir scratch("synthetic-mix");
    fs::path path = scratch.path / "m.gguf";
    SyntheticModelOptions o = small("llama", mix, path);
    o.layers = 8;
    write_synthetic_model(o, registry());
    formats::GgufFile f = formats::GgufFile::open(path.string());
    auto types = file_types(f);
    EXPECT_EQ(types["output.weight"], GgmlType::Q6_K);
    EXPECT_EQ(types["token_embd.weight"], base);
    EXPECT_EQ(types["output_norm.weight"], GgmlType::F32);
    for (int L = 0; L < 8; ++L) {
      std::string b = "blk." + std::to_string(L) + ".";
      GgmlType more = (L == 0 || L == 3 || L == 6 || L == 7) ? GgmlType::Q6_K : base;
      EXPECT_EQ(types[b + "attn_v.weight"], more) << L;
      EXPECT_EQ(types[b + "ffn_down.weight"], more) << L;
      for (const char* n : {"attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"})
        EXPECT_EQ(types[b + n + ".weight"], base) << b + n;
      EXPECT_EQ(types[b + "attn_norm.weight"], GgmlType::F32);
      EXPECT_EQ(types[b + "ffn_norm.weight"], GgmlType::F32);
    }
    EXPECT_EQ(f.get_u64("general.file_type"), mix == QuantMix::Q4_K_M ? 15u : 17u);
  }
}

TEST(Synthetic, TiedEmbeddingIsTheLmHeadAndGetsQ6K) {
  test::ScratchDir scratch("synthetic-tied");
  fs::path path = scratch.path / "m.gguf";
  SyntheticModelOptions o = small("qwen2", QuantMix::Q4_K_M, path);
  o.tied_embeddings = true;
  write_synthetic_model(o, registry());
  Model m = open_model(path, registry());
  EXPECT_TRUE(m.config.tied_embeddings);
  EXPECT_EQ(m.gguf->find_tensor("output.weight"), nullptr);
  EXPECT_EQ(m.gguf->find_tensor("token_embd.weight")->type, GgmlType::Q6_K);
}

// Rows that are not a multiple of 256 fall back like llama.cpp: Q4_K → Q5_0, Q6_K → Q8_0;
// rows that are not a multiple of 32 either are F16.
TEST(Synthetic, RowsOffTheSuperBlockFallBack) {
  test::ScratchDir scratch("synthetic-fallback");
  fs::path path = scratch.path / "m.gguf";
  SyntheticModelOptions o = small("llama", QuantMix::Q4_K_M, path);
  o.hidden = 96;
  o.heads = 2;
  o.kv_heads = 1;
  o.head_dim = 40;  // q_dim 80: attn_output rows are 80 long
  o.ffn = 256;
  write_synthetic_model(o, registry());
  Model m = open_model(path, registry());
  EXPECT_EQ(m.config.head_dim, 40u);
  auto types = file_types(*m.gguf);
  EXPECT_EQ(types["blk.0.attn_q.weight"], GgmlType::Q5_0);
  EXPECT_EQ(types["blk.0.attn_v.weight"], GgmlType::Q5_0);
  EXPECT_EQ(types["blk.1.attn_v.weight"], GgmlType::Q8_0);  // a "more bits" layer: Q6_K
  EXPECT_EQ(types["blk.1.ffn_up.weight"], GgmlType::Q5_0);
  EXPECT_EQ(types["blk.1.ffn_down.weight"], GgmlType::Q6_K);  // rows of ffn = 256
  EXPECT_EQ(types["blk.0.attn_output.weight"], GgmlType::F16);
  EXPECT_EQ(types["output.weight"], GgmlType::Q8_0);
}

double rms_of(const formats::GgufFile& f, const std::string& name, double mean = 0) {
  const formats::GgufTensorInfo* t = f.find_tensor(name);
  std::vector<float> v(t->elements);
  formats::dequantize(t->type, f.tensor_data(*t), v);
  double s = 0;
  for (float x : v) s += (x - mean) * (x - mean);
  return std::sqrt(s / static_cast<double>(v.size()));
}

TEST(Synthetic, WeightScalesFollowTheDocumentedInit) {
  test::ScratchDir scratch("synthetic-init");
  fs::path path = scratch.path / "m.gguf";
  SyntheticModelOptions o = small("llama", QuantMix::F32, path);
  o.layers = 8;
  write_synthetic_model(o, registry());
  formats::GgufFile f = formats::GgufFile::open(path.string());
  EXPECT_NEAR(rms_of(f, "token_embd.weight"), 1.0, 0.02);
  EXPECT_NEAR(rms_of(f, "blk.3.attn_q.weight"), 1.0 / 16, 0.002);
  EXPECT_NEAR(rms_of(f, "blk.3.ffn_up.weight"), 1.0 / 16, 0.002);
  EXPECT_NEAR(rms_of(f, "blk.3.attn_output.weight"), 1.0 / 16 / 4, 0.001);  // / sqrt(2*8)
  EXPECT_NEAR(rms_of(f, "blk.3.ffn_down.weight"), 1.0 / std::sqrt(512.0) / 4, 0.001);
  EXPECT_NEAR(rms_of(f, "blk.3.attn_norm.weight", 1.0), 0.1 / std::sqrt(3.0), 0.01);
  // Different tensors draw different values.
  EXPECT_NE(rms_of(f, "blk.3.attn_q.weight"), rms_of(f, "blk.4.attn_q.weight"));
}

TEST(Synthetic, BorrowsATokenizerWhoseSizeMatches) {
  test::ScratchDir scratch("synthetic-borrow");
  fs::path dir = scratch.path;
  SyntheticModelOptions donor = small("llama", QuantMix::F16, dir / "donor.gguf");
  donor.vocab = 400;
  write_synthetic_model(donor, registry());

  SyntheticModelOptions o = small("qwen3", QuantMix::Q8_0, dir / "m.gguf");
  o.vocab = 0;  // taken from the tokenizer
  o.tokenizer_from = dir / "donor.gguf";
  write_synthetic_model(o, registry());
  Model m = open_model(dir / "m.gguf", registry());
  EXPECT_EQ(m.config.vocab, 400u);
  Tokenizer a = Tokenizer::from_gguf(*m.gguf);
  Tokenizer b = Tokenizer::from_gguf(formats::GgufFile::open((dir / "donor.gguf").string()));
  EXPECT_EQ(a.encode("borrowed text", true), b.encode("borrowed text", true));

  o.vocab = 300;
  o.out = dir / "bad.gguf";
  Error e = test::expect_error([&] { write_synthetic_model(o, registry()); });
  EXPECT_NE(std::string(e.what()).find("does not match the 400 tokens"), std::string::npos)
      << e.what();
  EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
}

TEST(Synthetic, BorrowsARealTokenizer) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path donor = test::shared_models() / "stories260K.gguf";
  test::ScratchDir scratch("synthetic-borrow-real");
  fs::path path = scratch.path / "m.gguf";
  SyntheticModelOptions o = small("llama", QuantMix::Q4_0, path);
  o.vocab = 0;
  o.tokenizer_from = donor;
  write_synthetic_model(o, registry());
  Model m = open_model(path, registry());
  Tokenizer a = Tokenizer::from_gguf(*m.gguf);
  Tokenizer b = Tokenizer::from_gguf(formats::GgufFile::open(donor.string()));
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.encode("Once upon a time", true), b.encode("Once upon a time", true));
}

TEST(Synthetic, BadOptionsAreErrorsNamingTheOption) {
  test::ScratchDir scratch("synthetic-bad");
  fs::path dir = scratch.path;
  auto fails_with = [&](SyntheticModelOptions o, const std::string& needle) {
    Error e = test::expect_error([&] { plan_synthetic_model(o, registry()); });
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  };
  SyntheticModelOptions ok = small("llama", QuantMix::F16, dir / "m.gguf");
  SyntheticModelOptions o = ok;
  o.family = "gpt-j";
  fails_with(o, "unknown --family \"gpt-j\" (supported: granite, llama");
  o = ok;
  o.heads = 3;
  o.kv_heads = 1;
  fails_with(o, "--hidden 256 is not a multiple of --heads 3");
  o.head_dim = 64;  // an explicit head size makes it valid
  EXPECT_NO_THROW(plan_synthetic_model(o, registry()));
  o = ok;
  o.kv_heads = 3;
  fails_with(o, "--heads 4 is not a multiple of --kv-heads 3");
  o = ok;
  o.vocab = 100;
  fails_with(o, "--vocab 100 is too small");
  o = ok;
  o.layers = 0;
  fails_with(o, "--layers must be positive");
  o = ok;
  o.tokenizer_from = dir / "missing.gguf";
  test::expect_error([&] { plan_synthetic_model(o, registry()); });
  EXPECT_FALSE(parse_quant_mix("Q7_K").has_value());
  EXPECT_EQ(parse_quant_mix("q4_k_m"), QuantMix::Q4_K_M);
  EXPECT_EQ(parse_quant_mix("Q3_K"), QuantMix::Q3_K_S);
}

TEST(Synthetic, CancelLeavesNoFile) {
  test::ScratchDir scratch("synthetic-cancel");
  fs::path dir = scratch.path;
  SyntheticModelOptions o = small("llama", QuantMix::Q4_K_M, dir / "m.gguf");
  std::atomic<bool> cancel{false};
  size_t calls = 0;
  auto progress = [&](const SyntheticProgress& p) {
    ++calls;
    EXPECT_LE(p.bytes_done, p.bytes_total);
    if (p.tensor == 3) cancel = true;
  };
  Error e = test::expect_error([&] { write_synthetic_model(o, registry(), progress, &cancel); });
  EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos);
  EXPECT_EQ(calls, 3u);
  EXPECT_TRUE(fs::is_empty(dir)) << "temporary file left behind";
}

TEST(Synthetic, ByteVocabHasSpmLayout) {
  test::ScratchDir scratch("synthetic-vocab");
  fs::path path = scratch.path / "m.gguf";
  write_synthetic_model(small("llama", QuantMix::F16, path), registry());
  formats::GgufFile f = formats::GgufFile::open(path.string());
  Tokenizer tok = Tokenizer::from_gguf(f);
  EXPECT_EQ(tok.kind(), TokenizerKind::Spm);
  EXPECT_EQ(tok.unk(), 0);
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_EQ(tok.token_text(3), "<0x00>");
  EXPECT_EQ(tok.token_text(3 + 0xFF), "<0xFF>");
  EXPECT_EQ(tok.token_type(3 + 0x41), TokenType::Byte);
  EXPECT_EQ(tok.token_text(259), "\xE2\x96\x81");
  EXPECT_EQ(tok.token_text(260),
            "\xE2\x96\x81"
            "a");
  EXPECT_EQ(tok.token_text(261), "a");
  EXPECT_EQ(tok.token_type(299), TokenType::Normal);
  // "▁a" is a piece: " a" encodes to it rather than to bytes.
  EXPECT_EQ(tok.encode("a", false), std::vector<int32_t>{260});
}

}  // namespace
}  // namespace lockstep::engine
