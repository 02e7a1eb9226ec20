#include "formats/manifest.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "formats/aprt.h"
#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

Manifest random_manifest(uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(1, 150000);
  std::uniform_int_distribution<uint64_t> dim(1, 4096);
  Manifest m;
  m.tool_name = "lockstep";
  m.tool_version = "0.1.0";
  m.lane = "cuda-graph";
  m.model_path = "/models/qwen2-0.5b-q4_k_m.gguf";
  m.model_sha256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d";
  m.family = "qwen2";
  m.config = {{"hidden_size", dim(rng)}, {"rope_theta", 1e6}, {"qkv_bias", true}};
  size_t tokens = 1 + rng() % 9;
  for (size_t i = 0; i < tokens; ++i) m.token_ids.push_back(tok(rng));
  for (uint32_t layer = 0; layer < 3; ++layer)
    m.files["layer-" + std::to_string(layer) + "/attn_norm.bin"] = {tokens, dim(rng)};
  m.files["lm_head.bin"] = {tokens, dim(rng)};
  return m;
}

TEST(Manifest, FormatThenParseRoundTrips) {
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  Manifest m = random_manifest(seed);
  std::string text = format_manifest(m);
  EXPECT_EQ(text.back(), '\n');
  Manifest back = parse_manifest(text, "manifest.json");
  EXPECT_EQ(back, m);
  ASSERT_NE(back.shape_of("lm_head.bin"), nullptr);
  EXPECT_EQ(*back.shape_of("lm_head.bin"), m.files.at("lm_head.bin"));
  EXPECT_EQ(back.shape_of("layer-9/attn_norm.bin"), nullptr);
  // The documented key order, so manifests diff well.
  EXPECT_LT(text.find("\"format_version\""), text.find("\"tool\""));
  EXPECT_LT(text.find("\"lane\""), text.find("\"files\""));
}

TEST(Manifest, OnlyTheVersionIsRequiredAndUnknownKeysAreIgnored) {
  Manifest m = parse_manifest(R"({"format_version": 1})", "m.json");
  EXPECT_EQ(m.format_version, 1);
  EXPECT_TRUE(m.lane.empty());
  EXPECT_TRUE(m.files.empty());
  EXPECT_TRUE(m.config.is_object());

  Manifest f = parse_manifest(
      R"({"format_version": 1, "lane": "ref", "future": {"x": [1, 2]}, "model": {"path": "a",
          "quantization": "Q4_K"}, "tool": {"name": "lockstep", "build": 7}})",
      "m.json");
  EXPECT_EQ(f.lane, "ref");
  EXPECT_EQ(f.model_path, "a");
  EXPECT_EQ(f.tool_name, "lockstep");
  EXPECT_TRUE(f.tool_version.empty());
}

TEST(Manifest, ZeroDimensionIsNotAnOverflow) {
  Manifest m = parse_manifest(
      R"({"format_version": 1, "files": {"x.bin": [4294967296, 4294967296, 0]}})", "m.json");
  EXPECT_EQ(m.files.at("x.bin").size(), 3u);
}

TEST(Manifest, Sha256IsStoredLowercase) {
  Manifest m = parse_manifest(
      R"({"format_version": 1, "model": {"sha256":
          "270CBA1BD5109F42D03350F60406024560464DB173C0E387D91F0426D3BD256D"}})",
      "m.json");
  EXPECT_EQ(m.model_sha256, "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d");
}

struct BadManifest {
  const char* label;
  std::string json;
  const char* message_part;
};

class ManifestBad : public ::testing::TestWithParam<BadManifest> {};

TEST_P(ManifestBad, IsRefusedNamingTheManifestAndKey) {
  const BadManifest& c = GetParam();
  Error e = test::expect_error([&] { parse_manifest(c.json, "dump/manifest.json"); });
  EXPECT_EQ(e.file(), "dump/manifest.json");
  EXPECT_NE(std::string(e.what()).find(c.message_part), std::string::npos) << e.what();
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ManifestBad,
    ::testing::Values(
        BadManifest{"not_json", R"({"format_version": 1,)", "well-formed JSON"},
        BadManifest{"array", R"([1])", "JSON object"},
        BadManifest{"no_version", R"({"lane": "cpu"})", "\"format_version\""},
        BadManifest{"version_string", R"({"format_version": "1"})", "\"format_version\""},
        BadManifest{"version_newer", R"({"format_version": 2})", "newer Lockstep"},
        BadManifest{"version_zero", R"({"format_version": 0})", "between 1 and"},
        BadManifest{"lane_number", R"({"format_version": 1, "lane": 3})",
                    "\"lane\" to be a string"},
        BadManifest{"model_string", R"({"format_version": 1, "model": "m.gguf"})",
                    "\"model\" to be an object"},
        BadManifest{"sha_short", R"({"format_version": 1, "model": {"sha256": "abc"}})",
                    "64 hexadecimal digits"},
        BadManifest{"sha_not_hex",
                    R"({"format_version": 1, "model": {"sha256":
                    "zz0cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"}})",
                    "64 hexadecimal digits"},
        BadManifest{"family_bool", R"({"format_version": 1, "family": true})", "\"family\""},
        BadManifest{"config_array", R"({"format_version": 1, "config": []})",
                    "\"config\" to be an object"},
        BadManifest{"tokens_object", R"({"format_version": 1, "token_ids": {}})",
                    "\"token_ids\" to be an array"},
        BadManifest{"token_negative", R"({"format_version": 1, "token_ids": [1, -2]})",
                    "\"token_ids\"[1]"},
        BadManifest{"token_huge", R"({"format_version": 1, "token_ids": [4294967296]})",
                    "0..2147483647"},
        BadManifest{"token_string", R"({"format_version": 1, "token_ids": ["1"]})",
                    "\"token_ids\"[0]"},
        BadManifest{"files_array", R"({"format_version": 1, "files": []})",
                    "\"files\" to be an object"},
        BadManifest{"file_escape", R"({"format_version": 1, "files": {"../x.bin": [1]}})",
                    "\"files\".\"../x.bin\""},
        BadManifest{"file_leading_zero",
                    R"({"format_version": 1, "files": {"layer-01/x.bin": [1]}})", "layer-01"},
        BadManifest{"file_not_bin", R"({"format_version": 1, "files": {"x.txt": [1]}})",
                    "\"files\".\"x.txt\""},
        BadManifest{"file_nested", R"({"format_version": 1, "files": {"layer-0/a/x.bin": [1]}})",
                    "layer-0/a/x.bin"},
        BadManifest{"shape_string", R"({"format_version": 1, "files": {"x.bin": "4x4"}})",
                    "an array (the shape)"},
        BadManifest{"shape_empty", R"({"format_version": 1, "files": {"x.bin": []}})", "rank 1..8"},
        BadManifest{"shape_rank9",
                    R"({"format_version": 1, "files": {"x.bin": [1,1,1,1,1,1,1,1,1]}})",
                    "rank 1..8"},
        BadManifest{"shape_negative", R"({"format_version": 1, "files": {"x.bin": [2, -3]}})",
                    "non-negative integer"},
        BadManifest{"shape_float", R"({"format_version": 1, "files": {"x.bin": [2.5]}})",
                    "non-negative integer"},
        BadManifest{"shape_overflow",
                    R"({"format_version": 1, "files": {"x.bin": [4294967296, 4294967296, 2]}})",
                    "fits in 64 bits"},
        BadManifest{"too_deep",
                    std::string(R"({"format_version": 1, "config": {"a": )") +
                        std::string(100, '[') + std::string(100, ']') + "}}",
                    "nested at most"}),
    [](const auto& param_info) { return std::string(param_info.param.label); });

TEST(Manifest, NonUtf8PathsAreWrittenReplaced) {
  Manifest m;
  m.model_path = "/models/caf\xe9.gguf";  // Latin-1, not UTF-8
  Manifest back = parse_manifest(format_manifest(m), "m.json");
  EXPECT_EQ(back.model_path, "/models/caf\xef\xbf\xbd.gguf");
}

TEST(ManifestMalformed, FlippedBytesNeverCrash) {
  std::string text = format_manifest(random_manifest(21));
  for (size_t i = 0; i < text.size(); ++i) {
    for (char v : {'\0', '"', '[', '{', '-', '9', 'x', '\xff'}) {
      std::string c = text;
      c[i] = v;
      try {
        Manifest m = parse_manifest(c, "flip.json");
        for (const auto& [rel, shape] : m.files) EXPECT_FALSE(shape.empty()) << rel;
      } catch (const Error& e) {
        EXPECT_EQ(e.file(), "flip.json");
      }
    }
  }
}

TEST(ManifestMalformed, JsonErrorsCarryAnOffset) {
  Error e = test::expect_error([] { parse_manifest("{\n  \"format_version\": 1,\n  lane\n}", "m"); });
  EXPECT_EQ(e.offset(), 27u);  // the 'l' of the unquoted key
}

TEST(ManifestFiles, ReadVerifiesShapeProductsAgainstTheFiles) {
  fs::path dir = test::scratch_dir("manifest");
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> dist(0.5f, 1.5f);
  std::vector<float> v(3 * 64);
  for (auto& x : v) x = dist(rng);
  fs::create_directories(dir / "layer-0");
  write_aprt(dir / "layer-0" / "attn_norm.bin", 0, v);
  write_aprt(dir / "lm_head.bin", kAprtWholeModelLayer, std::span(v).first(3 * 32));

  Manifest m;
  m.files["layer-0/attn_norm.bin"] = {3, 64};
  m.files["lm_head.bin"] = {3, 32};
  m.files["layer-1/attn_norm.bin"] = {3, 64};  // absent on disk: fine
  write_manifest(dir / "manifest.json", m);
  EXPECT_EQ(read_manifest(dir / "manifest.json"), m);

  m.files["lm_head.bin"] = {3, 33};
  write_manifest(dir / "manifest.json", m);
  Error e = test::expect_error([&] { read_manifest(dir / "manifest.json"); });
  std::string msg = e.what();
  EXPECT_EQ(e.file(), (dir / "manifest.json").string());
  EXPECT_NE(msg.find("\"files\".\"lm_head.bin\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("99 elements"), std::string::npos) << msg;
  EXPECT_NE(msg.find("96 elements"), std::string::npos) << msg;

  // A listed file that is not a valid APRT file is reported with the APRT error.
  m.files["lm_head.bin"] = {3, 32};
  write_manifest(dir / "manifest.json", m);
  test::write_file(dir / "layer-0" / "attn_norm.bin", std::string("APRT\0\0\0\0\x10\0\0\0", 12));
  e = test::expect_error([&] { read_manifest(dir / "manifest.json"); });
  EXPECT_NE(std::string(e.what()).find("attn_norm.bin"), std::string::npos) << e.what();
  fs::remove_all(dir);
}

TEST(ManifestMalformed, SeedCorpus) {
  fs::path dir = fs::path(LOCKSTEP_TEST_DATA_DIR) / "malformed" / "manifest";
  ASSERT_TRUE(fs::is_directory(dir));
  int valid = 0, invalid = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    std::string text = test::read_file(e.path());
    if (name.rfind("valid-", 0) == 0) {
      EXPECT_NO_THROW(parse_manifest(text, name)) << name;
      ++valid;
    } else {
      Error err = test::expect_error([&] { parse_manifest(text, name); });
      EXPECT_EQ(err.file(), name);
      ++invalid;
    }
  }
  EXPECT_GE(valid, 1);
  EXPECT_GE(invalid, 3);
}

}  // namespace
}  // namespace lockstep::formats
