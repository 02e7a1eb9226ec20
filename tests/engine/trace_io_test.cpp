#include "engine/trace_io.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "engine/compare.h"
#include "engine/ref_lane.h"
#include "formats/aprt.h"
#include "formats/dump_dir.h"
#include "tests/engine/lane_test_util.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;

// hidden 8, 2 heads of 4 (1 KV head), ffn 16, vocab 10: qkv 16, kv_dim 4.
ModelConfig tiny_config() {
  ModelConfig c;
  c.source = "tiny";
  c.hidden = 8;
  c.layers = 2;
  c.heads = 2;
  c.kv_heads = 1;
  c.head_dim = 4;
  c.ffn = 16;
  c.vocab = 10;
  return c;
}

bool has_issue(const LoadedDump& d, formats::DumpIssueKind kind, const std::string& path) {
  return std::any_of(d.issues.begin(), d.issues.end(), [&](const formats::DumpIssue& i) {
    return i.kind == kind && i.rel_path == path;
  });
}

std::vector<float> values(size_t n, uint32_t seed) {
  return test::random_nonzero(n, seed);
}

TEST(TraceIo, DumpWithManifestKeepsShapesLaneAndTokens) {
  test::ScratchDir scratch("trace_io_manifest");
  fs::path dir = scratch.path / "dump";
  std::vector<float> norm = values(24, 1), scores = values(18, 2), logits = values(30, 3);
  {
    formats::DumpWriter w(dir);
    w.write("attn_norm", 0, norm, {3, 8});
    w.write("attn_scores", 1, scores, {2, 3, 3});
    w.write("lm_head", std::nullopt, logits, {3, 10});
    formats::Manifest m;
    m.lane = "cpu";
    m.token_ids = {1, 2, 3};
    w.set_manifest(m);
    w.commit();
  }
  LoadedDump d = load_dump(dir);
  EXPECT_FALSE(d.has_errors());
  EXPECT_EQ(d.trace.lane, "cpu");
  EXPECT_EQ(d.trace.tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(d.tokens, 3u);
  ASSERT_EQ(d.trace.size(), 3u);
  const Tensor* t = d.trace.find({Stage::AttnNorm, 0});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<uint64_t>{3, 8}));
  EXPECT_EQ(t->data, norm);
  t = d.trace.find({Stage::AttnScores, 1});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<uint64_t>{2, 3, 3}));
  EXPECT_EQ(t->data, scores);
  t = d.trace.find({Stage::LmHead, std::nullopt});
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<uint64_t>{3, 10}));
  // The manifest wins over a config that would say otherwise.
  ModelConfig other = tiny_config();
  other.hidden = 4;
  EXPECT_EQ(load_dump(dir, &other).trace.find({Stage::AttnNorm, 0})->shape,
            (std::vector<uint64_t>{3, 8}));
}

// aprender's layout: no manifest, a sidecar, a stage Lockstep does not know.
fs::path aprender_dump(const fs::path& root) {
  fs::path dir = root / "apr";
  formats::DumpWriter w(dir);
  w.write("attn_norm", 0, values(24, 1));
  w.write("qkv_matmul", 0, values(48, 2));
  w.write("k_post_rope", 0, values(12, 3));
  w.write("attn_scores", 0, values(18, 4));
  w.write("attn_softmax", 1, values(18, 5));
  w.write("ffn_up", 1, values(48, 6));
  w.write("lm_head", std::nullopt, values(30, 7));
  w.write("my_probe", 1, values(5, 8));
  w.commit();
  test::write_file(dir / "notes.txt", "hello");
  return dir;
}

TEST(TraceIo, AprenderDumpTakesShapesFromTheConfig) {
  test::ScratchDir scratch("trace_io_apr");
  fs::path dir = aprender_dump(scratch.path);
  ModelConfig config = tiny_config();
  LoadedDump d = load_dump(dir, &config);
  EXPECT_FALSE(d.manifest);
  EXPECT_EQ(d.trace.lane, "dump:" + dir.string());
  EXPECT_EQ(d.tokens, 3u);
  auto shape = [&](Stage s, std::optional<uint32_t> layer) {
    const Tensor* t = d.trace.find({s, layer});
    return t ? t->shape : std::vector<uint64_t>{};
  };
  EXPECT_EQ(shape(Stage::AttnNorm, 0), (std::vector<uint64_t>{3, 8}));
  EXPECT_EQ(shape(Stage::QkvMatmul, 0), (std::vector<uint64_t>{3, 16}));
  EXPECT_EQ(shape(Stage::KPostRope, 0), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(shape(Stage::AttnScores, 0), (std::vector<uint64_t>{2, 3, 3}));
  EXPECT_EQ(shape(Stage::AttnSoftmax, 1), (std::vector<uint64_t>{2, 3, 3}));
  EXPECT_EQ(shape(Stage::FfnUp, 1), (std::vector<uint64_t>{3, 16}));
  EXPECT_EQ(shape(Stage::LmHead, std::nullopt), (std::vector<uint64_t>{3, 10}));
  EXPECT_EQ(d.trace.size(), 7u);
  EXPECT_EQ(d.trace.find({Stage::AttnNorm, 0})->data, values(24, 1));
  // Reported, not fatal: the stray file, the unknown stage (listed by the scan, not loaded).
  EXPECT_TRUE(has_issue(d, formats::DumpIssueKind::StrayFile, "notes.txt"));
  EXPECT_TRUE(has_issue(d, formats::DumpIssueKind::UnknownStage, "layer-1/my_probe.bin"));
  EXPECT_FALSE(d.has_errors());
}

TEST(TraceIo, AprenderDumpWithoutConfigIsFlat) {
  test::ScratchDir scratch("trace_io_flat");
  fs::path dir = aprender_dump(scratch.path);
  Trace t = load_dump_trace(dir);
  EXPECT_EQ(t.size(), 7u);
  for (const auto& [cell, tensor] : t.cells()) {
    ASSERT_EQ(tensor.shape.size(), 1u) << cell_name(cell);
    EXPECT_EQ(tensor.shape[0], tensor.data.size());
  }
}

TEST(TraceIo, CountsThatDoNotFitTheConfigAreFlatAndSaySo) {
  test::ScratchDir scratch("trace_io_misfit");
  fs::path dir = scratch.path / "d";
  {
    formats::DumpWriter w(dir);
    w.write("attn_norm", 0, values(20, 1));    // not a multiple of hidden 8
    w.write("attn_scores", 0, values(16, 2));  // 2 heads × 8: not tokens² with 3 tokens
    w.write("ffn_up", 0, values(48, 3));       // 3 tokens
    w.commit();
  }
  ModelConfig config = tiny_config();
  LoadedDump d = load_dump(dir, &config);
  EXPECT_EQ(d.trace.find({Stage::AttnNorm, 0})->shape, (std::vector<uint64_t>{20}));
  EXPECT_EQ(d.trace.find({Stage::AttnScores, 0})->shape, (std::vector<uint64_t>{16}));
  EXPECT_EQ(d.trace.find({Stage::FfnUp, 0})->shape, (std::vector<uint64_t>{3, 16}));
  ASSERT_TRUE(has_issue(d, formats::DumpIssueKind::ShapeMismatch, "layer-0/attn_norm.bin"));
  ASSERT_TRUE(has_issue(d, formats::DumpIssueKind::ShapeMismatch, "layer-0/attn_scores.bin"));
  for (const auto& i : d.issues) {
    if (i.rel_path == "layer-0/attn_norm.bin") {
      EXPECT_NE(i.message.find("not a multiple of the width 8"), std::string::npos) << i.message;
    }
  }
}

TEST(TraceIo, AttentionAloneIsAPrefillFromZeroAndADecodeStepFitsWithTokens) {
  test::ScratchDir scratch("trace_io_attn");
  fs::path prefill = scratch.path / "prefill", decode = scratch.path / "decode";
  {
    formats::DumpWriter w(prefill);
    w.write("attn_scores", 0, values(2 * 4 * 4, 1));  // alone: tokens = sqrt(32 / 2) = 4
    w.commit();
  }
  {
    formats::DumpWriter w(decode);
    w.write("attn_norm", 0, values(8, 2));             // 1 token
    w.write("attn_softmax", 0, values(2 * 1 * 5, 3));  // ctx 5
    w.commit();
  }
  fs::path mixed = scratch.path / "mixed";  // the manifest shapes one cell, not the other
  {
    formats::DumpWriter w(mixed);
    w.write("attn_norm", 0, values(8, 2), {1, 8});
    w.write("attn_softmax", 0, values(2 * 1 * 5, 3));
    w.commit();
  }
  ModelConfig config = tiny_config();
  EXPECT_EQ(load_dump_trace(mixed, &config).find({Stage::AttnSoftmax, 0})->shape,
            (std::vector<uint64_t>{2, 1, 5}));
  EXPECT_EQ(load_dump_trace(prefill, &config).find({Stage::AttnScores, 0})->shape,
            (std::vector<uint64_t>{2, 4, 4}));
  EXPECT_EQ(load_dump_trace(decode, &config).find({Stage::AttnSoftmax, 0})->shape,
            (std::vector<uint64_t>{2, 1, 5}));
}

TEST(TraceIo, BadInputIsAnIssueOrAnErrorNamingThePath) {
  test::ScratchDir scratch("trace_io_bad");
  Error e = test::expect_error([&] { load_dump(scratch.path / "missing"); });
  EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  fs::path dir = scratch.path / "d";
  fs::create_directories(dir / "layer-0");
  test::write_file(dir / "layer-0" / "attn_norm.bin",
                   std::string("APRT\0\0\0\0\x09\0\0\0short", 17));
  formats::write_aprt(dir / "layer-0" / "ffn_up.bin", 0, values(16, 1));
  LoadedDump d = load_dump(dir);
  EXPECT_TRUE(d.has_errors());
  EXPECT_TRUE(has_issue(d, formats::DumpIssueKind::MalformedFile, "layer-0/attn_norm.bin"));
  EXPECT_EQ(d.trace.size(), 1u);
}

// A real capture written without shapes (as aprender writes it) comes back with the engine's
// own shapes from the model config, and compares exact against the original.
TEST(TraceIo, RealCaptureWithoutManifestRoundTripsThroughTheConfig) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Model& model = test_lanes::shared_model("stories260K.gguf");
  test_lanes::Reference ref = test_lanes::reference("stories260K");
  RefLane lane;
  lane.load(model);
  Trace original;
  test_lanes::prefill(lane, ref.tokens, CapturePlan::all(), original);
  test::ScratchDir scratch("trace_io_real");
  fs::path dir = scratch.path / "ref";
  {
    formats::DumpWriter w(dir);
    for (const auto& [cell, t] : original.cells())
      w.write(stage_name(cell.stage), cell.layer, t.data);
    w.commit();
  }
  LoadedDump d = load_dump(dir, &model.config);
  EXPECT_TRUE(d.issues.empty());
  EXPECT_EQ(d.tokens, ref.tokens.size());
  ASSERT_EQ(d.trace.size(), original.size());
  for (const auto& [cell, t] : original.cells()) {
    const Tensor* u = d.trace.find(cell);
    ASSERT_NE(u, nullptr) << cell_name(cell);
    EXPECT_EQ(u->shape, t.shape) << cell_name(cell);
  }
  TraceComparison c = compare_traces(original, d.trace);
  for (const CellComparison& x : c.cells) EXPECT_EQ(x.relative_rms, 0.0) << cell_name(x.cell);
}

}  // namespace
}  // namespace lockstep::engine
