#include "formats/dump_dir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/aprt.h"
#include "formats/error.h"
#include "tests/test_util.h"

namespace lockstep::formats {
namespace {

namespace fs = std::filesystem;

// A few of engine/stages.h's names (formats tests link formats only).
StageLookup test_stages() {
  return make_stage_lookup({{"embedding", StageScope::PerLayer},
                            {"attn_norm", StageScope::PerLayer},
                            {"ffn_up", StageScope::PerLayer},
                            {"final_norm", StageScope::WholeModel},
                            {"lm_head", StageScope::WholeModel}});
}

const DumpIssue* find_issue(const DumpScan& s, std::string_view rel) {
  for (const auto& i : s.issues)
    if (i.rel_path == rel) return &i;
  return nullptr;
}

std::vector<fs::path> siblings_with(const fs::path& dest, std::string_view tag) {
  std::vector<fs::path> out;
  std::string prefix = dest.filename().string() + std::string(tag);
  for (const auto& e : fs::directory_iterator(dest.parent_path()))
    if (e.path().filename().string().rfind(prefix, 0) == 0) out.push_back(e.path());
  return out;
}

// ---- names ---------------------------------------------------------------------------------

struct LayerName {
  const char* name;
  std::optional<uint32_t> layer;
};

class LayerDirName : public ::testing::TestWithParam<LayerName> {};

TEST_P(LayerDirName, Parses) {
  EXPECT_EQ(parse_layer_dir_name(GetParam().name), GetParam().layer) << GetParam().name;
}

INSTANTIATE_TEST_SUITE_P(
    Names, LayerDirName,
    ::testing::Values(LayerName{"layer-0", 0}, LayerName{"layer-7", 7}, LayerName{"layer-27", 27},
                      LayerName{"layer-4294967294", 4294967294u},
                      LayerName{"layer-4294967295", std::nullopt},
                      LayerName{"layer-99999999999", std::nullopt},
                      LayerName{"layer-007", std::nullopt}, LayerName{"layer-00", std::nullopt},
                      LayerName{"layer--1", std::nullopt}, LayerName{"layer-+1", std::nullopt},
                      LayerName{"layer-abc", std::nullopt}, LayerName{"layer-", std::nullopt},
                      LayerName{"layer-1a", std::nullopt}, LayerName{"Layer-1", std::nullopt},
                      LayerName{"layer_1", std::nullopt}, LayerName{"layer-1 ", std::nullopt}));

TEST(DumpNames, RelPathsRoundTrip) {
  EXPECT_EQ(dump_rel_path("attn_norm", 3), "layer-3/attn_norm.bin");
  EXPECT_EQ(dump_rel_path("lm_head", std::nullopt), "lm_head.bin");
  EXPECT_EQ(parse_dump_rel_path("layer-3/attn_norm.bin"), (DumpKey{"attn_norm", 3}));
  EXPECT_EQ(parse_dump_rel_path("lm_head.bin"), (DumpKey{"lm_head", std::nullopt}));
  for (const char* bad : {"", ".bin", "x.txt", "layer-03/x.bin", "a/x.bin", "layer-1/a/x.bin",
                          "/x.bin", "layer-1/", "x y.bin", "../x.bin", "layer-1/.hidden.bin"})
    EXPECT_FALSE(parse_dump_rel_path(bad).has_value()) << bad;
  EXPECT_TRUE(is_valid_stage_name("post_ffn_residual"));
  EXPECT_TRUE(is_valid_stage_name("Custom-Stage.v2"));
  EXPECT_FALSE(is_valid_stage_name(std::string(kMaxStageNameLength + 1, 'a')));
}

// ---- writer --------------------------------------------------------------------------------

TEST(DumpWriter, WritesADumpTheScannerReadsBack) {
  fs::path root = test::scratch_dir("dump");
  fs::path dest = root / "run" / "cpu";
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint64_t tokens = 3, hidden = 16, vocab = 40;
  std::vector<std::vector<float>> norms;
  std::vector<float> logits = test::random_nonzero(tokens * vocab, rng, 3.0f);
  fs::path temp;
  {
    DumpWriter w(dest);
    temp = w.temp_dir();
    EXPECT_EQ(temp.parent_path(), dest.parent_path());
    EXPECT_EQ(temp.filename().string().rfind("cpu.tmp-", 0), 0u) << temp;
    for (uint32_t layer = 0; layer < 2; ++layer) {
      norms.push_back(test::random_nonzero(tokens * hidden, rng, 3.0f));
      w.write("attn_norm", layer, norms.back(), {tokens, hidden});
    }
    w.write("lm_head", std::nullopt, logits, {tokens, vocab});
    w.write("ffn_up", 1, std::span(logits).first(7));
    Manifest m;
    m.lane = "cpu";
    m.family = "llama";
    m.token_ids = {1, 403, 407};
    m.tool_name = "lockstep";
    m.tool_version = "0.1.0";
    w.set_manifest(m);
    EXPECT_FALSE(fs::exists(dest)) << "nothing appears before commit";
    w.commit();
  }
  EXPECT_FALSE(fs::exists(temp));
  ASSERT_TRUE(fs::is_directory(dest));

  DumpScan s = scan_dump_dir(dest, {test_stages(), true});
  EXPECT_TRUE(s.issues.empty()) << s.issues.front().message;
  ASSERT_EQ(s.cells.size(), 4u);
  EXPECT_EQ(s.layers(), (std::vector<uint32_t>{0, 1}));
  const DumpCell* c = s.find("attn_norm", 1);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->rel_path, "layer-1/attn_norm.bin");
  EXPECT_EQ(c->elements, tokens * hidden);
  EXPECT_EQ(c->shape, (std::vector<uint64_t>{tokens, hidden}));
  EXPECT_EQ(read_aprt(c->path).values, norms[1]);
  const DumpCell* lm = s.find("lm_head", std::nullopt);
  ASSERT_NE(lm, nullptr);
  EXPECT_EQ(lm->header_layer, kAprtWholeModelLayer);
  EXPECT_EQ(lm->shape, (std::vector<uint64_t>{tokens, vocab}));
  EXPECT_EQ(read_aprt(lm->path).values, logits);
  // A cell written without a shape has none.
  const DumpCell* flat = s.find("ffn_up", 1);
  ASSERT_NE(flat, nullptr);
  EXPECT_FALSE(flat->shape.has_value());
  // Cells come layers first, whole-model last.
  EXPECT_EQ(s.cells.back().stage, "lm_head");
  ASSERT_TRUE(s.manifest.has_value());
  EXPECT_EQ(s.manifest->lane, "cpu");
  EXPECT_EQ(s.manifest->token_ids, (std::vector<int32_t>{1, 403, 407}));
  EXPECT_EQ(s.manifest->files.size(), 3u);
  EXPECT_NO_THROW(read_manifest(dest / "manifest.json"));
  fs::remove_all(root);
}

TEST(DumpWriter, WithoutCommitNothingIsLeft) {
  fs::path root = test::scratch_dir("dump");
  fs::path dest = root / "out";
  std::mt19937 rng(1);
  fs::path temp;
  {
    DumpWriter w(dest);
    temp = w.temp_dir();
    w.write("attn_norm", 0, test::random_nonzero(8, rng, 3.0f), {2, 4});
    EXPECT_TRUE(fs::exists(temp / "layer-0" / "attn_norm.bin"));
  }
  EXPECT_FALSE(fs::exists(temp));
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_TRUE(fs::is_empty(root));
  fs::remove_all(root);
}

TEST(DumpWriter, ExistingDestinationNeedsOverwrite) {
  fs::path root = test::scratch_dir("dump");
  fs::path dest = root / "out";
  std::mt19937 rng(2);
  std::vector<float> old_values = test::random_nonzero(4, rng, 3.0f);
  {
    DumpWriter w(dest);
    w.write("attn_norm", 0, old_values);
    w.commit();
  }
  Error e = test::expect_error([&] { DumpWriter w(dest); });
  EXPECT_NE(std::string(e.what()).find("overwrite"), std::string::npos) << e.what();
  EXPECT_TRUE(siblings_with(dest, ".tmp-").empty());

  std::vector<float> new_values = test::random_nonzero(6, rng, 3.0f);
  {
    DumpWriter w(dest, {.overwrite = true});
    w.write("ffn_up", 2, new_values);
    // The old dump stays whole until the new one is complete.
    EXPECT_EQ(read_aprt(dest / "layer-0" / "attn_norm.bin").values, old_values);
    w.commit();
  }
  EXPECT_FALSE(fs::exists(dest / "layer-0"));
  EXPECT_EQ(read_aprt(dest / "layer-2" / "ffn_up.bin").values, new_values);
  EXPECT_TRUE(siblings_with(dest, ".tmp-").empty());
  EXPECT_TRUE(siblings_with(dest, ".old-").empty());
  fs::remove_all(root);
}

TEST(DumpWriter, OverwriteRefusesWhatIsNotADump) {
  fs::path root = test::scratch_dir("dump");
  fs::path dest = root / "home";
  test::write_file(dest / "thesis.tex", "precious");
  std::mt19937 rng(3);
  {
    DumpWriter w(dest, {.overwrite = true});
    w.write("attn_norm", 0, test::random_nonzero(4, rng, 3.0f));
    Error e = test::expect_error([&] { w.commit(); });
    EXPECT_NE(std::string(e.what()).find("thesis.tex"), std::string::npos) << e.what();
  }
  EXPECT_EQ(test::read_file(dest / "thesis.tex"), "precious");
  EXPECT_TRUE(siblings_with(dest, ".tmp-").empty());

  fs::path file_dest = root / "plain";
  test::write_file(file_dest, "x");
  {
    DumpWriter w(file_dest, {.overwrite = true});
    w.write("attn_norm", 0, test::random_nonzero(4, rng, 3.0f));
    EXPECT_THROW(w.commit(), Error);
  }
  EXPECT_EQ(test::read_file(file_dest), "x");
  fs::remove_all(root);
}

TEST(DumpWriter, RefusesBadWrites) {
  fs::path root = test::scratch_dir("dump");
  std::mt19937 rng(4);
  std::vector<float> v = test::random_nonzero(6, rng, 3.0f);
  DumpWriter w(root / "out");
  EXPECT_THROW(w.write("", 0, v), Error);
  EXPECT_THROW(w.write("a/b", 0, v), Error);
  EXPECT_THROW(w.write(".hidden", 0, v), Error);
  EXPECT_THROW(w.write("x", kAprtWholeModelLayer, v), Error);
  EXPECT_THROW(w.write("x", 0, v, {4, 2}), Error);
  w.write("x", 0, v, {2, 3});
  EXPECT_THROW(w.write("x", 0, v), Error);
  w.write("x", 1, v);
  Manifest m;
  m.files["layer-5/x.bin"] = {6};
  w.set_manifest(m);
  Error e = test::expect_error([&] { w.commit(); });
  EXPECT_NE(std::string(e.what()).find("layer-5/x.bin"), std::string::npos) << e.what();
  m.files = {{"layer-1/x.bin", {7}}};
  w.set_manifest(m);
  e = test::expect_error([&] { w.commit(); });
  EXPECT_NE(std::string(e.what()).find("6 elements"), std::string::npos) << e.what();
  m.files = {{"layer-1/x.bin", {3, 2}}};
  w.set_manifest(m);
  w.commit();
  EXPECT_THROW(w.write("y", 0, v), Error);
  DumpScan s = scan_dump_dir(root / "out");
  EXPECT_EQ(s.find("x", 1)->shape, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(s.find("x", 0)->shape, (std::vector<uint64_t>{2, 3}));
  fs::remove_all(root);
}

// ---- scanner -------------------------------------------------------------------------------

class DumpScanner : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir("scan");
    rng_.seed(std::random_device{}());
  }
  void TearDown() override { fs::remove_all(dir_); }

  // An APRT file at `rel` whose header says `header_layer`.
  void put(const std::string& rel, uint32_t header_layer, size_t count = 8) {
    fs::create_directories((dir_ / rel).parent_path());
    write_aprt(dir_ / rel, header_layer, test::random_nonzero(count, rng_, 3.0f));
  }
  void put_raw(const std::string& rel, const std::string& bytes) {
    test::write_file(dir_ / rel, bytes);
  }
  DumpScan scan(bool known = true) {
    DumpScanOptions o;
    if (known) o.known_stages = test_stages();
    return scan_dump_dir(dir_, o);
  }
  // The issue for `rel`, which must exist with this kind and severity.
  const DumpIssue& expect_issue(const DumpScan& s, const std::string& rel, DumpIssueKind kind,
                                IssueSeverity severity, bool listed) {
    const DumpIssue* i = find_issue(s, rel);
    static const DumpIssue kNone{DumpIssueKind::StrayFile, IssueSeverity::Note, "", "", false};
    if (i == nullptr) {
      ADD_FAILURE() << "no issue for " << rel;
      return kNone;
    }
    EXPECT_EQ(i->kind, kind) << rel << ": " << i->message;
    EXPECT_EQ(i->severity, severity) << rel << ": " << i->message;
    EXPECT_EQ(i->listed, listed) << rel << ": " << i->message;
    EXPECT_NE(i->message.find(rel), std::string::npos) << i->message;
    return *i;
  }

  fs::path dir_;
  std::mt19937 rng_;
};

TEST_F(DumpScanner, ListsAGoodDumpWithoutIssues) {
  put("layer-0/embedding.bin", 0, 12);
  put("layer-0/attn_norm.bin", 0, 12);
  put("layer-10/attn_norm.bin", 10, 12);
  put("layer-2/attn_norm.bin", 2, 12);
  put("lm_head.bin", kAprtWholeModelLayer, 30);
  DumpScan s = scan();
  EXPECT_TRUE(s.issues.empty());
  EXPECT_FALSE(s.has_errors());
  ASSERT_EQ(s.cells.size(), 5u);
  EXPECT_EQ(s.layers(), (std::vector<uint32_t>{0, 2, 10}));
  EXPECT_EQ(s.cells[0].stage, "attn_norm");
  EXPECT_EQ(s.cells[1].stage, "embedding");
  EXPECT_EQ(s.cells[3].layer, 10u);
  EXPECT_EQ(s.cells[4].layer, std::nullopt);
  EXPECT_EQ(s.find("lm_head", std::nullopt)->elements, 30u);
  EXPECT_EQ(s.find("lm_head", 0), nullptr);
  EXPECT_FALSE(s.manifest.has_value());
}

TEST_F(DumpScanner, ReportsStrayFilesByName) {
  put("layer-0/attn_norm.bin", 0);
  put_raw("notes.txt", "hello");
  put_raw("_PROVENANCE.txt", "model: x");
  put_raw("layer-0/attn_norm.npy", "x");
  put_raw(".DS_Store", "x");
  DumpScan s = scan();
  EXPECT_EQ(s.cells.size(), 1u);
  expect_issue(s, "notes.txt", DumpIssueKind::StrayFile, IssueSeverity::Warning, false);
  expect_issue(s, "_PROVENANCE.txt", DumpIssueKind::StrayFile, IssueSeverity::Note, false);
  expect_issue(s, "layer-0/attn_norm.npy", DumpIssueKind::StrayFile, IssueSeverity::Warning, false);
  expect_issue(s, ".DS_Store", DumpIssueKind::StrayFile, IssueSeverity::Warning, false);
  EXPECT_FALSE(s.has_errors());
}

TEST_F(DumpScanner, ReportsBadDirectoryNamesAndNestedDirectories) {
  put("layer-1/attn_norm.bin", 1);
  for (const char* bad : {"layer-abc", "layer--1", "layer-007", "layer-4294967295", "layer-"})
    put(std::string(bad) + "/attn_norm.bin", 7);
  put("cpu/lm_head.bin", kAprtWholeModelLayer);
  put_raw("plots/a.png", "x");
  put("layer-1/extra/attn_norm.bin", 1);
  DumpScan s = scan();
  ASSERT_EQ(s.cells.size(), 1u);
  EXPECT_EQ(s.cells[0].layer, 1u);
  for (const char* bad : {"layer-abc", "layer--1", "layer-007", "layer-4294967295", "layer-"})
    expect_issue(s, std::string(bad) + "/", DumpIssueKind::BadDirectoryName, IssueSeverity::Error,
                 false);
  const DumpIssue& cpu =
      expect_issue(s, "cpu/", DumpIssueKind::NestedDirectory, IssueSeverity::Warning, false);
  EXPECT_NE(cpu.message.find("dump of its own"), std::string::npos) << cpu.message;
  const DumpIssue& plots =
      expect_issue(s, "plots/", DumpIssueKind::NestedDirectory, IssueSeverity::Warning, false);
  EXPECT_EQ(plots.message.find("dump of its own"), std::string::npos) << plots.message;
  expect_issue(s, "layer-1/extra/", DumpIssueKind::NestedDirectory, IssueSeverity::Warning, false);
}

TEST_F(DumpScanner, ReportsHeaderLayersThatDisagreeWithTheirDirectory) {
  put("layer-3/attn_norm.bin", 5);
  put("layer-4/ffn_up.bin", kAprtWholeModelLayer);
  put("final_norm.bin", 7);
  put("lm_head.bin", 0);  // tolerated: listed as whole-model, with a warning
  DumpScan s = scan();
  const DumpIssue& i = expect_issue(s, "layer-3/attn_norm.bin", DumpIssueKind::LayerMismatch,
                                    IssueSeverity::Error, false);
  EXPECT_NE(i.message.find("expected header layer 3"), std::string::npos) << i.message;
  EXPECT_NE(i.message.find("found 5"), std::string::npos) << i.message;
  expect_issue(s, "layer-4/ffn_up.bin", DumpIssueKind::LayerMismatch, IssueSeverity::Error, false);
  expect_issue(s, "final_norm.bin", DumpIssueKind::LayerMismatch, IssueSeverity::Error, false);
  expect_issue(s, "lm_head.bin", DumpIssueKind::LayerMismatch, IssueSeverity::Warning, true);
  ASSERT_EQ(s.cells.size(), 1u);
  EXPECT_EQ(s.cells[0].stage, "lm_head");
  EXPECT_EQ(s.cells[0].layer, std::nullopt);
  EXPECT_EQ(s.cells[0].header_layer, 0u);
}

TEST_F(DumpScanner, ReportsMalformedFilesAndKeepsScanning) {
  put("layer-0/attn_norm.bin", 0);
  put_raw("layer-0/ffn_up.bin", std::string("APRT\0\0\0\0\x10\0\0\0", 12) + "short");
  put_raw("layer-0/embedding.bin", "GGUF and then some");
  put_raw("final_norm.bin", "");
  put_raw("layer-1/attn_norm.bin", std::string("APRT\x01\0\0\0\x01\0\0\0\0\0\x80\x3f++", 18));
  put_raw(".bin", "x");
  put_raw("layer-1/a b.bin", "x");
  DumpScan s = scan();
  ASSERT_EQ(s.cells.size(), 1u);
  const DumpIssue& trunc = expect_issue(s, "layer-0/ffn_up.bin", DumpIssueKind::MalformedFile,
                                        IssueSeverity::Error, false);
  EXPECT_NE(trunc.message.find("at offset 17"), std::string::npos) << trunc.message;
  EXPECT_NE(trunc.message.find("truncated"), std::string::npos) << trunc.message;
  const DumpIssue& magic = expect_issue(s, "layer-0/embedding.bin", DumpIssueKind::MalformedFile,
                                        IssueSeverity::Error, false);
  EXPECT_NE(magic.message.find("magic"), std::string::npos) << magic.message;
  expect_issue(s, "final_norm.bin", DumpIssueKind::MalformedFile, IssueSeverity::Error, false);
  const DumpIssue& trail = expect_issue(s, "layer-1/attn_norm.bin", DumpIssueKind::MalformedFile,
                                        IssueSeverity::Error, false);
  EXPECT_NE(trail.message.find("trailing"), std::string::npos) << trail.message;
  expect_issue(s, ".bin", DumpIssueKind::BadFileName, IssueSeverity::Error, false);
  expect_issue(s, "layer-1/a b.bin", DumpIssueKind::BadFileName, IssueSeverity::Error, false);
  EXPECT_TRUE(s.has_errors());
}

TEST_F(DumpScanner, UnknownStagesAreListedAndReported) {
  put("layer-0/my_probe.bin", 0);
  put("my_total.bin", kAprtWholeModelLayer);
  DumpScan s = scan();
  EXPECT_EQ(s.cells.size(), 2u);
  expect_issue(s, "layer-0/my_probe.bin", DumpIssueKind::UnknownStage, IssueSeverity::Warning,
               true);
  expect_issue(s, "my_total.bin", DumpIssueKind::UnknownStage, IssueSeverity::Warning, true);
  // Without a lookup every well-formed name is accepted silently.
  DumpScan open = scan(false);
  EXPECT_EQ(open.cells.size(), 2u);
  EXPECT_TRUE(open.issues.empty());
}

TEST_F(DumpScanner, StagesInTheWrongPlace) {
  put("attn_norm.bin", kAprtWholeModelLayer);  // per-layer stage at the root
  put("layer-0/final_norm.bin", kAprtWholeModelLayer);
  put("layer-3/final_norm.bin", 3);
  put("layer-5/lm_head.bin", 2);
  DumpScan s = scan();
  expect_issue(s, "attn_norm.bin", DumpIssueKind::Misplaced, IssueSeverity::Error, false);
  expect_issue(s, "layer-0/final_norm.bin", DumpIssueKind::Misplaced, IssueSeverity::Warning, true);
  // The second whole-model final_norm collides with the first.
  expect_issue(s, "layer-3/final_norm.bin", DumpIssueKind::Misplaced, IssueSeverity::Warning,
               false);
  bool dup = std::any_of(s.issues.begin(), s.issues.end(), [](const DumpIssue& i) {
    return i.kind == DumpIssueKind::Duplicate && i.rel_path == "layer-3/final_norm.bin";
  });
  EXPECT_TRUE(dup);
  expect_issue(s, "layer-5/lm_head.bin", DumpIssueKind::LayerMismatch, IssueSeverity::Error, false);
  ASSERT_EQ(s.cells.size(), 1u);
  EXPECT_EQ(s.cells[0].stage, "final_norm");
  EXPECT_EQ(s.cells[0].layer, std::nullopt);
  EXPECT_EQ(s.cells[0].rel_path, "layer-0/final_norm.bin");
}

TEST_F(DumpScanner, RootFileWinsOverAWholeModelStageInALayerDirectory) {
  put("lm_head.bin", kAprtWholeModelLayer, 20);
  put("layer-0/lm_head.bin", 0, 10);
  DumpScan s = scan();
  ASSERT_EQ(s.cells.size(), 1u);
  EXPECT_EQ(s.cells[0].rel_path, "lm_head.bin");
  EXPECT_EQ(s.cells[0].elements, 20u);
  const DumpIssue* dup = nullptr;
  for (const auto& i : s.issues)
    if (i.kind == DumpIssueKind::Duplicate) dup = &i;
  ASSERT_NE(dup, nullptr);
  EXPECT_EQ(dup->rel_path, "layer-0/lm_head.bin");
  EXPECT_NE(dup->message.find("already listed from lm_head.bin"), std::string::npos);
  EXPECT_FALSE(find_issue(s, "layer-0/lm_head.bin")->listed);
}

TEST_F(DumpScanner, ManifestShapesAndMismatches) {
  put("layer-0/attn_norm.bin", 0, 12);
  put("layer-1/attn_norm.bin", 1, 12);
  put("lm_head.bin", kAprtWholeModelLayer, 30);
  Manifest m;
  m.files["layer-0/attn_norm.bin"] = {3, 4};
  m.files["layer-1/attn_norm.bin"] = {5, 4};  // wrong: 20 ≠ 12
  m.files["lm_head.bin"] = {3, 10};
  m.files["layer-2/attn_norm.bin"] = {3, 4};  // absent
  write_manifest(dir_ / "manifest.json", m);
  DumpScan s = scan();
  ASSERT_EQ(s.cells.size(), 3u);
  EXPECT_EQ(s.find("attn_norm", 0)->shape, (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(s.find("attn_norm", 1)->shape, std::nullopt);
  EXPECT_EQ(s.find("lm_head", std::nullopt)->shape, (std::vector<uint64_t>{3, 10}));
  const DumpIssue& bad = expect_issue(s, "layer-1/attn_norm.bin", DumpIssueKind::ShapeMismatch,
                                      IssueSeverity::Error, true);
  EXPECT_NE(bad.message.find("manifest.json"), std::string::npos) << bad.message;
  expect_issue(s, "layer-2/attn_norm.bin", DumpIssueKind::MissingFile, IssueSeverity::Note, false);
}

TEST_F(DumpScanner, MalformedManifestIsReportedAndCellsStillListed) {
  put("layer-0/attn_norm.bin", 0, 12);
  put_raw("manifest.json", "{\"format_version\": 1, \"files\": {\"layer-0/attn_norm.bin\": 7}}");
  DumpScan s = scan();
  EXPECT_EQ(s.cells.size(), 1u);
  EXPECT_FALSE(s.manifest.has_value());
  const DumpIssue& i =
      expect_issue(s, "manifest.json", DumpIssueKind::Manifest, IssueSeverity::Error, false);
  EXPECT_NE(i.message.find("layer-0/attn_norm.bin"), std::string::npos) << i.message;

  DumpScanOptions no_manifest;
  no_manifest.read_manifest = false;
  EXPECT_TRUE(scan_dump_dir(dir_, no_manifest).issues.empty());
}

TEST_F(DumpScanner, EverythingAtOnce) {
  // One of each problem beside good cells: the good cells all survive.
  put("layer-0/attn_norm.bin", 0);
  put("layer-1/attn_norm.bin", 1);
  put("lm_head.bin", kAprtWholeModelLayer);
  put("layer-2/attn_norm.bin", 9);
  put("layer-x/attn_norm.bin", 0);
  put_raw("layer-1/ffn_up.bin", "APRT");
  put_raw("README", "x");
  put("nested/deeper/lm_head.bin", kAprtWholeModelLayer);
  put_raw("manifest.json", "{");
  DumpScan s = scan();
  EXPECT_EQ(s.cells.size(), 3u);
  EXPECT_EQ(s.issues.size(), 6u);
  EXPECT_TRUE(s.has_errors());
}

TEST(DumpScan, MissingDirectoryIsAnError) {
  fs::path root = test::scratch_dir("scan");
  EXPECT_THROW(scan_dump_dir(root / "nope"), Error);
  test::write_file(root / "file", "x");
  Error e = test::expect_error([&] { scan_dump_dir(root / "file"); });
  EXPECT_NE(std::string(e.what()).find("a dump directory"), std::string::npos);
  fs::remove_all(root);
}

TEST(DumpScanShared, LlamaCppReferenceDirectory) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  fs::path dir = test::shared_models() / "reference" / "stories260K";
  DumpScan s = scan_dump_dir(dir, {test_stages(), true});
  ASSERT_EQ(s.cells.size(), 1u);
  EXPECT_EQ(s.cells[0].stage, "lm_head");
  EXPECT_EQ(s.cells[0].layer, std::nullopt);
  EXPECT_EQ(s.cells[0].elements, 5u * 512u);
  EXPECT_FALSE(s.has_errors());
  EXPECT_EQ(s.issues.size(), 2u);  // greedy.txt and llamacpp.json, as notes
  for (const auto& i : s.issues) EXPECT_EQ(i.severity, IssueSeverity::Note) << i.message;
}

}  // namespace
}  // namespace lockstep::formats
