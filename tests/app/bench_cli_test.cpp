// `lockstep bench`, as a user would: positive, self-consistent numbers on small random
// models, the weight bytes a decode step reads counted exactly, and one-line errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "engine/lanes.h"
#include "formats/gguf.h"
#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using test::shell_quote;

namespace fs = std::filesystem;

// A random model from `lockstep gen-model` (tokenizer included), quantized so that rows of
// token_embd are blocks, not floats.
fs::path gen_model(const fs::path& dir, const std::string& name, const std::string& extra) {
  fs::path out = dir / name;
  test::CliResult r = test::run_lockstep(
      "gen-model --family llama --hidden 256 --layers 2 --heads 4 --kv-heads 2 --ffn 256 "
      "--vocab 300 --context 64 --type Q4_K_M --quiet " +
      extra + " --out " + shell_quote(out));
  EXPECT_EQ(r.code, 0) << r.err;
  return out;
}

// Every tensor of the file once, except that an untied token_embd is read one row per token.
uint64_t expected_weight_bytes(const fs::path& model) {
  formats::GgufFile f = formats::GgufFile::open(model.string());
  bool tied = f.find_tensor("output.weight") == nullptr;
  uint64_t bytes = 0;
  for (const formats::GgufTensorInfo& t : f.tensors()) {
    uint64_t b = f.tensor_data(t).size();
    bytes += t.name == "token_embd.weight" && !tied ? b / t.dims[1] : b;
  }
  return bytes;
}

TEST(BenchCli, JsonHasPositiveConsistentNumbersOnEveryCpuLane) {
  test::ScratchDir scratch("bench-cli");
  for (bool tied : {false, true}) {
    fs::path model = gen_model(scratch.path, tied ? "tied.gguf" : "m.gguf",
                               tied ? "--tie-embeddings" : "--untie-embeddings");
    ASSERT_EQ(formats::GgufFile::open(model.string()).find_tensor("output.weight") == nullptr,
              tied);
    for (const std::string& lane : engine::cpu_lane_names()) {
      SCOPED_TRACE(lane + (tied ? " tied" : ""));
      test::CliResult r = test::run_lockstep(
          "bench " + shell_quote(model) + " --lane " + lane +
          " --threads 2 --prefill 8 --decode 4 --repeat 3 --bandwidth-mib 16 --json");
      ASSERT_EQ(r.code, 0) << r.err;
      nlohmann::json j = nlohmann::json::parse(r.out);
      EXPECT_EQ(j.at("lane"), lane);
      EXPECT_EQ(j.at("threads"), lane == "ref" ? 1 : 2);
      EXPECT_EQ(j.at("bandwidth").at("threads"), j.at("threads"));
      EXPECT_GT(j.at("bandwidth").at("best_bytes_per_s").get<double>(), 1e8);
      EXPECT_EQ(j.at("prefill").at("tokens"), 8);
      EXPECT_EQ(j.at("decode").at("tokens"), 4);
      for (const char* phase : {"prefill", "decode"}) {
        std::vector<double> runs = j.at(phase).at("runs_tokens_per_s").get<std::vector<double>>();
        ASSERT_EQ(runs.size(), 3u);
        std::sort(runs.begin(), runs.end());
        EXPECT_GT(runs[0], 0.0);
        EXPECT_EQ(j.at(phase).at("tokens_per_s").get<double>(), runs[1]) << "median of 3";
      }
      uint64_t weights = j.at("weight_bytes_per_token");
      EXPECT_EQ(weights, expected_weight_bytes(model));
      double decode = j.at("decode").at("tokens_per_s");
      EXPECT_DOUBLE_EQ(j.at("effective_bytes_per_s").get<double>(), double(weights) * decode);
      EXPECT_DOUBLE_EQ(
          j.at("bandwidth_fraction").get<double>(),
          double(weights) * decode / j.at("bandwidth").at("best_bytes_per_s").get<double>());
      EXPECT_GT(j.at("bandwidth_fraction").get<double>(), 0.0);
      EXPECT_EQ(j.at("bandwidth").at("kind"), "host read");
      // Time to first token is the prompt's forward; capture overhead by default at the
      // model's whole context (64 < 128), every cell captured against none.
      EXPECT_DOUBLE_EQ(j.at("prefill").at("time_to_first_token_s").get<double>(),
                       8.0 / j.at("prefill").at("tokens_per_s").get<double>());
      const nlohmann::json& cap = j.at("capture");
      EXPECT_EQ(cap.at("tokens"), 64);
      EXPECT_GT(cap.at("none_s").get<double>(), 0.0);
      EXPECT_DOUBLE_EQ(cap.at("ratio").get<double>(),
                       cap.at("all_s").get<double>() / cap.at("none_s").get<double>());
      EXPECT_GT(cap.at("cells").get<uint64_t>(), 10u);
      EXPECT_GT(cap.at("captured_bytes").get<uint64_t>(), 64u * 4u);
    }
  }
}

TEST(BenchCli, TextIsATable) {
  test::ScratchDir scratch("bench-cli-text");
  fs::path model = gen_model(scratch.path, "m.gguf", "");
  test::CliResult r = test::run_lockstep("bench " + shell_quote(model) +
                                         " --lane ref --prefill 4 --decode 2 --repeat 1 "
                                         "--bandwidth-mib 8");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* row :
       {"memory read bandwidth", "prefill 4 tokens", "decode 2 tokens", "weights read per token",
        "% of measured bandwidth", "1 warm-up", "time to first token", "capture overhead"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
}

TEST(BenchCli, BadRequestsAreOneLineErrors) {
  test::ScratchDir scratch("bench-cli-errors");
  fs::path model = gen_model(scratch.path, "m.gguf", "");
  auto expect_error = [](const test::CliResult& r, const std::string& needle) {
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  };
  std::string m = shell_quote(model);
  expect_error(test::run_lockstep("bench " + m + " --lane ref --prefill 0"), "--prefill");
  expect_error(test::run_lockstep("bench " + m + " --lane ref --decode 0"), "--decode");
  expect_error(test::run_lockstep("bench " + m + " --lane ref --repeat 0"), "--repeat");
  expect_error(test::run_lockstep("bench " + m + " --lane ref --prefill 60 --decode 10"),
               "context of 64");
  expect_error(test::run_lockstep("bench " + m + " --lane nope"), "nope");
  expect_error(
      test::run_lockstep("bench " + m + " --lane ref --prefill 4 --decode 2 --capture-tokens 65"),
      "--capture-tokens 65 exceeds the model's context of 64");
}

}  // namespace
}  // namespace lockstep
