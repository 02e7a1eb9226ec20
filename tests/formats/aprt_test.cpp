#include "formats/aprt.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out(s.size());
  std::memcpy(out.data(), s.data(), s.size());
  return out;
}

struct RoundTripCase {
  size_t count;
  uint32_t layer;
};

class AprtRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(AprtRoundTrip, EncodeParseAndFileAreBitExact) {
  const auto [count, layer] = GetParam();
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<float> values = test::random_nonzero(count, seed, 4.0f);

  std::vector<std::byte> bytes = encode_aprt(layer, values);
  ASSERT_EQ(bytes.size(), 12 + 4 * count);
  AprtTensor t = parse_aprt(bytes, "mem");
  EXPECT_EQ(t.layer, layer);
  EXPECT_EQ(t.whole_model(), layer == kAprtWholeModelLayer);
  ASSERT_EQ(t.values.size(), count);
  for (size_t i = 0; i < count; ++i) ASSERT_EQ(bits_of(t.values[i]), bits_of(values[i])) << i;

  fs::path dir = test::scratch_dir("aprt");
  fs::path file = dir / "t.bin";
  write_aprt(file, layer, values);
  EXPECT_EQ(fs::file_size(file), 12 + 4 * count);
  AprtHeader h = read_aprt_header(file);
  EXPECT_EQ(h.layer, layer);
  EXPECT_EQ(h.count, count);
  AprtTensor back = read_aprt(file);
  ASSERT_EQ(back.values.size(), count);
  EXPECT_EQ(std::memcmp(back.values.data(), values.data(), count * 4), 0);
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AprtRoundTrip,
                         ::testing::Values(RoundTripCase{1, 0}, RoundTripCase{3, 7},
                                           RoundTripCase{17, kAprtWholeModelLayer},
                                           RoundTripCase{4096, 27},
                                           RoundTripCase{151936, kAprtWholeModelLayer},
                                           RoundTripCase{5, 0xFFFFFFFEu}));

TEST(Aprt, HeaderBytesMatchAprender) {
  std::vector<float> v = {1.0f, -2.5f};
  std::vector<std::byte> b = encode_aprt(3, v);
  const unsigned char want[] = {'A', 'P', 'R',  'T',  3,    0,    0,    0,    2,    0,
                                0,   0,   0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0};
  ASSERT_EQ(b.size(), sizeof(want));
  EXPECT_EQ(std::memcmp(b.data(), want, sizeof(want)), 0);
}

TEST(Aprt, NanPayloadsInfAndSignedZeroRoundTripBitForBit) {
  const uint32_t patterns[] = {
      0x7fc00000u,  // quiet NaN
      0x7fc00001u,  // quiet NaN with payload
      0xffa12345u,  // negative signalling NaN with payload
      0x7f800001u,  // smallest signalling NaN
      0x7f800000u,  // +Inf
      0xff800000u,  // -Inf
      0x80000000u,  // -0
      0x00000001u,  // smallest subnormal
      0x807fffffu,  // largest negative subnormal
      0x7f7fffffu,  // FLT_MAX
  };
  std::vector<float> v;
  for (uint32_t p : patterns) v.push_back(from_bits(p));
  AprtTensor t = parse_aprt(encode_aprt(1, v), "mem");
  ASSERT_EQ(t.values.size(), v.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits_of(t.values[i]), patterns[i]) << i;

  fs::path dir = test::scratch_dir("aprt");
  write_aprt(dir / "nan.bin", kAprtWholeModelLayer, v);
  AprtTensor f = read_aprt(dir / "nan.bin");
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits_of(f.values[i]), patterns[i]) << i;
  fs::remove_all(dir);
}

TEST(Aprt, EmptyBodyIsValid) {
  AprtTensor t = parse_aprt(encode_aprt(0, {}), "mem");
  EXPECT_EQ(t.layer, 0u);
  EXPECT_TRUE(t.values.empty());
}

TEST(AprtMalformed, TruncatedAtEveryHeaderByte) {
  std::vector<std::byte> full = encode_aprt(2, test::random_nonzero(4, 1, 4.0f));
  for (size_t n = 0; n < kAprtHeaderBytes; ++n) {
    std::span<const std::byte> cut(full.data(), n);
    Error e = test::expect_error([&] { parse_aprt(cut, "cut.bin"); });
    EXPECT_EQ(e.file(), "cut.bin") << n;
    EXPECT_EQ(e.offset(), n < 4 ? 0u : n < 8 ? 4u : 8u) << n;
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
}

TEST(AprtMalformed, TruncatedBodyNamesSizeAndOffset) {
  const size_t count = 64;
  std::vector<std::byte> full = encode_aprt(9, test::random_nonzero(count, 2, 4.0f));
  for (size_t n : {size_t{12}, size_t{13}, size_t{15}, size_t{16}, size_t{100}, full.size() - 1}) {
    std::span<const std::byte> cut(full.data(), n);
    Error e = test::expect_error([&] { parse_aprt(cut, "dump/layer-9/ffn_up.bin"); });
    EXPECT_EQ(e.offset(), n);
    std::string msg = e.what();
    EXPECT_NE(msg.find("dump/layer-9/ffn_up.bin"), std::string::npos) << msg;
    EXPECT_NE(msg.find("256 body bytes"), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  }
}

TEST(AprtMalformed, TrailingBytesAreAnError) {
  std::vector<std::byte> b = encode_aprt(0, test::random_nonzero(3, 3, 4.0f));
  for (size_t extra : {1, 3, 4, 400}) {
    std::vector<std::byte> longer = b;
    longer.resize(b.size() + extra, std::byte{0x41});
    Error e = test::expect_error([&] { parse_aprt(longer, "x.bin"); });
    EXPECT_EQ(e.offset(), b.size());
    EXPECT_NE(std::string(e.what()).find("trailing"), std::string::npos) << e.what();
  }
}

TEST(AprtMalformed, BadMagic) {
  for (std::string_view magic : {"APRX", "aprt", "GGUF", "\0\0\0\0"}) {
    std::vector<std::byte> b = encode_aprt(0, test::random_nonzero(2, 4, 4.0f));
    std::memcpy(b.data(), magic.data(), 4);
    Error e = test::expect_error([&] { parse_aprt(b, "m.bin"); });
    EXPECT_EQ(e.offset(), 0u);
    EXPECT_EQ(e.expected(), "magic \"APRT\"");
  }
}

TEST(AprtMalformed, AbsurdCountFailsBeforeAllocating) {
  // count 0xFFFFFFFF in a 20-byte file: must be refused from the size alone.
  std::vector<std::byte> b =
      bytes_of(std::string_view("APRT\xff\xff\xff\xff\xff\xff\xff\xff"
                                "12345678",
                                20));
  Error e = test::expect_error([&] { parse_aprt(b, "absurd.bin"); });
  EXPECT_EQ(e.offset(), 20u);
  EXPECT_NE(std::string(e.what()).find("17179869180 body bytes"), std::string::npos) << e.what();
}

TEST(AprtMalformed, EveryHeaderCorruptionIsRefusedOrConsistent) {
  std::vector<std::byte> b = encode_aprt(4, test::random_nonzero(5, 6, 4.0f));
  for (size_t i = 0; i < kAprtHeaderBytes; ++i) {
    for (uint8_t v : {0x00, 0x01, 0x05, 0x80, 0xff}) {
      auto c = b;
      c[i] = std::byte{v};
      try {
        AprtTensor t = parse_aprt(c, "flip.bin");
        EXPECT_EQ(12 + 4 * t.values.size(), c.size());
      } catch (const Error& e) {
        EXPECT_EQ(e.file(), "flip.bin");
      }
    }
  }
}

TEST(AprtMalformed, MissingFileIsAnError) {
  fs::path dir = test::scratch_dir("aprt");
  Error e = test::expect_error([&] { read_aprt(dir / "nope.bin"); });
  EXPECT_NE(std::string(e.what()).find("nope.bin"), std::string::npos);
  fs::remove_all(dir);
}

// Seeds for the fuzzers: "valid-*" files must parse, every other file must be refused
// with an Error naming it.
TEST(AprtMalformed, SeedCorpus) {
  fs::path dir = fs::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "aprt";
  ASSERT_TRUE(fs::is_directory(dir));
  int valid = 0, invalid = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind("valid-", 0) == 0) {
      EXPECT_NO_THROW(read_aprt(e.path())) << name;
      ++valid;
    } else {
      Error err = test::expect_error([&] { read_aprt(e.path()); });
      EXPECT_NE(std::string(err.what()).find(name), std::string::npos) << err.what();
      ++invalid;
    }
  }
  EXPECT_GE(valid, 1);
  EXPECT_GE(invalid, 4);
}

TEST(AprtShared, ReadsLlamaCppReferenceLogits) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path dir = test::shared_models() / "reference" / "stories260K";
  auto info = nlohmann::json::parse(test::read_file(dir / "llamacpp.json"));
  size_t tokens = info["tokens"].size();
  size_t vocab = info["n_vocab"].get<size_t>();
  AprtTensor t = read_aprt(dir / "lm_head.bin");
  EXPECT_TRUE(t.whole_model());
  ASSERT_EQ(t.values.size(), tokens * vocab);
  // The README's float64 reference logit of id 0 after BOS.
  EXPECT_NEAR(t.values[0], -6.22291f, 1e-3f);
  EXPECT_NEAR(t.values[1], 8.40434f, 1e-3f);
}

}  // namespace
}  // namespace lockstep::formats
