#include "engine/inspect.h"

#include <gtest/gtest.h>

#include <random>

#include "formats/aprt.h"
#include "formats/error.h"
#include "formats/gguf.h"
#include "formats/npy.h"
#include "formats/safetensors.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;

TEST(Inspect, DetectsInputKindsByContent) {
  fs::path dir = test::scratch_dir("inspect");
  std::vector<float> v = test::random_nonzero(6, 1);
  formats::write_aprt(dir / "t.bin", 3, v);
  formats::write_npy(dir / "t.data", v, std::vector<uint64_t>{2, 3});  // extension irrelevant
  test::write_file(dir / "x.gguf", "not a gguf");
  EXPECT_EQ(detect_input(dir / "t.bin"), InputKind::AprtFile);
  EXPECT_EQ(detect_input(dir / "t.data"), InputKind::NpyFile);
  EXPECT_EQ(detect_input(dir), InputKind::DumpDir);
  EXPECT_THROW(detect_input(dir / "x.gguf"), Error);
  EXPECT_THROW(detect_input(dir / "absent"), Error);
}

TEST(Inspect, SafetensorsFolderWithConfig) {
  fs::path dir = test::scratch_dir("inspect-st");
  formats::SafetensorsWriter w;
  std::vector<float> q = test::random_nonzero(16 * 8, 2);
  w.add_f32("model.layers.0.self_attn.q_proj.weight", {16, 8}, q);
  w.add_f32("model.norm.weight", {8}, test::random_nonzero(8, 3));
  w.set_metadata("format", "pt");
  w.write(dir / "model.safetensors");
  test::write_file(dir / "config.json", R"({
    "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 8,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "intermediate_size": 24, "vocab_size": 32, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 128, "tie_word_embeddings": true, "hidden_act": "silu"})");
  EXPECT_EQ(detect_input(dir), InputKind::Safetensors);
  nlohmann::json r = inspect(dir);
  EXPECT_EQ(r["kind"], "safetensors");
  EXPECT_EQ(r["model"]["architecture"], "qwen2");
  EXPECT_EQ(r["model"]["hyperparameters"]["kv_heads"], 1);
  EXPECT_EQ(r["model"]["hyperparameters"]["head_dim"], 4);
  ASSERT_EQ(r["tensors"].size(), 2u);
  EXPECT_EQ(r["tensors"][0]["name"], "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(r["tensors"][0]["shape"], nlohmann::json::array({16, 8}));
  std::string text = render_inspect_text(r);
  EXPECT_NE(text.find("qwen2"), std::string::npos) << text;
  EXPECT_NE(text.find("model.norm.weight"), std::string::npos) << text;

  fs::path out = dir / "q.npy";
  auto shape = export_tensor_npy(dir, "model.layers.0.self_attn.q_proj.weight", out);
  EXPECT_EQ(shape, (std::vector<uint64_t>{16, 8}));
  EXPECT_EQ(formats::read_npy(out).values, q);
}

TEST(Inspect, GgufReportHasEveryTensorWithNumpyAndGgmlShapes) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path model = test::shared_models() / "quant-ref" / "ref-qwen2-Q4_K_M.gguf";
  nlohmann::json r = inspect(model);
  formats::GgufFile f = formats::GgufFile::open(model.string());
  ASSERT_EQ(r["tensors"].size(), f.tensors().size());
  uint64_t total = 0;
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& t = f.tensors()[i];
    const auto& j = r["tensors"][i];
    EXPECT_EQ(j["name"], t.name);
    EXPECT_EQ(j["ggml_dims"], nlohmann::json(t.dims));
    EXPECT_EQ(j["shape"][0], t.dims.back());
    EXPECT_EQ(j["bytes"], t.bytes);
    total += t.bytes;
  }
  EXPECT_EQ(r["tensor_bytes"], total);
  EXPECT_EQ(r["model"]["architecture"], "qwen2");
  EXPECT_EQ(r["model"]["hyperparameters"]["rope_freq_base"], 1000000.0);
  EXPECT_EQ(r["tokenizer"]["model"], "llama");
}

}  // namespace
}  // namespace lockstep::engine
