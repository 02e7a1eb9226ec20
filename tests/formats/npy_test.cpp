#include "formats/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>

#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

// An .npy with a hand-written header dict, for the reader's edge cases.
std::vector<std::byte> npy_bytes(std::string dict, size_t data_bytes, uint8_t major = 1,
                                 uint8_t minor = 0) {
  size_t prefix = major == 1 ? 10 : 12;
  dict += '\n';
  std::vector<std::byte> out(prefix + dict.size() + data_bytes, std::byte{0x3f});
  const char magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};
  std::memcpy(out.data(), magic, 6);
  out[6] = std::byte{major};
  out[7] = std::byte{minor};
  if (major == 1) {
    auto len = static_cast<uint16_t>(dict.size());
    std::memcpy(out.data() + 8, &len, 2);
  } else {
    auto len = static_cast<uint32_t>(dict.size());
    std::memcpy(out.data() + 8, &len, 4);
  }
  std::memcpy(out.data() + prefix, dict.data(), dict.size());
  return out;
}

class NpyRoundTrip : public ::testing::TestWithParam<std::vector<uint64_t>> {};

TEST_P(NpyRoundTrip, WriteThenReadIsExact) {
  const std::vector<uint64_t>& shape = GetParam();
  size_t n = 1;
  for (uint64_t d : shape) n *= d;
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::vector<float> v = test::random_nonzero(n, seed, 8.0f);

  std::vector<std::byte> b = encode_npy(v, shape);
  NpyHeader h = parse_npy_header(b, "mem.npy");
  EXPECT_EQ(h.major, 1);
  EXPECT_EQ(h.data_offset % 64, 0u) << "data must start 64-byte aligned";
  EXPECT_EQ(h.shape, shape);
  EXPECT_EQ(b.size(), h.data_offset + 4 * n);

  fs::path dir = test::scratch_dir("npy");
  write_npy(dir / "a.npy", v, shape);
  NpyArray a = read_npy(dir / "a.npy");
  EXPECT_EQ(a.shape, shape);
  ASSERT_EQ(a.values.size(), n);
  if (n > 0) {
    EXPECT_EQ(std::memcmp(a.values.data(), v.data(), 4 * n), 0);
  }
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Ranks, NpyRoundTrip,
                         ::testing::Values(std::vector<uint64_t>{}, std::vector<uint64_t>{1},
                                           std::vector<uint64_t>{7}, std::vector<uint64_t>{3, 5},
                                           std::vector<uint64_t>{2, 3, 4},
                                           std::vector<uint64_t>{2, 1, 3, 2},
                                           std::vector<uint64_t>{1, 2, 1, 2, 3},
                                           std::vector<uint64_t>{0}, std::vector<uint64_t>{4, 0, 2},
                                           std::vector<uint64_t>{5, 512}));

TEST(Npy, HeaderIsWhatNumpyWrites) {
  std::vector<float> v = test::random_nonzero(6, 5, 8.0f);
  std::vector<uint64_t> shape = {2, 3};
  std::vector<std::byte> b = encode_npy(v, shape);
  std::string text(reinterpret_cast<const char*>(b.data()), 128);
  EXPECT_EQ(text.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ(static_cast<int>(b[8]) | (static_cast<int>(b[9]) << 8), 118);
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_EQ(text.substr(10, dict.size()), dict);
  EXPECT_EQ(text.find_first_not_of(' ', 10 + dict.size()), 127u);
  EXPECT_EQ(text[127], '\n');

  std::vector<uint64_t> one = {7};
  std::vector<std::byte> b1 = encode_npy(test::random_nonzero(7, 6, 8.0f), one);
  std::string t1(reinterpret_cast<const char*>(b1.data()) + 10, 60);
  EXPECT_NE(t1.find("'shape': (7,), }"), std::string::npos) << t1;
}

TEST(Npy, ReadsVersions2And3AndLenientSpelling) {
  std::vector<float> v = test::random_nonzero(6, 7, 8.0f);
  for (uint8_t major : {1, 2, 3}) {
    for (std::string dict : {
             std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
             std::string("{\"shape\": (2, 3), \"descr\": \"<f4\", \"fortran_order\": False}"),
             std::string("{'descr':'<f4','fortran_order':False,'shape':(2L,3L)}   "),
         }) {
      std::vector<std::byte> b = npy_bytes(dict, 24, major);
      size_t at = b.size() - 24;
      std::memcpy(b.data() + at, v.data(), 24);
      NpyArray a = parse_npy(b, "v.npy");
      EXPECT_EQ(a.shape, (std::vector<uint64_t>{2, 3})) << dict;
      ASSERT_EQ(a.values.size(), 6u);
      EXPECT_EQ(std::memcmp(a.values.data(), v.data(), 24), 0);
    }
  }
}

TEST(Npy, ZeroDimensionMakesAnyShapeEmpty) {
  std::vector<std::byte> b = npy_bytes(
      "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 0), }", 0);
  NpyArray a = parse_npy(b, "empty.npy");
  EXPECT_EQ(a.shape, (std::vector<uint64_t>{1ull << 32, 1ull << 32, 0}));
  EXPECT_TRUE(a.values.empty());
  EXPECT_THROW(parse_npy(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", 4),
                         "empty.npy"),
               Error);
}

struct BadHeader {
  const char* label;
  std::string dict;
  size_t data_bytes;
  const char* message_part;
};

class NpyBadHeader : public ::testing::TestWithParam<BadHeader> {};

TEST_P(NpyBadHeader, IsRefusedWithAClearMessage) {
  const BadHeader& c = GetParam();
  std::vector<std::byte> b = npy_bytes(c.dict, c.data_bytes);
  Error e = test::expect_error([&] { parse_npy(b, "bad.npy"); });
  EXPECT_EQ(e.file(), "bad.npy");
  EXPECT_NE(e.offset(), Error::kNoOffset);
  EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << e.what();
}

const std::string kGood = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";

INSTANTIATE_TEST_SUITE_P(
    Cases, NpyBadHeader,
    ::testing::Values(
        BadHeader{"big_endian", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24,
                  "big-endian"},
        BadHeader{"f64", "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48,
                  "non-float32"},
        BadHeader{"f16", "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }", 12,
                  "non-float32"},
        BadHeader{"u8", "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }", 6,
                  "non-float32"},
        BadHeader{"unstated_order", "{'descr': '=f4', 'fortran_order': False, 'shape': (2,)}", 8,
                  "unstated byte order"},
        BadHeader{"fortran", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24,
                  "C order"},
        BadHeader{"structured",
                  "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8,
                  "structured"},
        BadHeader{"missing_shape", "{'descr': '<f4', 'fortran_order': False}", 4, "'shape'"},
        BadHeader{"extra_key", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 'y'}",
                  4, "only the keys"},
        BadHeader{"shape_list", "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}", 24,
                  "string, True, False or a tuple"},
        BadHeader{"negative_dim", "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", 4,
                  "non-negative integer"},
        BadHeader{"overflowing_shape",
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}", 4,
                  "fits in 64 bits"},
        BadHeader{"huge_dim",
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 4,
                  "fits in 64 bits"},
        BadHeader{"descr_not_string", "{'descr': 4, 'fortran_order': False, 'shape': (1,)}", 4,
                  "string, True, False or a tuple"},
        BadHeader{"fortran_not_bool", "{'descr': '<f4', 'fortran_order': 'no', 'shape': (1,)}", 4,
                  "True or False"},
        BadHeader{"unclosed", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,", 4,
                  "found end of header"},
        BadHeader{"unclosed_no_comma", "{'descr': '<f4', 'fortran_order': False, 'shape': (1", 4,
                  "in the shape tuple"},
        BadHeader{"garbage_after", kGood + " junk", 24, "only spaces"},
        BadHeader{"escape", "{'de\\scr': '<f4'}", 4, "without escapes"},
        BadHeader{"data_short", kGood, 23, "truncated"},
        BadHeader{"data_long", kGood, 28, "trailing"}),
    [](const auto& param_info) { return std::string(param_info.param.label); });

TEST(NpyMalformed, BadMagicAndVersion) {
  std::vector<std::byte> b = encode_npy(test::random_nonzero(4, 8, 8.0f), std::vector<uint64_t>{4});
  auto bad_magic = b;
  bad_magic[1] = std::byte{'n'};
  EXPECT_EQ(test::expect_error([&] { parse_npy(bad_magic, "m.npy"); }).offset(), 0u);
  for (auto [major, minor] : {std::pair{4, 0}, std::pair{1, 1}, std::pair{0, 0}}) {
    auto v = b;
    v[6] = static_cast<std::byte>(major);
    v[7] = static_cast<std::byte>(minor);
    Error e = test::expect_error([&] { parse_npy(v, "v.npy"); });
    EXPECT_EQ(e.offset(), 6u);
    EXPECT_NE(std::string(e.what()).find("1.0, 2.0 or 3.0"), std::string::npos);
  }
}

TEST(NpyMalformed, TruncatedAtEveryHeaderByteAndInTheData) {
  std::vector<std::byte> b = encode_npy(test::random_nonzero(12, 9, 8.0f), std::vector<uint64_t>{3, 4});
  NpyHeader h = parse_npy_header(b, "ok.npy");
  for (size_t n = 0; n < b.size(); n += (n < h.data_offset ? 1 : 5)) {
    std::span<const std::byte> cut(b.data(), n);
    Error e = test::expect_error([&] { parse_npy(cut, "cut.npy"); });
    EXPECT_EQ(e.file(), "cut.npy");
    EXPECT_LE(e.offset(), n) << n;
  }
}

TEST(NpyMalformed, FlippedHeaderBytesNeverCrash) {
  std::vector<std::byte> b = encode_npy(test::random_nonzero(6, 11, 8.0f), std::vector<uint64_t>{2, 3});
  NpyHeader h = parse_npy_header(b, "ok.npy");
  for (size_t i = 0; i < h.data_offset; ++i) {
    for (uint8_t v : {0x00, 0x27, 0x28, 0x29, 0x2c, 0x39, 0x7d, 0xff}) {
      auto c = b;
      c[i] = std::byte{v};
      try {
        NpyArray a = parse_npy(c, "flip.npy");
        size_t n = 1;
        for (uint64_t d : a.shape) n *= d;
        EXPECT_EQ(a.values.size(), n);
      } catch (const Error& e) {
        EXPECT_EQ(e.file(), "flip.npy");
      }
    }
  }
}

TEST(NpyMalformed, HeaderLengthPastTheEnd) {
  std::vector<std::byte> b = npy_bytes(kGood, 24, 2);
  uint32_t huge = 0xfffffff0u;
  std::memcpy(b.data() + 8, &huge, 4);
  Error e = test::expect_error([&] { parse_npy(b, "h.npy"); });
  EXPECT_NE(std::string(e.what()).find("header length"), std::string::npos) << e.what();
}

TEST(Npy, WriterRejectsAShapeThatDoesNotMatch) {
  std::vector<float> v = test::random_nonzero(6, 10, 8.0f);
  EXPECT_THROW(encode_npy(v, std::vector<uint64_t>{4, 2}), Error);
  EXPECT_THROW(encode_npy(v, std::vector<uint64_t>{1ull << 32, 1ull << 32, 4}), Error);
}

// Written by NumPy 1.24 (np.save and format.write_array(version=(3, 0))) of
// default_rng(1).standard_normal((3, 5)).astype('<f4').
TEST(Npy, ReadsFilesNumpyWrote) {
  fs::path dir = fs::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "npy";
  for (const char* name : {"valid-numpy-v1-3x5.npy", "valid-numpy-v3-3x5.npy"}) {
    NpyArray a = read_npy(dir / name);
    EXPECT_EQ(a.shape, (std::vector<uint64_t>{3, 5})) << name;
    ASSERT_EQ(a.values.size(), 15u);
    EXPECT_EQ(a.values[0], 0.3455841839313507f);
    EXPECT_EQ(a.values[2], 0.3304370641708374f);
    double sum = 0;
    for (float f : a.values) sum += f;
    EXPECT_NEAR(sum, 1.442734306678176, 1e-12) << name;
  }
  Error e = test::expect_error([&] { read_npy(dir / "numpy-big-endian.npy"); });
  EXPECT_NE(std::string(e.what()).find("'>f4'"), std::string::npos) << e.what();
}

TEST(NpyMalformed, SeedCorpus) {
  fs::path dir = fs::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "npy";
  ASSERT_TRUE(fs::is_directory(dir));
  int valid = 0, invalid = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.rfind("valid-", 0) == 0) {
      EXPECT_NO_THROW(read_npy(e.path())) << name;
      ++valid;
    } else {
      Error err = test::expect_error([&] { read_npy(e.path()); });
      EXPECT_NE(std::string(err.what()).find(name), std::string::npos) << err.what();
      ++invalid;
    }
  }
  EXPECT_GE(valid, 1);
  EXPECT_GE(invalid, 3);
}

}  // namespace
}  // namespace lockstep::formats
