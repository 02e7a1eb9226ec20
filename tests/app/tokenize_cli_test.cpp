// `lockstep tokenize`, run as a user would: ids, JSON, decoding, flags and exit codes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

namespace fs = std::filesystem;

std::string model(const std::string& rel) {
  return "'" + (test::shared_models() / rel).string() + "'";
}

TEST(TokenizeCli, PrintsIdsWithBosLikeLlamaCpp) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::CliResult r =
      test::run_lockstep("tokenize " + model("stories260K.gguf") + " 'Once upon a time'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "1 403 407 261 378\n");  // reference/stories260K/llamacpp.json "tokens"
  test::CliResult no_bos =
      test::run_lockstep("tokenize --no-bos " + model("stories260K.gguf") + " 'Once upon a time'");
  EXPECT_EQ(no_bos.out, "403 407 261 378\n");
}

TEST(TokenizeCli, JsonListsIdsAndTokenTexts) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::CliResult r =
      test::run_lockstep("tokenize --json " + model("stories260K.gguf") + " 'Once upon a time'");
  ASSERT_EQ(r.code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ids"], nlohmann::json({1, 403, 407, 261, 378}));
  EXPECT_EQ(j["tokens"], nlohmann::json({"<s>", "\xe2\x96\x81Once", "\xe2\x96\x81upon",
                                         "\xe2\x96\x81"
                                         "a",
                                         "\xe2\x96\x81time"}));
}

TEST(TokenizeCli, SpecialFlagParsesMarkers) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  std::string vocab = model("vocab/ggml-vocab-qwen2.gguf");
  test::CliResult plain = test::run_lockstep("tokenize " + vocab + " '<|im_start|>user'");
  test::CliResult special =
      test::run_lockstep("tokenize --special " + vocab + " '<|im_start|>user'");
  EXPECT_EQ(special.out.substr(0, special.out.find(' ')), "151644");
  EXPECT_EQ(plain.out.find("151644"), std::string::npos) << plain.out;
}

TEST(TokenizeCli, DecodeRoundTripsRandomIds) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  std::mt19937 rng(std::random_device{}());
  std::string word = "w" + std::to_string(rng() % 1000000);
  std::string vocab = model("vocab/ggml-vocab-gpt-2.gguf");
  test::CliResult enc = test::run_lockstep("tokenize " + vocab + " 'hello " + word + "'");
  ASSERT_EQ(enc.code, 0) << enc.err;
  std::string ids = enc.out.substr(0, enc.out.size() - 1);
  test::CliResult dec = test::run_lockstep("tokenize " + vocab + " --decode " + ids);
  EXPECT_EQ(dec.code, 0) << dec.err;
  EXPECT_EQ(dec.out, "hello " + word + "\n");
}

TEST(TokenizeCli, BadInputExitsTwoWithOneLine) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path bad = test::scratch_dir("tokenize-bad") / "not.gguf";
  test::write_file(bad, "this is not a gguf file at all");
  test::CliResult r = test::run_lockstep("tokenize '" + bad.string() + "' hello");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  test::CliResult id =
      test::run_lockstep("tokenize " + model("stories260K.gguf") + " --decode 1 512");
  EXPECT_EQ(id.code, 2);
  EXPECT_NE(id.err.find("512"), std::string::npos) << id.err;
  test::CliResult no_tok =
      test::run_lockstep("tokenize " + model("quant-ref/ref-llama-f32.gguf.dequant.json") + " hi");
  EXPECT_EQ(no_tok.code, 2);
}

}  // namespace
}  // namespace lockstep
