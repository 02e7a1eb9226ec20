// `lockstep bisect`, `diff` and `demo`, as a user (or a CI job) runs them: what they print, the
// reports they write, and their exit codes (0 no divergence, 1 divergence with
// --fail-on-divergence, 2 usage or input error).
#include <gtest/gtest.h>

#include <cstdlib>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using test::shell_quote;
namespace fs = std::filesystem;

std::string stories() { return shell_quote(test::shared_models() / "stories260K.gguf"); }

void expect_usage_error(const test::CliResult& r, const std::string& needle) {
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(test::read_file(p)); }

TEST(DemoCli, FindsThePlantedTransposedGemvAtLmHeadAndSaysWhy) {
  test::ScratchDir dir("demo_cli");
  const fs::path json = dir.path / "demo.json", md = dir.path / "demo.md", tmp = dir.path / "tmp";
  fs::create_directories(tmp);
  // Its own TMPDIR, to see that the temporary model goes (other demos may run meanwhile).
  ::setenv("TMPDIR", tmp.c_str(), 1);
  test::CliResult r = test::run_lockstep("demo --report " + shell_quote(json) + " --report " +
                                         shell_quote(md));
  ::unsetenv("TMPDIR");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("lm_head (model)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("First divergence: lm_head"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("introduced here"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("transposed/mis-strided layout"), std::string::npos) << r.out;
  const nlohmann::json j = read_json(json);
  EXPECT_EQ(j["first_divergence"]["cell"], "lm_head");
  EXPECT_EQ(j["verdict"], "introduced");
  EXPECT_EQ(j["diagnosis"]["bug"], "layout");
  EXPECT_EQ(j["fault"], "gemv_transposed@lm_head");
  EXPECT_EQ(j["fault_lane"], "cpu");
  const std::string m = test::read_file(md);
  EXPECT_NE(m.find("# Lockstep bisect: ref vs cpu"), std::string::npos) << m;
  EXPECT_NE(m.find("**"), std::string::npos) << m;
  // No temporary model is left behind.
  EXPECT_TRUE(fs::is_empty(tmp));
}

TEST(DemoCli, OtherFaultsModesAndFailOnDivergence) {
  test::CliResult r = test::run_lockstep(
      "demo --fault kv_cache_off_by_one --mode decode --metric local --fail-on-divergence");
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("local error (replay on A's inputs)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("First divergence: attn_scores@0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("RoPE"), std::string::npos) << r.out;

  r = test::run_lockstep("demo --fault softmax_no_max --family qwen2");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("new NaN/Inf"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("First divergence: attn_softmax@0"), std::string::npos) << r.out;

  r = test::run_lockstep("demo --replay ffn_out@1 --replay lm_head");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("Replay of ffn_out@1 (asked)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-> at the floor"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("-> introduces error"), std::string::npos) << r.out;
  expect_usage_error(test::run_lockstep("demo --replay ffn_out@9"), "no such cell");
  expect_usage_error(test::run_lockstep("demo --replay ffn@1"), "unknown stage");

  expect_usage_error(test::run_lockstep("demo --fault drop_qkv_bias"), "qkv_bias");
  expect_usage_error(test::run_lockstep("demo --fault nonsense"), "unknown fault");
}

TEST(BisectCli, CleanLanesAgreeAndAPlantedFaultFailsTheRun) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::CliResult r =
      test::run_lockstep("bisect " + stories() + " --prompt 'Once upon a time' --fail-on-divergence");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("No divergence"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("relative RMS (carried error) of lane cpu against lane ref"),
            std::string::npos)
      << r.out;

  test::ScratchDir dir("bisect_cli");
  const fs::path json = dir.path / "r.json";
  r = test::run_lockstep("bisect " + stories() +
                         " --tokens 1,403,407,261,378 --fault gemv_transposed@ffn_up,3 "
                         "--fail-on-divergence --report " + shell_quote(json));
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: ffn_up@3"), std::string::npos) << r.out;
  const nlohmann::json j = read_json(json);
  EXPECT_EQ(j["lane_a"], "ref");
  EXPECT_EQ(j["lane_b"], "cpu");
  EXPECT_EQ(j["tokens"], nlohmann::json::parse("[1,403,407,261,378]"));
  EXPECT_EQ(j["introduced_at"], "ffn_up@3");
  EXPECT_EQ(j["diagnosis"]["bug"], "layout");
  // Without --fail-on-divergence a divergence is a finding, not a failure.
  r = test::run_lockstep("bisect " + stories() + " --tokens 1,403,407 --lanes cpu,cpu --fault " +
                         "silu_as_gelu --floor none");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: ffn_silu@0"), std::string::npos) << r.out;
}

// cuda-graph against cpu, decode mode (the steps replayed from a CUDA graph), with and without
// a budget that streams layers: no divergence; a planted fault in cuda-graph is found.
TEST(BisectCli, CudaGraphLaneAgreesWithCpuAndCarriesAFault) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::CliResult v = test::run_lockstep("--version");
  ASSERT_EQ(v.code, 0) << v.err;
  if (v.out.find("CUDA lanes: built") == std::string::npos ||
      v.out.find("device 0:") == std::string::npos)
    GTEST_SKIP() << "no CUDA device";
  const std::string base = "bisect " + stories() +
                           " --tokens 1,403,407,261,378,400,300,200 --lanes cpu,cuda-graph "
                           "--mode decode --fail-on-divergence ";
  for (const std::string extra : {"", "--gpu-budget 1"}) {
    test::CliResult r = test::run_lockstep(base + extra);
    EXPECT_EQ(r.code, 0) << extra << r.out << r.err;
    EXPECT_NE(r.out.find("No divergence"), std::string::npos) << r.out;
  }
  test::CliResult r = test::run_lockstep(base + "--fault gemv_transposed@lm_head");
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: lm_head"), std::string::npos) << r.out;
}

TEST(BisectCli, UsageErrorsExitTwoWithOneClearLine) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const std::string base = "bisect " + stories() + " --tokens 1,2,3 ";
  expect_usage_error(test::run_lockstep(base + "--lanes ref"), "two lane names");
  expect_usage_error(test::run_lockstep(base + "--lanes ref,gpu"), "gpu");
  expect_usage_error(test::run_lockstep(base + "--lanes cpu,ref --fault gemv_transposed"),
                     "oracle");
  expect_usage_error(test::run_lockstep(base + "--metric rms"), "--metric rms");
  expect_usage_error(test::run_lockstep(base + "--report out.txt"), ".json");
  expect_usage_error(test::run_lockstep(base + "--mode stream"), "prefill or decode");
  expect_usage_error(test::run_lockstep(base + "--floor other"), "cpu-ref or none");
  expect_usage_error(test::run_lockstep(base + "--heatmaps --no-replay"), "--no-replay");
  expect_usage_error(test::run_lockstep(base + "--fault drop_qkv_bias"), "qkv_bias");
  expect_usage_error(test::run_lockstep(base + "--threshold -1"), "--threshold");
  expect_usage_error(test::run_lockstep("bisect " + stories()), "--prompt");
  expect_usage_error(test::run_lockstep(base + "--prompt hi"), "not both");
  expect_usage_error(test::run_lockstep("bisect /nonexistent.gguf --tokens 1"), "nonexistent");
}

TEST(DiffCli, TwoDumpsOfTheSameRunPartWhereTheFaultIs) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::ScratchDir dir("diff_cli");
  const fs::path a = dir.path / "ref", b = dir.path / "cpu";
  const std::string tokens = " --tokens 1,403,407,261,378 ";
  ASSERT_EQ(test::run_lockstep("dump " + stories() + tokens + "--lane ref --out " + shell_quote(a))
                .code,
            0);
  ASSERT_EQ(test::run_lockstep("dump " + stories() + tokens +
                               "--lane cpu --fault partial_write@ffn_out,2 --out " + shell_quote(b))
                .code,
            0);

  // The manifests give shapes, tokens and the head layout; --model adds the noise floor.
  const fs::path json = dir.path / "diff.json";
  test::CliResult r = test::run_lockstep("diff " + shell_quote(a) + " " + shell_quote(b) +
                                         " --model " + stories() +
                                         " --fail-on-divergence --report " + shell_quote(json));
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: ffn_out@2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("cannot be replayed"), std::string::npos) << r.out;
  const nlohmann::json j = read_json(json);
  EXPECT_EQ(j["kind"], "diff");
  EXPECT_EQ(j["verdict"], "not replayed");
  EXPECT_EQ(j["diagnosis"]["bug"], "partial_write");
  EXPECT_EQ(j["diagnosis"]["basis"], "carried");
  EXPECT_NE(j["floor_note"].get<std::string>().find("dump's tokens"), std::string::npos);
  EXPECT_EQ(j["source_a"], a.string());

  // Without --model: the manifest's config still gives the diagnosis; no floor.
  r = test::run_lockstep("diff " + shell_quote(a) + " " + shell_quote(b));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: ffn_out@2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("needs --model"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("partial write"), std::string::npos) << r.out;

  // A dump against itself: nothing to find.
  r = test::run_lockstep("diff " + shell_quote(a) + " " + shell_quote(a) + " --fail-on-divergence");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("No divergence"), std::string::npos) << r.out;

  // aprender's dumps carry no manifest: shapes come from --model.
  const fs::path bare = dir.path / "bare";
  fs::copy(b, bare, fs::copy_options::recursive);
  fs::remove(bare / "manifest.json");
  r = test::run_lockstep("diff " + shell_quote(a) + " " + shell_quote(bare) + " --model " +
                         stories());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("First divergence: ffn_out@2"), std::string::npos) << r.out;

  expect_usage_error(test::run_lockstep("diff " + shell_quote(a) + " " +
                                        shell_quote(dir.path / "missing")),
                     "missing");
  const fs::path other = dir.path / "other";
  ASSERT_EQ(test::run_lockstep("dump " + stories() + " --tokens 1,2,3 --lane ref --out " +
                               shell_quote(other))
                .code,
            0);
  expect_usage_error(test::run_lockstep("diff " + shell_quote(a) + " " + shell_quote(other)),
                     "different token ids");
}

}  // namespace
}  // namespace lockstep
