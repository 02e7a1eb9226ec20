// Our dequantizers against ggml's own to_float, on the GGUFs llama.cpp quantized in
// shared/models/quant-ref (README section 4): for every tensor of every file, the sha256 of the
// dequantized values (f32 little-endian, ggml element order) must equal the recorded one, and
// so must the type, the element count and the first 8 values, bit for bit.

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/ggml_codec.h"
#include "formats/gguf.h"
#include "formats/sha256.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

// Placeholder parameter when the shared folder is absent, so the suite still instantiates and
// each case skips instead of silently vanishing.
constexpr const char* kAbsent = "shared_models_absent";

std::vector<std::string> quant_ref_files() {
  std::vector<std::string> files;
  const fs::path models = lockstep::test::shared_models();
  if (!models.empty() && fs::is_directory(models / "quant-ref")) {
    for (const auto& entry : fs::directory_iterator(models / "quant-ref"))
      if (entry.path().extension() == ".gguf") files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) files.push_back(kAbsent);
  return files;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

class QuantRef : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantRef, DequantizedTensorsMatchGgml) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  ASSERT_NE(GetParam(), kAbsent) << "shared/models exists but quant-ref/ holds no GGUF";
  const fs::path dir = lockstep::test::shared_models() / "quant-ref";
  const fs::path gguf_path = dir / GetParam();
  fs::path json_path = gguf_path;
  json_path.replace_extension(".dequant.json");

  std::ifstream json_in(json_path);
  ASSERT_TRUE(json_in) << "missing " << json_path;
  const nlohmann::json ref = nlohmann::json::parse(json_in);
  std::map<std::string, const nlohmann::json*> expected;  // tensor name -> record
  for (const auto& t : ref.at("tensors")) expected[t.at("name").get<std::string>()] = &t;

  const GgufFile file = GgufFile::open(gguf_path.string());
  ASSERT_EQ(file.tensors().size(), expected.size()) << "tensor count differs from the JSON";

  int matched = 0;
  for (const GgufTensorInfo& t : file.tensors()) {
    SCOPED_TRACE(t.name + " (" + std::string(ggml_type_name(t.type)) + ")");
    const auto it = expected.find(t.name);
    ASSERT_NE(it, expected.end()) << "not in the JSON";
    const nlohmann::json& rec = *it->second;
    EXPECT_EQ(lower(ggml_type_name(t.type)), lower(rec.at("type").get<std::string>()));
    ASSERT_EQ(t.elements, rec.at("elements").get<uint64_t>());

    std::vector<float> values(t.elements);  // ggml element order
    dequantize(t.type, file.tensor_data(t), values);

    const auto& first8 = rec.at("first8");
    ASSERT_EQ(first8.size(), std::min<size_t>(8, values.size()));
    for (size_t i = 0; i < first8.size(); ++i) {
      const float want = static_cast<float>(first8[i].get<double>());
      EXPECT_EQ(std::bit_cast<uint32_t>(values[i]), std::bit_cast<uint32_t>(want))
          << "value " << i << ": " << values[i] << " vs " << want;
    }
    // The recorded sum's summation order is not ggml's business; compare to rounding.
    double sum = 0.0, magnitude = 0.0;
    for (float v : values) {
      sum += v;
      magnitude += std::fabs(v);
    }
    EXPECT_NEAR(sum, rec.at("sum").get<double>(), 1e-9 * magnitude + 1e-12);

    const std::string digest = sha256_hex(std::as_bytes(std::span(values)));
    EXPECT_EQ(digest, rec.at("sha256_f32le").get<std::string>());
    matched += digest == rec.at("sha256_f32le").get<std::string>() ? 1 : 0;
  }
  RecordProperty("tensors_matched", matched);
  RecordProperty("tensors", static_cast<int>(file.tensors().size()));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, QuantRef, ::testing::ValuesIn(quant_ref_files()),
                         [](const ::testing::TestParamInfo<std::string>& param) {
                           std::string name = fs::path(param.param).stem().string();
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace
}  // namespace lockstep::formats
