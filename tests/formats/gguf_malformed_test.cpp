// The GGUF malformed-file corpus: every case must end in a lockstep::Error that names the
// file, the offset and what was expected; never a crash, a hang or a huge allocation.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <limits>

#include "formats/error.h"
#include "formats/ggml_codec.h"
#include "formats/gguf.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

// Raw little-endian GGUF bytes, so cases can say things the writer refuses to.
struct Raw {
  std::string b;
  Raw& u32(uint32_t v) {
    b.append(reinterpret_cast<const char*>(&v), 4);
    return *this;
  }
  Raw& u64(uint64_t v) {
    b.append(reinterpret_cast<const char*>(&v), 8);
    return *this;
  }
  Raw& u8(uint8_t v) {
    b.push_back(static_cast<char>(v));
    return *this;
  }
  Raw& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Raw& header(uint64_t tensors, uint64_t kv) { return u32(0x46554747).u32(3).u64(tensors).u64(kv); }
  Raw& tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, uint64_t off) {
    str(name).u32(static_cast<uint32_t>(dims.size()));
    for (auto d : dims) u64(d);
    return u32(type).u64(off);
  }
  Raw& pad_to(size_t align) {
    while (b.size() % align) b.push_back('\0');
    return *this;
  }
  Raw& zeros(size_t n) {
    b.append(n, '\0');
    return *this;
  }
};

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// Parses and returns the error, failing the test if there is none or it lacks the basics.
std::string parse_error(const std::string& bytes, const std::string& name = "case.gguf") {
  try {
    GgufFile::parse(bytes_of(bytes), name);
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(name), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected"), std::string::npos) << msg;
    EXPECT_NE(e.offset(), Error::kNoOffset) << msg;
    EXPECT_LE(e.offset(), bytes.size() + 64) << msg;
    return msg;
  }
  ADD_FAILURE() << "no error for " << name;
  return {};
}

struct Case {
  std::string name;
  std::string bytes;
  std::string needle;  // a phrase the message must contain
};

std::vector<Case> corpus() {
  constexpr uint64_t kHuge = uint64_t{1} << 60;
  std::vector<Case> c;
  c.push_back({"empty", "", "GGUF magic"});
  c.push_back({"bad_magic", Raw().u32(0x46554746).u32(3).u64(0).u64(0).b, "magic"});
  c.push_back({"ggml_magic", "lmgg" + std::string(20, '\0'), "magic"});
  c.push_back({"version_1", Raw().u32(0x46554747).u32(1).u64(0).u64(0).b, "version 2 or 3"});
  c.push_back({"big_endian", Raw().u32(0x46554747).u32(0x03000000).u64(0).u64(0).b, "big-endian"});
  c.push_back({"version_4", Raw().u32(0x46554747).u32(4).u64(0).u64(0).b, "version 2 or 3"});
  c.push_back({"tensor_count_huge", Raw().header(kHuge, 0).b, "tensor count"});
  c.push_back({"kv_count_huge", Raw().header(0, kHuge).b, "metadata count"});
  c.push_back({"kv_count_past_end", Raw().header(0, 1000).str("a").u32(4).u32(1).b,
               "metadata count the file can hold"});
  c.push_back({"tensor_count_past_end", Raw().header(50000, 0).zeros(64).b,
               "tensor count the file can hold"});
  c.push_back({"key_length_huge", Raw().header(0, 1).u64(kHuge).zeros(16).b, "length <="});
  c.push_back({"key_length_past_end", Raw().header(0, 1).u64(1000).zeros(16).b, "bytes left"});
  c.push_back({"empty_key", Raw().header(0, 1).str("").u32(4).u32(1).b, "non-empty metadata key"});
  c.push_back({"duplicate_key", Raw().header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).b,
               "unique"});
  c.push_back({"value_type_13", Raw().header(0, 1).str("k").u32(13).u32(1).b, "value type"});
  c.push_back({"bool_2", Raw().header(0, 1).str("k").u32(7).u8(2).b, "bool 0 or 1"});
  c.push_back({"string_value_huge", Raw().header(0, 1).str("k").u32(8).u64(kHuge).b, "length <="});
  c.push_back({"array_count_huge",
               Raw().header(0, 1).str("k").u32(9).u32(10).u64(kHuge).zeros(64).b, "array length"});
  c.push_back({"array_of_strings_huge",
               Raw().header(0, 1).str("k").u32(9).u32(8).u64(uint64_t{1} << 40).zeros(64).b,
               "array length"});
  c.push_back({"array_elem_type_bad", Raw().header(0, 1).str("k").u32(9).u32(99).u64(1).b,
               "array element type"});
  {
    Raw r = Raw().header(0, 1).str("k").u32(9);
    for (int i = 0; i < 100; ++i) r.u32(9).u64(1);
    c.push_back({"array_nesting_100", r.zeros(16).b, "nesting depth"});
  }
  c.push_back({"alignment_zero", Raw().header(0, 1).str("general.alignment").u32(4).u32(0).b,
               "power of two"});
  c.push_back({"alignment_three", Raw().header(0, 1).str("general.alignment").u32(4).u32(3).b,
               "power of two"});
  c.push_back({"alignment_string", Raw().header(0, 1).str("general.alignment").u32(8).str("32").b,
               "power of two"});
  c.push_back({"n_dims_0", Raw().header(1, 0).tensor("t", {}, 0, 0).zeros(64).b, "dimensions"});
  c.push_back({"n_dims_5", Raw().header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).zeros(64).b,
               "dimensions"});
  c.push_back({"dim_above_int64", Raw().header(1, 0).tensor("t", {kHuge * 15, 1}, 0, 0).zeros(64).b,
               "fits int64"});
  c.push_back({"dims_product_overflow",
               Raw().header(1, 0).tensor("t", {1u << 31, 1u << 31, 1u << 31}, 0, 0).zeros(64).b,
               "fits int64"});
  c.push_back({"unknown_type_31", Raw().header(1, 0).tensor("t", {32}, 31, 0).zeros(200).b,
               "unknown type id 31"});
  c.push_back({"unknown_type_huge",
               Raw().header(1, 0).tensor("t", {32}, 0xFFFFFFFF, 0).zeros(200).b,
               "unknown type id"});
  c.push_back({"row_not_whole_blocks", Raw().header(1, 0).tensor("t", {100}, 12, 0).zeros(400).b,
               "multiple of Q4_K"});
  c.push_back({"misaligned_offset", Raw().header(1, 0).tensor("t", {4}, 0, 8).zeros(200).b,
               "aligned to 32"});
  c.push_back({"offset_past_end",
               Raw().header(1, 0).tensor("t", {4}, 0, uint64_t{1} << 40).pad_to(32).zeros(32).b,
               "tensor data"});
  c.push_back({"data_past_end",
               Raw().header(1, 0).tensor("t", {1024, 1024}, 0, 0).pad_to(32).zeros(32).b,
               "tensor data"});
  c.push_back(
      {"data_start_past_end", Raw().header(1, 0).tensor("t", {4}, 0, 0).b, "tensor data starting"});
  c.push_back(
      {"overlapping",
       Raw().header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).pad_to(32).zeros(128).b,
       "overlap"});
  c.push_back(
      {"duplicate_tensor",
       Raw().header(2, 0).tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32).pad_to(32).zeros(64).b,
       "unique tensor names"});
  c.push_back({"empty_tensor_name", Raw().header(1, 0).tensor("", {8}, 0, 0).pad_to(32).zeros(64).b,
               "non-empty tensor name"});
  return c;
}

class GgufMalformed : public ::testing::TestWithParam<Case> {};

TEST_P(GgufMalformed, YieldsErrorNamingFileOffsetAndExpectation) {
  const Case& c = GetParam();
  std::string msg = parse_error(c.bytes, c.name + ".gguf");
  EXPECT_NE(msg.find(c.needle), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(Corpus, GgufMalformed, ::testing::ValuesIn(corpus()),
                         [](const auto& info) { return info.param.name; });

// A valid file with every metadata type and tensors of several types, cut short at every
// byte up to the end of its last tensor: every prefix must be refused cleanly.
TEST(GgufMalformed, TruncatedAtEveryByteIsAnError) {
  std::filesystem::path dir = test::scratch_dir("gguf");
  std::string path = (dir / "full.gguf").string();
  {
    GgufWriter w(path);
    w.set("general.architecture", GgufValue::str("llama"));
    w.set("a.u8", GgufValue::u8(1));
    w.set("a.f64", GgufValue::f64(0.25));
    w.set("a.arr",
          GgufValue::array(GgufValueType::Array,
                           {GgufValue::array(GgufValueType::String, {GgufValue::str("x")})}));
    w.add_tensor("w.f32", GgmlType::F32, {8, 2});
    w.add_tensor("w.q8", GgmlType::Q8_0, {64});
    std::string f32(64, '\x3f'), q8(68, '\x01');
    w.write_tensor(bytes_of(f32));
    w.write_tensor(bytes_of(q8));
    w.finish();
  }
  std::string full = test::read_file(path);
  GgufFile whole = GgufFile::parse(bytes_of(full), "full.gguf");
  const GgufTensorInfo& last = whole.tensors().back();
  size_t end = whole.data_offset() + last.offset + last.bytes;
  ASSERT_LE(end, full.size());
  for (size_t cut = 0; cut < end; ++cut) parse_error(full.substr(0, cut), "cut.gguf");
  EXPECT_NO_THROW(GgufFile::parse(bytes_of(full.substr(0, end)), "exact.gguf"));
}

TEST(GgufMalformed, MissingFileAndDirectoryAreErrors) {
  EXPECT_THROW(GgufFile::open("/nonexistent/model.gguf"), Error);
  EXPECT_THROW(GgufFile::open(test::scratch_dir("gguf").string()), Error);
}

}  // namespace
}  // namespace lockstep::formats

namespace lockstep::formats {
namespace {

// The fuzzers' seed corpus doubles as regression cases: valid-* files parse (and their
// tensors dequantize), every other file is refused with an Error naming it.
TEST(GgufMalformed, SeedCorpus) {
  std::filesystem::path dir = std::filesystem::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "gguf";
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    std::string bytes = test::read_file(e.path());
    ++files;
    if (name.rfind("valid-", 0) == 0) {
      GgufFile f = GgufFile::parse(bytes_of(bytes), name);
      for (const auto& t : f.tensors()) {
        std::vector<float> out(t.elements);
        EXPECT_NO_THROW(dequantize(t.type, f.tensor_data(t), out)) << name << " " << t.name;
      }
    } else {
      parse_error(bytes, name);
    }
  }
  EXPECT_GE(files, 5);
}

}  // namespace
}  // namespace lockstep::formats
