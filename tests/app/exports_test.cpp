// The workbench's Dumps panel logic (engine/dump_export.h) on a real run: ref against a cpu
// lane with a planted transposed GEMV on a small synthetic model. The export is read back with
// the formats readers bit for bit; the CSV and JSON parse; the listing flags missing and
// malformed files; existing destinations and cancelled exports leave nothing changed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cpu_lane.h"
#include "engine/dump_export.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/ref_lane.h"
#include "engine/synthetic_model.h"
#include "engine/trace_io.h"
#include "formats/aprt.h"
#include "formats/error.h"
#include "formats/npy.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;

const std::vector<int32_t> kTokens{1, 17, 42, 99, 7};

struct TracedRun {
  std::unique_ptr<test::ScratchDir> dir;
  fs::path model_path;
  std::unique_ptr<Model> model;
  BisectResult result;
  Trace a, b;
};

// One bisection, captured in full on both lanes, shared by the tests of this file.
const TracedRun& run() {
  static const std::unique_ptr<TracedRun> r = [] {
    auto out = std::make_unique<TracedRun>();
    out->dir = std::make_unique<test::ScratchDir>("exports_model");
    const FamilyRegistry families = FamilyRegistry::load();
    SyntheticModelOptions o;
    o.family = "llama";
    o.hidden = 64;
    o.layers = 2;
    o.heads = 4;
    o.kv_heads = 2;
    o.ffn = 128;
    o.vocab = 300;
    o.seed = 7;
    o.out = out->dir->path / "tiny.gguf";
    write_synthetic_model(o, families);
    out->model_path = o.out;
    out->model = std::make_unique<Model>(open_model(o.out, families));
    FaultSpec fault = FaultSpec::parse("gemv_transposed@lm_head");
    RefLane ref;
    CpuLane cpu(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = fault});
    ref.load(*out->model);
    cpu.load(*out->model);
    BisectOptions options;
    options.threads = 2;
    out->result = bisect(ref, cpu, *out->model, kTokens, options);
    out->a = *capture_run(ref, kTokens, RunMode::Prefill, CapturePlan::all());
    out->b = *capture_run(cpu, kTokens, RunMode::Prefill, CapturePlan::all());
    return out;
  }();
  return *r;
}

ExportSource source() {
  const TracedRun& r = run();
  ExportSource s;
  s.a = &r.a;
  s.b = &r.b;
  s.result = &r.result;
  s.model = r.model.get();
  s.model_path = r.model_path;
  s.context.tool_version = "test";
  s.context.fault = "gemv_transposed@lm_head";
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

bool same_bits(const std::vector<float>& x, const std::vector<float>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
}

// Nothing but `dest` itself may be left beside it (no temporary siblings).
size_t entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(ExportRun, AprtIsOurDumpFormatBitForBitWithTheManifestDumpWrites) {
  const TracedRun& r = run();
  ASSERT_TRUE(r.result.diverged());
  ASSERT_GT(r.a.size(), 20u);
  test::ScratchDir scratch("exports_aprt");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  const ExportOutcome out = export_run(source(), spec);
  ASSERT_FALSE(out.cancelled);
  EXPECT_EQ(entries(scratch.path), 1u);
  for (const fs::path& f : out.files) EXPECT_TRUE(fs::is_regular_file(f)) << f;

  for (const auto& [sub, trace] : {std::pair{"a", &r.a}, std::pair{"b", &r.b}}) {
    SCOPED_TRACE(sub);
    formats::DumpScanOptions o;
    o.known_stages = stage_lookup();
    const formats::DumpScan scan = formats::scan_dump_dir(spec.dest / sub, o);
    for (const formats::DumpIssue& i : scan.issues) ADD_FAILURE() << i.message;
    ASSERT_TRUE(scan.manifest.has_value());
    EXPECT_EQ(scan.manifest->lane, trace->lane);
    EXPECT_EQ(scan.manifest->token_ids, kTokens);
    EXPECT_EQ(scan.manifest->family, "llama");
    EXPECT_EQ(scan.manifest->model_sha256.size(), 64u);
    EXPECT_EQ(scan.manifest->config.at("layers"), 2);
    EXPECT_EQ(scan.manifest->config, manifest_config(r.model->config));
    EXPECT_EQ(scan.cells.size(), trace->size());
    // Each file, read back raw, holds the lane's values bit for bit; the loader (what
    // `lockstep diff` reads) gives back the same trace, shapes included.
    for (const auto& [cell, t] : trace->cells()) {
      const formats::AprtTensor f = formats::read_aprt(
          spec.dest / sub / formats::dump_rel_path(stage_name(cell.stage), cell.layer));
      EXPECT_TRUE(same_bits(f.values, t.data)) << cell_name(cell);
      EXPECT_EQ(f.layer, cell.layer ? *cell.layer : formats::kAprtWholeModelLayer);
    }
    const LoadedDump back = load_dump(spec.dest / sub);
    EXPECT_FALSE(back.has_errors());
    ASSERT_EQ(back.trace.size(), trace->size());
    for (const auto& [cell, t] : trace->cells()) {
      const Tensor* u = back.trace.find(cell);
      ASSERT_NE(u, nullptr) << cell_name(cell);
      EXPECT_EQ(u->shape, t.shape) << cell_name(cell);
      EXPECT_TRUE(same_bits(u->data, t.data)) << cell_name(cell);
    }
  }
  // Compared again from the export, the dumps give the run's first divergence.
  const BisectResult again =
      diff_traces(load_dump_trace(spec.dest / "a"), load_dump_trace(spec.dest / "b"),
                  &r.model->config, nullptr, BisectOptions{});
  ASSERT_TRUE(again.diverged());
  EXPECT_EQ(again.first()->cell, r.result.first()->cell);
}

TEST(ExportRun, NpyOnePerCellPerLaneRoundTrips) {
  const TracedRun& r = run();
  test::ScratchDir scratch("exports_npy");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  spec.formats = {.aprt = false, .npy = true, .json = false, .markdown = false, .csv = false};
  const ExportOutcome out = export_run(source(), spec);
  EXPECT_EQ(out.files.size(), r.a.size() + r.b.size());
  EXPECT_FALSE(fs::exists(spec.dest / "a"));
  for (const auto& [sub, trace] : {std::pair{"a", &r.a}, std::pair{"b", &r.b}})
    for (const auto& [cell, t] : trace->cells()) {
      fs::path p =
          spec.dest / "npy" / sub / formats::dump_rel_path(stage_name(cell.stage), cell.layer);
      p.replace_extension(".npy");
      const formats::NpyArray a = formats::read_npy(p);
      EXPECT_EQ(a.shape, t.shape) << p;
      EXPECT_TRUE(same_bits(a.values, t.data)) << p;
    }
}

TEST(ExportRun, CsvHasAHeaderAndOneParsableRowPerCellThatRoundTrips) {
  const TracedRun& r = run();
  const std::string csv = comparison_csv(r.result);
  std::vector<std::string> lines = split(csv, '\n');
  ASSERT_EQ(lines.back(), "");  // ends with a newline
  lines.pop_back();
  ASSERT_EQ(lines.size(), r.result.scan.cells.size() + 1);
  EXPECT_EQ(lines[0],
            "cell,layer,stage,shape,relative_rms,cosine,max_abs_diff,sqnr_db,floor,threshold,"
            "diverges,local");
  size_t diverging = 0;
  for (size_t i = 0; i < r.result.scan.cells.size(); ++i) {
    const CellDivergence& d = r.result.scan.cells[i];
    const std::vector<std::string> f = split(lines[i + 1], ',');
    ASSERT_EQ(f.size(), 12u) << lines[i + 1];
    EXPECT_EQ(f[0], cell_name(d.cell));
    EXPECT_EQ(f[1], d.cell.layer ? std::to_string(*d.cell.layer) : "");
    EXPECT_EQ(f[2], stage_name(d.cell.stage));
    const CellComparison* c = r.result.comparison.find(d.cell);
    ASSERT_NE(c, nullptr);
    std::string shape;
    for (uint64_t n : c->shape_a) shape += (shape.empty() ? "" : "x") + std::to_string(n);
    EXPECT_EQ(f[3], shape);
    // Full precision: the text parses back to the very double.
    EXPECT_EQ(std::strtod(f[4].c_str(), nullptr), d.rel_rms) << f[4];
    EXPECT_EQ(std::strtod(f[5].c_str(), nullptr), c->cosine) << f[5];
    EXPECT_EQ(std::strtod(f[6].c_str(), nullptr), c->max_abs_diff) << f[6];
    EXPECT_EQ(std::strtod(f[9].c_str(), nullptr), d.threshold) << f[9];
    EXPECT_EQ(f[10], d.diverges ? "1" : "0");
    diverging += d.diverges;
  }
  EXPECT_GE(diverging, 1u);
  // The first divergence was replayed: its local error is there.
  const std::string first = cell_name(r.result.first()->cell);
  for (size_t i = 1; i < lines.size(); ++i) {
    if (split(lines[i], ',')[0] == first) {
      EXPECT_FALSE(split(lines[i], ',')[11].empty());
    }
  }
}

TEST(ExportRun, ComparisonJsonAndMarkdownAreTheBisectReports) {
  const TracedRun& r = run();
  test::ScratchDir scratch("exports_json");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  spec.formats = {.aprt = false, .npy = false, .json = true, .markdown = true, .csv = true};
  const ExportOutcome out = export_run(source(), spec);
  EXPECT_EQ(out.files.size(), 3u);
  const nlohmann::json j = nlohmann::json::parse(read_text(spec.dest / "comparison.json"));
  EXPECT_EQ(j.at("format_version"), 1);
  EXPECT_EQ(j.at("cells").size(), r.result.scan.cells.size());
  EXPECT_EQ(j.at("first_divergence").at("cell"), cell_name(r.result.first()->cell));
  EXPECT_EQ(j.at("fault"), "gemv_transposed@lm_head");
  EXPECT_EQ(read_text(spec.dest / "comparison.md"), to_markdown(r.result, source().context));
  EXPECT_EQ(read_text(spec.dest / "comparison.csv"), comparison_csv(r.result));
}

TEST(ExportRun, SelectedCellsOnly) {
  const TracedRun& r = run();
  test::ScratchDir scratch("exports_selected");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  spec.cells = {parse_cell("attn_norm@1"), parse_cell("lm_head")};
  export_run(source(), spec);
  formats::DumpScanOptions o;
  o.known_stages = stage_lookup();
  const formats::DumpScan scan = formats::scan_dump_dir(spec.dest / "b", o);
  ASSERT_EQ(scan.cells.size(), 2u);
  EXPECT_TRUE(scan.find("attn_norm", 1u));
  EXPECT_TRUE(scan.find("lm_head", std::nullopt));
  EXPECT_TRUE(fs::exists(spec.dest / "npy/a/layer-1/attn_norm.npy"));
  EXPECT_EQ(split(read_text(spec.dest / "comparison.csv"), '\n').size(), 4u);  // header, 2, ""
  EXPECT_TRUE(same_bits(formats::read_aprt(spec.dest / "b/lm_head.bin").values,
                        r.b.find(parse_cell("lm_head"))->data));
  spec.dest = scratch.path / "bad";
  spec.cells = {parse_cell("qkv_bias@0")};  // llama has no QKV bias
  EXPECT_THROW(export_run(source(), spec), Error);
  EXPECT_FALSE(fs::exists(spec.dest));
}

TEST(ExportRun, AnExistingDestinationIsKeptUnlessOverwriteAndNeverAForeignDirectory) {
  test::ScratchDir scratch("exports_existing");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  spec.formats = {.aprt = false, .npy = false, .json = false, .markdown = false, .csv = true};
  export_run(source(), spec);
  std::ofstream(spec.dest / "comparison.csv") << "old\n";
  EXPECT_THROW(export_run(source(), spec), Error);
  EXPECT_EQ(read_text(spec.dest / "comparison.csv"), "old\n");
  spec.overwrite = true;
  export_run(source(), spec);
  EXPECT_EQ(read_text(spec.dest / "comparison.csv"), comparison_csv(run().result));
  EXPECT_EQ(entries(scratch.path), 1u);

  const fs::path foreign = scratch.path / "home";
  fs::create_directories(foreign);
  std::ofstream(foreign / "notes.txt") << "mine\n";
  spec.dest = foreign;
  EXPECT_THROW(export_run(source(), spec), Error);
  EXPECT_EQ(read_text(foreign / "notes.txt"), "mine\n");
  EXPECT_EQ(entries(foreign), 1u);
}

TEST(ExportRun, CancelledLeavesNothing) {
  test::ScratchDir scratch("exports_cancel");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  std::atomic<bool> cancel{false};
  size_t calls = 0;
  const ExportOutcome out = export_run(
      source(), spec,
      [&](double, const std::string&) {
        if (++calls == 5) cancel = true;
      },
      &cancel);
  EXPECT_TRUE(out.cancelled);
  EXPECT_TRUE(out.files.empty());
  EXPECT_EQ(entries(scratch.path), 0u);
}

TEST(ListDumps, FlagsMissingAndMalformedCellsAndReadsTheManifest) {
  test::ScratchDir scratch("exports_listing");
  ExportSpec spec;
  spec.dest = scratch.path / "out";
  spec.formats = {.aprt = true, .npy = false, .json = false, .markdown = false, .csv = false};
  export_run(source(), spec);
  const fs::path a = spec.dest / "a", b = spec.dest / "b";
  const size_t cells = run().a.size();
  fs::remove(a / "layer-1/ffn_up.bin");             // listed in a's manifest: missing in both views
  fs::resize_file(b / "layer-0/attn_out.bin", 20);  // truncated: malformed

  const std::vector<DumpListing> l = list_dumps(a, b);
  ASSERT_EQ(l.size(), 2u);
  EXPECT_TRUE(l[0].has_manifest);
  EXPECT_EQ(l[0].lane, "ref");
  EXPECT_EQ(l[0].tokens, kTokens.size());
  EXPECT_EQ(l[0].rows.size(), cells);
  EXPECT_EQ(l[0].ok, cells - 1);
  EXPECT_EQ(l[0].missing, 1u);
  EXPECT_EQ(l[0].malformed, 0u);
  EXPECT_EQ(l[1].ok, cells - 1);
  EXPECT_EQ(l[1].malformed, 1u);
  EXPECT_EQ(l[1].missing, 0u);
  for (const DumpListingRow& row : l[1].rows)
    if (row.name == "attn_out@0") {
      EXPECT_EQ(row.status, DumpCellStatus::Malformed);
      EXPECT_NE(row.detail.find("attn_out.bin"), std::string::npos) << row.detail;
      EXPECT_EQ(row.bytes, 20u);
    } else {
      EXPECT_EQ(row.status, DumpCellStatus::Ok) << row.name;
      EXPECT_EQ(row.dtype, "f32");
      EXPECT_EQ(row.shape.front(), '[');
    }
  // Plan order: embedding first, lm_head last.
  EXPECT_EQ(l[1].rows.front().name, "embedding@0");
  EXPECT_EQ(l[1].rows.back().name, "lm_head");

  // The same pair without the manifest: a's missing file is found through b.
  fs::remove(a / "manifest.json");
  const std::vector<DumpListing> m = list_dumps(a, b);
  EXPECT_FALSE(m[0].has_manifest);
  EXPECT_EQ(m[0].missing, 1u);

  EXPECT_THROW(list_dumps(scratch.path / "nowhere", std::nullopt), Error);
  EXPECT_THROW(list_dumps(a / "layer-0/attn_norm.bin", std::nullopt), Error);
  fs::create_directories(scratch.path / "empty");
  EXPECT_THROW(list_dumps(scratch.path / "empty", std::nullopt), Error);
}

}  // namespace
}  // namespace lockstep::engine
