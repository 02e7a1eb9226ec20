#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;
using V = GgufValue;
using VT = GgufValueType;

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// One value of every metadata type, nested arrays included.
std::vector<std::pair<std::string, GgufValue>> every_value_type() {
  return {
      {"t.u8", V::u8(250)},
      {"t.i8", V::i8(-120)},
      {"t.u16", V::u16(65000)},
      {"t.i16", V::i16(-32000)},
      {"t.u32", V::u32(4000000000u)},
      {"t.i32", V::i32(-2000000000)},
      {"t.u64", V::u64(18000000000000000000ull)},
      {"t.i64", V::i64(-9000000000000000000ll)},
      {"t.f32", V::f32(3.14159274f)},
      {"t.f64", V::f64(-2.718281828459045)},
      {"t.bool", V::boolean(true)},
      {"t.str", V::str("héllo\nworld")},
      {"t.empty_str", V::str("")},
      {"t.arr_i32", V::array(VT::Int32, {V::i32(1), V::i32(-2), V::i32(3)})},
      {"t.arr_str", V::array(VT::String, {V::str("a"), V::str(""), V::str("ccc")})},
      {"t.arr_f32", V::array(VT::Float32, {V::f32(0.5f), V::f32(-1e30f)})},
      {"t.arr_empty", V::array(VT::UInt8, {})},
      {"t.arr_nested",
       V::array(VT::Array,
                {V::array(VT::UInt16, {V::u16(1), V::u16(2)}), V::array(VT::String, {V::str("x")}),
                 V::array(VT::Array, {V::array(VT::Bool, {V::boolean(false)})})})},
  };
}

TEST(Gguf, MetadataOfEveryTypeRoundTrips) {
  fs::path dir = test::scratch_dir("gguf");
  fs::path path = dir / "meta.gguf";
  auto kv = every_value_type();
  {
    GgufWriter w(path.string());
    for (const auto& [k, v] : kv) w.set(k, v);
    w.finish();
  }
  GgufFile f = GgufFile::open(path.string());
  EXPECT_EQ(f.version(), 3u);
  ASSERT_EQ(f.metadata().size(), kv.size());
  for (size_t i = 0; i < kv.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, kv[i].first);
    EXPECT_EQ(f.metadata()[i].second, kv[i].second) << kv[i].first;
  }
  EXPECT_EQ(f.get_u64("t.u64"), 18000000000000000000ull);
  EXPECT_EQ(f.get_u64("t.i8"), std::nullopt);  // negative: no unsigned view
  EXPECT_EQ(f.get_string("t.str"), "héllo\nworld");
  EXPECT_TRUE(f.tensors().empty());
}

class GgufTensorTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(GgufTensorTypes, TensorsRoundTripWithAlignment) {
  const GgmlTypeInfo& ti = ggml_type_info(GetParam());
  fs::path dir = test::scratch_dir("gguf");
  std::mt19937 rng(static_cast<uint32_t>(ti.type) * 7919u + 1);
  struct Spec {
    std::string name;
    std::vector<uint64_t> dims;
  };
  std::vector<Spec> specs = {{"a", {ti.block_elems * 3}},
                             {"b", {ti.block_elems, 5}},
                             {"c", {ti.block_elems * 2, 3, 2}},
                             {"d", {ti.block_elems, 1, 1, 7}}};
  for (uint32_t alignment : {32u, 64u, 4096u}) {
    fs::path path = dir / ("t" + std::to_string(alignment) + ".gguf");
    std::vector<std::string> payloads;
    {
      GgufWriter w(path.string(), alignment);
      w.set("general.architecture", V::str("llama"));
      for (const auto& s : specs) w.add_tensor(s.name, ti.type, s.dims);
      for (const auto& s : specs) {
        uint64_t n = 1;
        for (auto d : s.dims) n *= d;
        std::string bytes(*ggml_bytes(ti.type, n), '\0');
        for (char& c : bytes) c = static_cast<char>(rng());
        w.write_tensor(as_bytes(bytes));
        payloads.push_back(bytes);
      }
      w.finish();
    }
    GgufFile f = GgufFile::open(path.string());
    EXPECT_EQ(f.alignment(), alignment);
    EXPECT_EQ(f.data_offset() % alignment, 0u);
    ASSERT_EQ(f.tensors().size(), specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const GgufTensorInfo& t = f.tensors()[i];
      EXPECT_EQ(t.name, specs[i].name);
      EXPECT_EQ(t.type, ti.type);
      EXPECT_EQ(t.dims, specs[i].dims);
      EXPECT_EQ(t.offset % alignment, 0u);
      auto data = f.tensor_data(t);
      ASSERT_EQ(data.size(), payloads[i].size());
      EXPECT_EQ(std::memcmp(data.data(), payloads[i].data(), data.size()), 0) << t.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GgufTensorTypes, ::testing::ValuesIn([] {
                           std::vector<GgmlType> v;
                           for (const auto& t : ggml_types()) v.push_back(t.type);
                           return v;
                         }()),
                         [](const auto& info) { return std::string(ggml_type_name(info.param)); });

TEST(Gguf, WriterRefusesIncompleteFilesAndLeavesNothing) {
  fs::path dir = test::scratch_dir("gguf");
  fs::path path = dir / "partial.gguf";
  {
    GgufWriter w(path.string());
    w.add_tensor("x", GgmlType::F32, {4});
    w.add_tensor("y", GgmlType::F32, {4});
    std::string four(16, 'a');
    w.write_tensor(as_bytes(four));
    EXPECT_THROW(w.finish(), Error);
    EXPECT_THROW(w.write_tensor(as_bytes(std::string(8, 'b'))), Error);  // wrong size
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir));
  GgufWriter w2(path.string());
  EXPECT_THROW(w2.add_tensor("q", GgmlType::Q4_K, {100}), Error);  // not whole blocks
  EXPECT_THROW(w2.add_tensor("z", GgmlType::F32, {}), Error);
}

// Every GGUF file in ../shared/models, re-written by our writer from what our reader saw,
// must come out byte for byte the same: the writer speaks llama.cpp's format exactly.
TEST(Gguf, RewritingLlamaCppFilesIsByteIdentical) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path dir = test::scratch_dir("gguf");
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(test::shared_models())) {
    if (e.path().extension() != ".gguf") continue;
    GgufFile in = GgufFile::open(e.path().string());
    fs::path out = dir / e.path().filename();
    {
      GgufWriter w(out.string(), static_cast<uint32_t>(in.alignment()));
      for (const auto& [k, v] : in.metadata()) w.set(k, v);
      for (const auto& t : in.tensors()) w.add_tensor(t.name, t.type, t.dims);
      for (const auto& t : in.tensors()) w.write_tensor(in.tensor_data(t));
      w.finish();
    }
    std::string a = test::read_file(e.path());
    std::string b = test::read_file(out);
    EXPECT_EQ(a.size(), b.size()) << e.path();
    EXPECT_TRUE(a == b) << e.path();
    fs::remove(out);
    ++files;
  }
  EXPECT_GE(files, 20);
}

// GGUF v2 differs from v3 only in that v3 may be big-endian (flagged by the version read
// byte-swapped); little-endian v2 files read exactly the same.
TEST(Gguf, ReadsVersion2) {
  fs::path path = test::scratch_dir("gguf") / "v3.gguf";
  {
    GgufWriter w(path.string());
    w.set("general.architecture", V::str("llama"));
    w.set("llama.block_count", V::u32(2));
    w.add_tensor("t", GgmlType::F16, {4});
    std::string data(8, '\x3c');
    w.write_tensor(as_bytes(data));
    w.finish();
  }
  std::string bytes = test::read_file(path);
  bytes[4] = 2;
  GgufFile f = GgufFile::parse(as_bytes(bytes), "v2.gguf");
  EXPECT_EQ(f.version(), 2u);
  EXPECT_EQ(f.get_u64("llama.block_count"), 2u);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensor_data(f.tensors()[0]).size(), 8u);
}

TEST(Gguf, ReadsStories260K) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  GgufFile f = GgufFile::open((test::shared_models() / "stories260K.gguf").string());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.tensors().size(), 48u);
  EXPECT_EQ(f.data_offset(), 14176u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_u64("llama.embedding_length"), 64u);
  EXPECT_EQ(f.get_u64("llama.block_count"), 5u);
  EXPECT_EQ(f.get_u64("llama.attention.head_count"), 8u);
  EXPECT_EQ(f.get_u64("llama.attention.head_count_kv"), 4u);
  EXPECT_FLOAT_EQ(static_cast<float>(*f.get_f64("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  ASSERT_NE(tokens->as_array(), nullptr);
  EXPECT_EQ(tokens->as_array()->items.size(), 512u);
  const GgufTensorInfo* ffn = f.find_tensor("blk.4.ffn_down.weight");
  ASSERT_NE(ffn, nullptr);
  EXPECT_EQ(ffn->dims, (std::vector<uint64_t>{172, 64}));
  EXPECT_EQ(ffn->type, GgmlType::F32);
  EXPECT_EQ(ffn->rows(), 64u);
}

}  // namespace
}  // namespace lockstep::formats
