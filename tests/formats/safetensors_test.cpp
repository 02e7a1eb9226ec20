#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/error.h"
#include "formats/ggml_codec.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

std::vector<uint16_t> random_halves(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<uint32_t> dist(1, 0xffff);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = static_cast<uint16_t>(dist(rng));
  return v;
}

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// A file from a literal header and `data_bytes` of filler.
std::vector<std::byte> raw_file(const std::string& header, size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0x5a});
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

// The IEEE half value computed in double, independently of the code under test.
double half_reference(uint16_t h) {
  int sign = (h & 0x8000) ? -1 : 1;
  int exp = (h >> 10) & 0x1f;
  int mant = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(Safetensors, WriterAndReaderRoundTripF32F16Bf16) {
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<float> a = test::random_nonzero(3 * 5, rng, 2.0f);
  std::vector<uint16_t> h = random_halves(4 * 2, rng);
  std::vector<uint16_t> bf = random_halves(7, rng);
  std::vector<float> scalar = test::random_nonzero(1, rng, 2.0f);

  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("source", "lockstep test");
  w.add_f32("model.layers.0.mlp.up_proj.weight", {3, 5}, a);
  w.add("model.norm.weight", "F16", {4, 2}, std::as_bytes(std::span(h)));
  w.add("lm_head.weight", "BF16", {7}, std::as_bytes(std::span(bf)));
  w.add_f32("scalar", {}, scalar);
  w.add_f32("empty", {0, 3}, {});
  std::vector<std::byte> bytes = w.encode();

  SafetensorsFile f = SafetensorsFile::parse(bytes, "mem.safetensors");
  EXPECT_EQ(f.data_offset() % 8, 0u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("source"), "lockstep test");
  ASSERT_EQ(f.tensors().size(), 5u);

  const SafetensorsTensor* ta = f.find("model.layers.0.mlp.up_proj.weight");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, SafetensorsDtype::F32);
  EXPECT_EQ(ta->shape, (std::vector<uint64_t>{3, 5}));
  EXPECT_EQ(ta->elements, 15u);
  std::vector<float> got = f.to_f32(*ta);
  EXPECT_EQ(std::memcmp(got.data(), a.data(), a.size() * 4), 0);

  const SafetensorsTensor* th = f.find("model.norm.weight");
  ASSERT_NE(th, nullptr);
  EXPECT_EQ(th->dtype, SafetensorsDtype::F16);
  ASSERT_EQ(f.data(*th).size(), 16u);
  EXPECT_EQ(std::memcmp(f.data(*th).data(), h.data(), 16), 0);
  std::vector<float> hv = f.to_f32(*th);
  for (size_t i = 0; i < h.size(); ++i) {
    if (!std::isnan(hv[i])) {
      EXPECT_EQ(static_cast<double>(hv[i]), half_reference(h[i])) << i;
    }
  }

  const SafetensorsTensor* tb = f.find("lm_head.weight");
  ASSERT_NE(tb, nullptr);
  std::vector<float> bv = f.to_f32(*tb);
  for (size_t i = 0; i < bf.size(); ++i) EXPECT_EQ(bits_of(bv[i]), uint32_t{bf[i]} << 16) << i;

  const SafetensorsTensor* ts = f.find("scalar");
  ASSERT_NE(ts, nullptr);
  EXPECT_TRUE(ts->shape.empty());
  EXPECT_EQ(f.to_f32(*ts), scalar);
  EXPECT_EQ(f.find("empty")->elements, 0u);
  EXPECT_EQ(f.find("absent"), nullptr);

  fs::path dir = test::scratch_dir("st");
  w.write(dir / "m.safetensors");
  SafetensorsFile g = SafetensorsFile::open(dir / "m.safetensors");
  EXPECT_EQ(g.to_f32(*g.find("model.layers.0.mlp.up_proj.weight")), got);
  fs::remove_all(dir);
}

// to_f32 widens through the codecs' conversions: check them over every bit pattern.
TEST(Safetensors, F16ConversionIsExactForAllBitPatterns) {
  for (uint32_t i = 0; i <= 0xffff; ++i) {
    auto h = static_cast<uint16_t>(i);
    float f = fp16_to_f32(h);
    int exp = (h >> 10) & 0x1f;
    if (exp == 0x1f) {
      uint32_t b = bits_of(f);
      EXPECT_EQ(b >> 23 & 0xff, 0xffu) << i;
      uint32_t quiet = (h & 0x3ffu) != 0 ? 0x400000u : 0u;  // NaNs come back quiet
      EXPECT_EQ(b & 0x7fffff, (uint32_t{h & 0x3ffu} << 13) | quiet) << i << " payload kept";
      EXPECT_EQ(b >> 31, uint32_t{h} >> 15) << i;
    } else {
      ASSERT_EQ(static_cast<double>(f), half_reference(h)) << i;
      EXPECT_EQ(std::signbit(f), (h & 0x8000) != 0) << i;
    }
  }
}

TEST(Safetensors, Bf16ConversionIsExactForAllBitPatterns) {
  for (uint32_t i = 0; i <= 0xffff; ++i)
    ASSERT_EQ(bits_of(bf16_to_f32(static_cast<uint16_t>(i))), i << 16) << i;
}

TEST(Safetensors, OtherDtypesAreListedButNotRead) {
  std::mt19937 rng(11);
  std::vector<uint16_t> filler = random_halves(16, rng);
  auto raw = std::as_bytes(std::span(filler));
  SafetensorsWriter w;
  w.add("ids", "I64", {2, 2}, raw.subspan(0, 32));
  w.add("mask", "BOOL", {3}, raw.subspan(0, 3));
  w.add("packed", "F4", {6}, raw.subspan(0, 3));
  w.add("weird", "Q4_LOCKSTEP", {5}, raw.subspan(0, 7));
  std::vector<std::byte> bytes = w.encode();
  SafetensorsFile f = SafetensorsFile::parse(bytes, "odd.safetensors");
  ASSERT_EQ(f.tensors().size(), 4u);
  for (const auto& t : f.tensors()) {
    EXPECT_FALSE(t.supported()) << t.name;
    Error e = test::expect_error([&] { f.to_f32(t); });
    std::string msg = e.what();
    EXPECT_NE(msg.find("odd.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(t.name), std::string::npos) << msg;
    EXPECT_NE(msg.find(t.dtype_name), std::string::npos) << msg;
    EXPECT_EQ(e.offset(), f.data_offset() + t.begin);
  }
  EXPECT_EQ(f.find("ids")->dtype_bits, 64u);
  EXPECT_EQ(f.find("packed")->dtype_bits, 4u);
  EXPECT_EQ(f.find("weird")->dtype_bits, std::nullopt);
  EXPECT_EQ(f.find("weird")->bytes(), 7u);
  EXPECT_NE(std::string(test::expect_error([&] { f.to_f32(*f.find("weird")); }).what())
                .find("not a safetensors dtype"),
            std::string::npos);
}

TEST(Safetensors, WriterChecksItsInput) {
  SafetensorsWriter w;
  std::vector<float> v(4, 1.5f);
  EXPECT_THROW(w.add_f32("x", {5}, v), Error);
  w.add_f32("x", {4}, v);
  EXPECT_THROW(w.add_f32("x", {4}, v), Error);
  EXPECT_THROW(w.add_f32("__metadata__", {4}, v), Error);
  w.add_f32("bad\xff", {4}, v);
  EXPECT_THROW(w.encode(), Error) << "names must be UTF-8 to be valid JSON";
}

struct BadHeader {
  const char* label;
  std::string header;
  size_t data_bytes;
  const char* message_part;
};

class SafetensorsBadHeader : public ::testing::TestWithParam<BadHeader> {};

TEST_P(SafetensorsBadHeader, IsRefusedNamingFileAndProblem) {
  const BadHeader& c = GetParam();
  std::vector<std::byte> b = raw_file(c.header, c.data_bytes);
  Error e = test::expect_error([&] { SafetensorsFile::parse(b, "bad.safetensors"); });
  EXPECT_EQ(e.file(), "bad.safetensors");
  EXPECT_NE(e.offset(), Error::kNoOffset);
  EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << e.what();
}

std::string tensor(const std::string& body) {
  return "{\"t\": " + body + "}";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SafetensorsBadHeader,
    ::testing::Values(
        BadHeader{"not_json", "{\"t\": ", 0, "well-formed JSON"},
        BadHeader{"trailing_garbage", "{} x", 0, "well-formed JSON"},
        BadHeader{"array_header", "[]", 0, "JSON object"},
        BadHeader{"deep", std::string(200, '[') + std::string(200, ']'), 0, "nested"},
        BadHeader{"metadata_not_object", "{\"__metadata__\": [1]}", 0, "object of strings"},
        BadHeader{"metadata_number", "{\"__metadata__\": {\"a\": 1}}", 0, "to be a string"},
        BadHeader{"tensor_not_object", tensor("5"), 0, "an object"},
        BadHeader{"no_dtype", tensor("{\"shape\": [1], \"data_offsets\": [0, 4]}"), 4, "\"dtype\""},
        BadHeader{"dtype_number",
                  tensor("{\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}"), 4,
                  "\"dtype\" to be a string"},
        BadHeader{"no_shape", tensor("{\"dtype\": \"F32\", \"data_offsets\": [0, 4]}"), 4,
                  "\"shape\""},
        BadHeader{"shape_object",
                  tensor("{\"dtype\": \"F32\", \"shape\": {}, \"data_offsets\": [0, 4]}"), 4,
                  "to be an array"},
        BadHeader{"negative_dim",
                  tensor("{\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}"), 4,
                  "non-negative integers"},
        BadHeader{"float_dim",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}"), 4,
                  "non-negative integers"},
        BadHeader{"rank_9",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                         "\"data_offsets\": [0, 4]}"),
                  4, "rank <= 8"},
        BadHeader{"product_overflow",
                  tensor("{\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 2], "
                         "\"data_offsets\": [0, 4]}"),
                  4, "fits in 64 bits"},
        BadHeader{"bytes_overflow",
                  tensor("{\"dtype\": \"F32\", \"shape\": [4611686018427387904, 8], "
                         "\"data_offsets\": [0, 4]}"),
                  4, "fits in 64 bits"},
        BadHeader{"size_overflow_in_dtype",
                  tensor("{\"dtype\": \"F64\", \"shape\": [4611686018427387904], "
                         "\"data_offsets\": [0, 8]}"),
                  8, "overflow"},
        BadHeader{"no_offsets", tensor("{\"dtype\": \"F32\", \"shape\": [1]}"), 4, "data_offsets"},
        BadHeader{"three_offsets",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}"), 8,
                  "[begin, end]"},
        BadHeader{"negative_offset",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}"), 4,
                  "non-negative"},
        BadHeader{"begin_after_end",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}"), 8,
                  "begin <= end"},
        BadHeader{"past_end",
                  tensor("{\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}"), 4,
                  "within the data section"},
        BadHeader{"far_past_end",
                  tensor("{\"dtype\": \"F32\", \"shape\": [1], "
                         "\"data_offsets\": [18446744073709551612, 18446744073709551615]}"),
                  4, "within the data section"},
        BadHeader{"size_mismatch",
                  tensor("{\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 12]}"), 16,
                  "16 bytes"},
        BadHeader{"bf16_size_mismatch",
                  tensor("{\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [0, 4]}"), 4,
                  "6 bytes"},
        BadHeader{"partial_byte",
                  tensor("{\"dtype\": \"F4\", \"shape\": [3], \"data_offsets\": [0, 2]}"), 2,
                  "partial byte"},
        BadHeader{"overlap",
                  "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                  "\"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                  12, "overlap"},
        BadHeader{"contained_overlap",
                  "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, "
                  "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}, "
                  "\"c\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [12, 16]}}",
                  16, "overlap"},
        BadHeader{"same_range",
                  "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                  "\"b\": {\"dtype\": \"I32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                  4, "overlap"}),
    [](const auto& param_info) { return std::string(param_info.param.label); });

TEST(SafetensorsMalformed, EdgeCasesThatAreValid) {
  // Zero-size tensors may share an offset and sit inside others; gaps are allowed; a zero
  // dimension makes an otherwise overflowing shape empty.
  std::string header =
      "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
      "\"e1\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}, "
      "\"e2\": {\"dtype\": \"F32\", \"shape\": [0, 4294967296, 4294967296], "
      "\"data_offsets\": [4, 4]}, "
      "\"b\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [12, 16]}, "
      "\"extra\": 1, \"x\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [16, 17], "
      "\"future_key\": true}}";
  // "extra": 1 is not an object: refused. Without it, valid.
  std::vector<std::byte> bad = raw_file(header, 17);
  EXPECT_THROW(SafetensorsFile::parse(bad, "e.safetensors"), Error);
  std::string ok = header;
  ok.replace(ok.find("\"extra\": 1, "), 12, "");
  std::vector<std::byte> b = raw_file(ok, 17);
  SafetensorsFile f = SafetensorsFile::parse(b, "e.safetensors");
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.find("e2")->elements, 0u);
  EXPECT_EQ(f.tensors().front().name, "a");  // ordered by offset
}

TEST(SafetensorsMalformed, HeaderLengthChecks) {
  // 2^60: refused against the limit before anything else.
  std::vector<std::byte> b = raw_file("{}", 0);
  uint64_t huge = 1ull << 60;
  std::memcpy(b.data(), &huge, 8);
  Error e = test::expect_error([&] { SafetensorsFile::parse(b, "h.safetensors"); });
  EXPECT_EQ(e.offset(), 0u);
  EXPECT_NE(std::string(e.what()).find("at most 100000000"), std::string::npos) << e.what();

  // Within the limit but past the end of the file.
  uint64_t past = 1000;
  std::memcpy(b.data(), &past, 8);
  e = test::expect_error([&] { SafetensorsFile::parse(b, "h.safetensors"); });
  EXPECT_NE(std::string(e.what()).find("within the file's 10 bytes"), std::string::npos)
      << e.what();

  // A smaller caller limit is honoured.
  std::vector<std::byte> ok = raw_file("{}      ", 0);
  SafetensorsLimits tight;
  tight.max_header = 4;
  EXPECT_THROW(SafetensorsFile::parse(ok, "h.safetensors", tight), Error);
  EXPECT_NO_THROW(SafetensorsFile::parse(ok, "h.safetensors"));
}

TEST(SafetensorsMalformed, TruncatedAtEveryHeaderByteAndInTheData) {
  std::mt19937 rng(12);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.add_f32("a", {4, 3}, test::random_nonzero(12, rng, 2.0f));
  w.add_f32("b", {5}, test::random_nonzero(5, rng, 2.0f));
  std::vector<std::byte> b = w.encode();
  SafetensorsFile full = SafetensorsFile::parse(b, "full");
  for (size_t n = 0; n < b.size(); n += (n < full.data_offset() ? 1 : 3)) {
    std::span<const std::byte> cut(b.data(), n);
    Error e = test::expect_error([&] { SafetensorsFile::parse(cut, "cut.safetensors"); });
    EXPECT_EQ(e.file(), "cut.safetensors") << n;
    EXPECT_NE(e.offset(), Error::kNoOffset) << n;
  }
}

TEST(SafetensorsMalformed, FlippedBytesNeverCrash) {
  // Every single-byte corruption of the header either parses or throws lockstep::Error.
  std::mt19937 rng(13);
  SafetensorsWriter w;
  w.add_f32("w", {2, 2}, test::random_nonzero(4, rng, 2.0f));
  std::vector<uint16_t> halves = random_halves(2, rng);
  w.add("h", "F16", {2}, std::as_bytes(std::span(halves)));
  std::vector<std::byte> b = w.encode();
  SafetensorsFile full = SafetensorsFile::parse(b, "full");
  for (size_t i = 0; i < full.data_offset(); ++i) {
    for (uint8_t v : {0x00, 0x22, 0x7b, 0xff}) {
      auto c = b;
      c[i] = std::byte{v};
      try {
        SafetensorsFile f = SafetensorsFile::parse(c, "flip");
        for (const auto& t : f.tensors()) ASSERT_LE(f.data_offset() + t.end, c.size());
      } catch (const Error&) {
      }
    }
  }
}

class SafetensorsShards : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir("st-shards");
    std::mt19937 rng(std::random_device{}());
    a_ = test::random_nonzero(6, rng, 2.0f);
    b_ = test::random_nonzero(4, rng, 2.0f);
    SafetensorsWriter w1;
    w1.add_f32("model.embed_tokens.weight", {2, 3}, a_);
    w1.write(dir_ / "model-00001-of-00002.safetensors");
    SafetensorsWriter w2;
    w2.add_f32("lm_head.weight", {4}, b_);
    w2.write(dir_ / "model-00002-of-00002.safetensors");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write_index(const std::string& weight_map) {
    test::write_file(dir_ / "model.safetensors.index.json",
                     "{\"metadata\": {\"total_size\": 40}, \"weight_map\": " + weight_map + "}");
  }

  fs::path dir_;
  std::vector<float> a_, b_;
};

TEST_F(SafetensorsShards, OpensAnIndexAcrossShards) {
  write_index(
      "{\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\", "
      "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"}");
  for (fs::path p : {dir_, dir_ / "model.safetensors.index.json"}) {
    SafetensorsModel m = SafetensorsModel::open(p);
    EXPECT_EQ(m.files().size(), 2u);
    EXPECT_EQ(m.tensor_names(),
              (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight"}));
    auto r = m.find("lm_head.weight");
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->file->to_f32(*r->tensor), b_);
    auto e = m.find("model.embed_tokens.weight");
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->file->to_f32(*e->tensor), a_);
    EXPECT_FALSE(m.find("missing").has_value());
  }
  SafetensorsIndex idx = read_safetensors_index(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(idx.total_size, 40u);
  EXPECT_EQ(idx.shards.size(), 2u);
}

TEST_F(SafetensorsShards, IndexNamingTheWrongShardIsAnError) {
  write_index(
      "{\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\", "
      "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"}");
  Error e = test::expect_error([&] { SafetensorsModel::open(dir_); });
  EXPECT_NE(std::string(e.what()).find("model.embed_tokens.weight"), std::string::npos);
}

TEST_F(SafetensorsShards, TensorInTwoShardsIsAnError) {
  SafetensorsWriter w;
  w.add_f32("lm_head.weight", {4}, b_);
  w.write(dir_ / "model-00001-of-00002.safetensors");
  write_index(
      "{\"lm_head.weight\": \"model-00002-of-00002.safetensors\", "
      "\"x\": \"model-00001-of-00002.safetensors\"}");
  Error e = test::expect_error([&] { SafetensorsModel::open(dir_); });
  EXPECT_NE(std::string(e.what()).find("one shard only"), std::string::npos) << e.what();
}

TEST_F(SafetensorsShards, ShardNamesMustStayBesideTheIndex) {
  for (std::string bad : {"../evil.safetensors", "/etc/passwd", "..", ""}) {
    write_index("{\"lm_head.weight\": \"" + bad + "\"}");
    Error e = test::expect_error([&] { SafetensorsModel::open(dir_); });
    EXPECT_NE(std::string(e.what()).find("plain file name"), std::string::npos) << e.what();
  }
  write_index("[1]");
  EXPECT_THROW(SafetensorsModel::open(dir_), Error);
  test::write_file(dir_ / "model.safetensors.index.json", "{\"metadata\": {}}");
  EXPECT_THROW(SafetensorsModel::open(dir_), Error);
}

TEST_F(SafetensorsShards, MissingShardFileIsAnError) {
  write_index("{\"lm_head.weight\": \"model-00003-of-00003.safetensors\"}");
  Error e = test::expect_error([&] { SafetensorsModel::open(dir_); });
  EXPECT_NE(std::string(e.what()).find("model-00003-of-00003"), std::string::npos);
}

TEST(SafetensorsModelOpen, SingleFileAndDirectory) {
  fs::path dir = test::scratch_dir("st-single");
  std::mt19937 rng(14);
  std::vector<float> v = test::random_nonzero(3, rng, 2.0f);
  SafetensorsWriter w;
  w.add_f32("x", {3}, v);
  w.write(dir / "model.safetensors");
  EXPECT_EQ(SafetensorsModel::open(dir).tensor_names(), std::vector<std::string>{"x"});
  SafetensorsModel m = SafetensorsModel::open(dir / "model.safetensors");
  auto r = m.find("x");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->file->to_f32(*r->tensor), v);
  fs::remove(dir / "model.safetensors");
  EXPECT_THROW(SafetensorsModel::open(dir), Error);
  fs::remove_all(dir);
}

TEST(SafetensorsMalformed, SeedCorpus) {
  fs::path dir = fs::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "safetensors";
  ASSERT_TRUE(fs::is_directory(dir));
  int valid = 0, invalid = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind("valid-", 0) == 0) {
      EXPECT_NO_THROW(SafetensorsFile::open(e.path())) << name;
      ++valid;
    } else {
      Error err = test::expect_error([&] { SafetensorsFile::open(e.path()); });
      EXPECT_NE(std::string(err.what()).find(name), std::string::npos) << err.what();
      ++invalid;
    }
  }
  EXPECT_GE(valid, 1);
  EXPECT_GE(invalid, 4);
}

}  // namespace
}  // namespace lockstep::formats
