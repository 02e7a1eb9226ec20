// `lockstep run`, as a user would: the greedy continuation of stories260K on every CPU lane,
// the summary on stderr, seeded sampling, and one-line errors with exit code 2.
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/faults.h"
#include "engine/lanes.h"
#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using test::shell_quote;

std::string stories() {
  return shell_quote(test::shared_models() / "stories260K.gguf");
}

void expect_one_line_error(const test::CliResult& r, const std::string& needle) {
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.rfind("lockstep: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST(RunCli, PrintsTheGreedyContinuationOnEveryCpuLane) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  std::string expected =
      test::read_file(test::shared_models() / "reference/stories260K/greedy.txt");
  ASSERT_FALSE(expected.empty());
  for (const std::string& lane : engine::cpu_lane_names()) {
    SCOPED_TRACE(lane);
    test::CliResult r = test::run_lockstep("run " + stories() + " --lane " + lane +
                                           " --threads 1 -n 64 --prompt 'Once upon a time'");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.out.substr(0, r.out.find('\n') + 1), expected);
    EXPECT_EQ(r.out.back(), '\n');
    EXPECT_NE(r.err.find("prompt 5 tokens, prefill "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(" tok/s; generated 64 tokens, "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("(" + lane + " lane"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
}

TEST(RunCli, CudaLaneRunsWhereADeviceIsAndSaysWhyNotElsewhere) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  // `--version` tells whether this build has CUDA lanes and a usable device.
  test::CliResult v = test::run_lockstep("--version");
  ASSERT_EQ(v.code, 0) << v.err;
  const bool device = v.out.find("CUDA lanes: built") != std::string::npos &&
                      v.out.find("device 0:") != std::string::npos;
  test::CliResult r = test::run_lockstep(
      "run " + stories() + " --lane cuda -n 64 --prompt 'Once upon a time' "
      "--fault gemv_transposed@lm_head");
  test::CliResult clean =
      test::run_lockstep("run " + stories() + " --lane cuda -n 64 --prompt 'Once upon a time'");
  if (device) {
    std::string expected =
        test::read_file(test::shared_models() / "reference/stories260K/greedy.txt");
    ASSERT_EQ(clean.code, 0) << clean.err;
    EXPECT_EQ(clean.out.substr(0, clean.out.find('\n') + 1), expected);
    EXPECT_NE(clean.err.find("(cuda lane)"), std::string::npos) << clean.err;
    ASSERT_EQ(r.code, 0) << r.err;  // the fault is carried: the text changes
    EXPECT_NE(r.out, clean.out);
    // cuda-graph decodes from a CUDA graph, and streams layers under a small budget: the same
    // text.
    for (const std::string extra : {"", " --gpu-budget 1"}) {
      test::CliResult g = test::run_lockstep(
          "run " + stories() + " --lane cuda-graph -n 64 --prompt 'Once upon a time'" + extra);
      ASSERT_EQ(g.code, 0) << g.err;
      EXPECT_EQ(g.out, clean.out) << extra;
      EXPECT_NE(g.err.find("(cuda-graph lane)"), std::string::npos) << g.err;
    }
  } else {
    for (const test::CliResult* c : {&r, &clean}) {
      EXPECT_EQ(c->code, 2);
      EXPECT_EQ(c->out, "");
      EXPECT_EQ(std::count(c->err.begin(), c->err.end(), '\n'), 1) << c->err;
      EXPECT_NE(c->err.find("cuda"), std::string::npos) << c->err;
    }
  }
}

TEST(RunCli, SeededSamplingRepeatsAndStopsAtTheLimit) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  std::string args = "run " + stories() +
                     " --lane ref -n 12 --temperature 0.9 --top-k 40 --top-p 0.95 --seed 11 "
                     "--prompt 'Once upon a time'";
  test::CliResult a = test::run_lockstep(args), b = test::run_lockstep(args);
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.err.find("generated 12 tokens"), std::string::npos) << a.err;
}

TEST(RunCli, ErrorsAreOneLineWithExitCode2) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane nope --prompt hi"),
                        "unknown lane \"nope\"");
  test::CliResult r = test::run_lockstep("run " + stories() + " --lane nope --prompt hi");
  for (const std::string& lane : engine::cpu_lane_names())
    EXPECT_NE(r.err.find(lane), std::string::npos) << "lists " << lane << ": " << r.err;
  expect_one_line_error(test::run_lockstep("run /nonexistent/m.gguf --lane ref --prompt hi"),
                        "/nonexistent/m.gguf");
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane ref --prompt ''"),
                        "prompt is empty");
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane ref -n 0 --prompt hi"),
                        "-n must be at least 1");
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane ref -n 4000 --prompt hi"),
                        "context of 2048 tokens");
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane ref --chat --prompt hi"),
                        "<|im_start|>");
  expect_one_line_error(test::run_lockstep("run " + stories() + " --lane ref"), "--prompt");
}

// --fault plants a bug in the cpu lane: the greedy text changes and the summary names the fault;
// the oracle refuses one; --list-faults lists them without a model.
TEST(RunCli, FaultChangesTheCpuLanesOutput) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  std::string expected =
      test::read_file(test::shared_models() / "reference/stories260K/greedy.txt");
  test::CliResult r = test::run_lockstep("run " + stories() +
                                         " --lane cpu --threads 1 -n 64 --prompt 'Once upon a time'"
                                         " --fault gemv_transposed@lm_head");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.substr(0, r.out.find('\n') + 1), expected);
  EXPECT_NE(r.err.find("(cpu lane, 1 thread, fault gemv_transposed@lm_head)"), std::string::npos)
      << r.err;
  test::CliResult eps = test::run_lockstep("run " + stories() +
                                           " --lane cpu --threads 1 -n 64 --prompt 'Once upon a "
                                           "time' --fault rms_eps_wrong");
  ASSERT_EQ(eps.code, 0) << eps.err;
  EXPECT_NE(eps.out.substr(0, eps.out.find('\n') + 1), expected);
  EXPECT_NE(eps.err.find("fault rms_eps_wrong@attn_norm)"), std::string::npos) << eps.err;

  expect_one_line_error(
      test::run_lockstep("run " + stories() + " --lane ref --fault gemv_transposed --prompt hi"),
      "oracle");
  expect_one_line_error(
      test::run_lockstep("run " + stories() + " --lane cpu --fault nope --prompt hi"),
      "unknown fault \"nope\"; faults: gemv_transposed, ");
  expect_one_line_error(
      test::run_lockstep("run " + stories() + " --lane cpu --fault drop_qkv_bias --prompt hi"),
      "has no qkv_bias cell");
  expect_one_line_error(test::run_lockstep("run " + stories() +
                                           " --lane cpu --fault silu_as_gelu@lm_head --prompt hi"),
                        "it can be planted at ffn_silu");

  test::CliResult list = test::run_lockstep("run --list-faults");
  ASSERT_EQ(list.code, 0) << list.err;
  for (const std::string& name : engine::fault_names())
    EXPECT_NE(list.out.find(name + "  (default "), std::string::npos) << name;
}

}  // namespace
}  // namespace lockstep
