#pragma once
// Dump directories side by side and the export of a run, without any UI: what the workbench's
// Dumps panel shows and writes, usable from a command line too.
//
// Listing: every file of one or two APRT directories as a row (cell, shape, bytes, status):
// ok; malformed (the parser's error text); missing (the other directory or this one's
// manifest has the cell, this directory does not). Other irregularities (stray files, bad
// names) are notes.
//
// Export: the two traces of a run and their comparison into one new directory, built under a
// temporary sibling and renamed into place (formats/atomic_dir.h):
//   <dest>/a/, <dest>/b/            APRT + manifest.json per lane, as `lockstep dump` writes
//   <dest>/npy/a/, <dest>/npy/b/    one .npy per cell, laid out like the APRT files
//   <dest>/comparison.json, .md     bisect_report.h's JSON and Markdown
//   <dest>/comparison.csv           one row per cell (comparison_csv)

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/bisect_report.h"
#include "engine/bisect_run.h"
#include "engine/model_config.h"
#include "engine/trace.h"
#include "engine/weights.h"
#include "formats/dump_dir.h"
#include "formats/manifest.h"

namespace lockstep::engine {

// ---- listing -----------------------------------------------------------------------------

enum class DumpCellStatus : uint8_t { Ok, Missing, Malformed };
std::string_view dump_cell_status_name(DumpCellStatus s);  // "ok", "missing", "malformed"

struct DumpListingRow {
  std::string name;      // "attn_norm@3", "lm_head"; the relative path when it names no cell
  std::string rel_path;  // "layer-3/attn_norm.bin"
  std::string shape;     // "[5, 64]", "[320] (flat)"; "" when missing or malformed
  std::string dtype;     // "f32"; "" when missing or malformed
  uint64_t bytes = 0;    // the file's size; 0 when missing
  DumpCellStatus status = DumpCellStatus::Ok;
  std::string detail;  // malformed: the parser's message; missing: where the cell is known from
};

struct DumpListing {
  std::string dir;
  bool has_manifest = false;
  std::string lane, model;           // from the manifest
  std::optional<size_t> tokens;      // the manifest's token count
  std::vector<DumpListingRow> rows;  // plan order, unknown names last
  std::vector<std::string> notes;    // every other issue, one sentence each
  size_t ok = 0, missing = 0, malformed = 0;
};

// Scans `dir` (and `dir_b`, when given) and lists each; rows missing in one directory but
// present in the other are added to both listings' views of it. Throws lockstep::Error when a
// directory is missing, is not a directory, or holds no APRT file and no manifest.
std::vector<DumpListing> list_dumps(const std::filesystem::path& dir_a,
                                    const std::optional<std::filesystem::path>& dir_b);

// ---- export ------------------------------------------------------------------------------

// The manifest's "config": what a reader needs to interpret the cells without the model.
nlohmann::json manifest_config(const ModelConfig& c);
// The manifest `lockstep dump` writes for a run of `lane` on `model` (read from `model_path`;
// its sha256 for a GGUF) over `tokens`; "files" is left to the DumpWriter.
formats::Manifest run_manifest(const std::string& lane, const Model& model,
                               const std::filesystem::path& model_path,
                               std::span<const int32_t> tokens, const std::string& tool_version);

// One CSV row per compared cell (in plan order; only `cells` when not empty), after a header:
// cell,layer,stage,shape,relative_rms,cosine,max_abs_diff,sqnr_db,floor,threshold,diverges,local
// Numbers round-trip (%.17g; "nan", "inf", "-inf"); a value the result lacks is empty; shape
// is "5x64"; diverges is 0 or 1; local is the replayed local error, when any.
std::string comparison_csv(const BisectResult& r, std::span<const Cell> cells = {});

struct ExportFormats {
  bool aprt = true, npy = true, json = true, markdown = true, csv = true;
};

struct ExportSpec {
  std::filesystem::path dest;
  bool overwrite = false;   // replace an existing export (never a directory of other files)
  std::vector<Cell> cells;  // empty: every cell of both traces
  ExportFormats formats;
};

struct ExportSource {
  const Trace* a = nullptr;
  const Trace* b = nullptr;
  const BisectResult* result = nullptr;  // for the comparison files
  const Model* model = nullptr;          // for the manifests' config; may be null
  std::filesystem::path model_path;
  ReportContext context;  // tool_version is also the manifests'
};

struct ExportOutcome {
  std::filesystem::path dest;
  std::vector<std::filesystem::path> files;  // every file written, under dest
  bool cancelled = false;                    // then nothing was left behind
};

using ExportProgressFn = std::function<void(double fraction, const std::string& message)>;

// Writes the export; throws lockstep::Error (leaving nothing behind) when `dest` exists and
// may not be replaced, a selected cell is in neither trace, nothing is selected, or a write
// fails. With `cancel` set part-way, returns with cancelled = true and no directory.
ExportOutcome export_run(const ExportSource& source, const ExportSpec& spec,
                         const ExportProgressFn& progress = {},
                         const std::atomic<bool>* cancel = nullptr);

}  // namespace lockstep::engine
