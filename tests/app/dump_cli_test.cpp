// `lockstep dump`, as a user would: a complete, readable dump whose cells equal a direct
// forward of the same lane, a manifest that describes it, and --force semantics.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/lanes.h"
#include "engine/stages.h"
#include "engine/weights.h"
#include "formats/aprt.h"
#include "formats/dump_dir.h"
#include "tests/app/cli_run.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using test::shell_quote;

namespace fs = std::filesystem;

fs::path stories_path() {
  return test::shared_models() / "stories260K.gguf";
}
std::string stories() {
  return shell_quote(stories_path());
}

const engine::Model& stories_model() {
  static const engine::Model m = engine::open_model(stories_path(), engine::FamilyRegistry::load());
  return m;
}

formats::DumpScanOptions strict_scan() {
  std::vector<std::pair<std::string, formats::StageScope>> names;
  for (const auto& s : engine::kStages)
    names.emplace_back(std::string(s.name), s.per_layer ? formats::StageScope::PerLayer
                                                        : formats::StageScope::WholeModel);
  formats::DumpScanOptions o;
  o.known_stages = formats::make_stage_lookup(std::move(names));
  return o;
}

void expect_one_line_error(const test::CliResult& r, const std::string& needle) {
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
}

TEST(DumpCli, WritesEveryCellOfThePlanWithShapesAndTheLanesValues) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const engine::Model& model = stories_model();
  const std::vector<int32_t> tokens = {1, 403, 407, 261, 378};  // BOS "Once upon a time"
  const uint64_t n = tokens.size();
  for (const std::string& lane_name : engine::cpu_lane_names()) {
    SCOPED_TRACE(lane_name);
    test::ScratchDir scratch("dump-cli-" + lane_name);
    fs::path out = scratch.path / "dump";
    test::CliResult r =
        test::run_lockstep("dump " + stories() + " --lane " + lane_name +
                           " --threads 1 --prompt 'Once upon a time' --out " + shell_quote(out));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find(" cells ("), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(out.string()), std::string::npos) << r.out;

    formats::DumpScan scan = formats::scan_dump_dir(out, strict_scan());
    for (const auto& issue : scan.issues) ADD_FAILURE() << issue.message;
    ASSERT_TRUE(scan.manifest.has_value());
    EXPECT_EQ(scan.manifest->lane, lane_name);
    EXPECT_EQ(scan.manifest->token_ids, tokens);
    EXPECT_EQ(scan.manifest->family, "llama");
    EXPECT_EQ(scan.manifest->tool_name, "lockstep");
    EXPECT_FALSE(scan.manifest->tool_version.empty());
    EXPECT_EQ(scan.manifest->model_sha256,
              "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d");
    EXPECT_EQ(fs::path(scan.manifest->model_path), fs::absolute(stories_path()).lexically_normal());
    EXPECT_EQ(scan.manifest->config.at("layers"), 5);
    EXPECT_EQ(scan.manifest->config.at("vocab"), 512);

    // The same lane, run directly with every cell captured.
    std::unique_ptr<engine::Lane> lane = engine::make_cpu_lane(lane_name, {.threads = 1});
    lane->load(model);
    engine::Trace trace;
    lane->forward(tokens, 0, engine::CapturePlan::all(), trace);

    size_t plan_cells = 0;
    for (const engine::Node& node : model.plan.nodes) {
      if (!node.stage) continue;
      ++plan_cells;
      std::string name(engine::stage_name(*node.stage));
      SCOPED_TRACE(name + "@" + (node.layer ? std::to_string(*node.layer) : "-"));
      const formats::DumpCell* cell = scan.find(name, node.layer);
      ASSERT_NE(cell, nullptr);
      std::vector<uint64_t> shape = node.width_times_ctx ? std::vector<uint64_t>{node.width, n, n}
                                                         : std::vector<uint64_t>{n, node.width};
      ASSERT_TRUE(cell->shape.has_value());
      EXPECT_EQ(*cell->shape, shape);
      formats::AprtTensor t = formats::read_aprt(cell->path);
      EXPECT_EQ(t.layer, node.layer.value_or(formats::kAprtWholeModelLayer));
      const engine::Tensor* direct = trace.find({*node.stage, node.layer});
      ASSERT_NE(direct, nullptr);
      EXPECT_EQ(direct->shape, shape);
      EXPECT_TRUE(t.values == direct->data) << "values differ from a direct forward";
    }
    EXPECT_EQ(scan.cells.size(), plan_cells);
    EXPECT_GT(plan_cells, 5u * 16);

    test::CliResult inspect = test::run_lockstep("inspect --json " + shell_quote(out));
    ASSERT_EQ(inspect.code, 0) << inspect.err;
    nlohmann::json report = nlohmann::json::parse(inspect.out);
    EXPECT_EQ(report.at("kind"), "dump");
    EXPECT_TRUE(report.at("issues").empty()) << report.at("issues").dump();
    EXPECT_EQ(report.at("cells").size(), plan_cells);
  }
}

TEST(DumpCli, StagesAndTokensSelectCells) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::ScratchDir scratch("dump-cli-stages");
  fs::path out = scratch.path / "d";
  test::CliResult r = test::run_lockstep("dump " + stories() +
                                         " --lane ref --tokens 1,403,407 --stages "
                                         "'attn_scores@1;lm_head' --out " +
                                         shell_quote(out));
  ASSERT_EQ(r.code, 0) << r.err;
  formats::DumpScan scan = formats::scan_dump_dir(out, strict_scan());
  EXPECT_TRUE(scan.issues.empty());
  ASSERT_EQ(scan.cells.size(), 2u);
  const formats::DumpCell* scores = scan.find("attn_scores", 1u);
  ASSERT_NE(scores, nullptr);
  EXPECT_EQ(scores->shape, (std::vector<uint64_t>{8, 3, 3}));  // [heads, tokens, ctx]
  const formats::DumpCell* logits = scan.find("lm_head", std::nullopt);
  ASSERT_NE(logits, nullptr);
  EXPECT_EQ(logits->shape, (std::vector<uint64_t>{3, 512}));
  EXPECT_EQ(scan.manifest->token_ids, (std::vector<int32_t>{1, 403, 407}));
}

TEST(DumpCli, RefusesAnExistingDirectoryUnlessForcedAndReplacesOnlyWhenComplete) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::ScratchDir scratch("dump-cli-force");
  fs::path out = scratch.path / "d";
  std::string base =
      "dump " + stories() + " --lane ref --tokens 1,403 --out " + shell_quote(out) + " --stages ";
  ASSERT_EQ(test::run_lockstep(base + "attn_norm@0").code, 0);
  ASSERT_TRUE(fs::exists(out / "layer-0/attn_norm.bin"));

  expect_one_line_error(test::run_lockstep(base + "ffn_out@0"),
                        out.string() + " already exists; pass --force");
  EXPECT_TRUE(fs::exists(out / "layer-0/attn_norm.bin"));
  EXPECT_FALSE(fs::exists(out / "layer-0/ffn_out.bin"));

  // A --force run that fails (a token outside the vocab) leaves the old dump alone.
  test::CliResult bad = test::run_lockstep(
      "dump " + stories() + " --lane ref --tokens 1,9999 --force --out " + shell_quote(out));
  expect_one_line_error(bad, "9999");
  EXPECT_TRUE(fs::exists(out / "layer-0/attn_norm.bin"));

  test::CliResult forced = test::run_lockstep(base + "ffn_out@0 --force");
  ASSERT_EQ(forced.code, 0) << forced.err;
  EXPECT_FALSE(fs::exists(out / "layer-0/attn_norm.bin"));
  EXPECT_TRUE(fs::exists(out / "layer-0/ffn_out.bin"));
  formats::DumpScan scan = formats::scan_dump_dir(out, strict_scan());
  EXPECT_TRUE(scan.issues.empty());
  EXPECT_EQ(scan.cells.size(), 1u);

  // --force never deletes a directory that is not a dump.
  fs::path other = scratch.path / "notes";
  fs::create_directories(other);
  test::write_file(other / "notes.txt", "keep me");
  expect_one_line_error(test::run_lockstep("dump " + stories() +
                                           " --lane ref --tokens 1 --force --out " + shell_quote(other)),
                        "notes");
  EXPECT_EQ(test::read_file(other / "notes.txt"), "keep me");
  for (const auto& e : fs::directory_iterator(scratch.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos)
        << "left behind: " << e.path();
}

TEST(DumpCli, BadRequestsAreOneLineErrors) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::ScratchDir scratch("dump-cli-errors");
  std::string out = " --out " + shell_quote(scratch.path / "d");
  expect_one_line_error(
      test::run_lockstep("dump " + stories() + " --lane ref --prompt hi --tokens 1" + out),
      "--tokens");
  expect_one_line_error(test::run_lockstep("dump " + stories() + " --lane ref" + out), "--prompt");
  expect_one_line_error(
      test::run_lockstep("dump " + stories() + " --lane ref --tokens 1 --stages bogus" + out),
      "bogus");
  expect_one_line_error(test::run_lockstep("dump " + stories() + " --lane nope --tokens 1" + out),
                        "nope");
  expect_one_line_error(test::run_lockstep("dump " + stories() + " --lane ref --tokens 1"),
                        "--out");
  EXPECT_FALSE(fs::exists(scratch.path / "d"));
}

// A dump with --fault differs from a clean one first at the targeted cell: every earlier cell is
// the same, bit for bit.
TEST(DumpCli, FaultChangesTheTargetCellAndNothingBeforeIt) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  test::ScratchDir scratch("dump-cli-fault");
  const fs::path clean = scratch.path / "clean", faulted = scratch.path / "faulted";
  const std::string base = "dump " + stories() + " --lane cpu --threads 1 --tokens 1,403,407,261";
  ASSERT_EQ(test::run_lockstep(base + " --out " + shell_quote(clean)).code, 0);
  test::CliResult r =
      test::run_lockstep(base + " --fault rms_eps_wrong@ffn_norm,2 --out " + shell_quote(faulted));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("from the cpu lane with fault rms_eps_wrong@ffn_norm,2 to "),
            std::string::npos)
      << r.out;

  const engine::Model& model = stories_model();
  const formats::DumpScan clean_scan = formats::scan_dump_dir(clean, strict_scan());
  const formats::DumpScan faulted_scan = formats::scan_dump_dir(faulted, strict_scan());
  bool reached = false;
  for (const engine::Node& node : model.plan.nodes) {
    if (!node.stage) continue;
    const std::string name(engine::stage_name(*node.stage));
    SCOPED_TRACE(name + "@" + (node.layer ? std::to_string(*node.layer) : "-"));
    const formats::DumpCell* a = clean_scan.find(name, node.layer);
    const formats::DumpCell* b = faulted_scan.find(name, node.layer);
    ASSERT_TRUE(a && b);
    const bool same = formats::read_aprt(a->path).values == formats::read_aprt(b->path).values;
    if (node.stage == engine::Stage::FfnNorm && node.layer == 2u) {
      EXPECT_FALSE(same) << "the target cell is unchanged";
      reached = true;
      break;
    }
    EXPECT_TRUE(same) << "a cell before the target differs";
  }
  EXPECT_TRUE(reached);
  expect_one_line_error(test::run_lockstep("dump " + stories() +
                                           " --lane ref --tokens 1 --fault partial_write --out " +
                                           shell_quote(scratch.path / "ref")),
                        "oracle");
  EXPECT_FALSE(fs::exists(scratch.path / "ref"));
}

}  // namespace
}  // namespace lockstep
