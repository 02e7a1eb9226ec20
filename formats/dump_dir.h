#pragma once
// APRT dump directories: naming rules, a scanner that lists what a directory holds and
// reports everything irregular by name without giving up, and an atomic writer.
//
// Layout (aprender's `save_tensor_paths.rs`): per-layer stages at
// `<dir>/layer-<N>/<stage>.bin` with header layer N; whole-model stages at `<dir>/<stage>.bin`
// with header layer 0xFFFFFFFF; an optional `<dir>/manifest.json` (formats/manifest.h).
//
// Scanner rules (each irregularity is one DumpIssue naming the path, and the scan goes on):
//   * `layer-<N>` takes N in canonical decimal, 0 ≤ N < 0xFFFFFFFF: no sign, no leading
//     zeros ("layer-007" is rejected, since aprender formats `layer-{N}` and accepting both
//     "layer-7" and "layer-007" would let two files claim one cell). Other names that start
//     with "layer" are BadDirectoryName; any other directory is NestedDirectory and is not
//     entered (aprender's parity gate writes a second dump under `<dir>/cpu/`; open it as a
//     dump of its own). Directories inside a layer directory are NestedDirectory too.
//   * Files other than `*.bin` are StrayFile, except the root `manifest.json`. Known
//     sidecars (aprender's `_PROVENANCE.txt`, llama.cpp reference `llamacpp.json`,
//     `greedy.txt`) are reported with severity Note, others as Warning.
//   * A `.bin` whose stem is not a usable stage name is BadFileName; one whose APRT header
//     or size is wrong is MalformedFile (with the parser's message: file, offset, expected).
//   * Header layer ≠ directory layer is LayerMismatch and the file is skipped, except the
//     two shapes aprender has been seen or could plausibly write for whole-model stages:
//     a root file with header layer 0 (listed as whole-model, Warning), and a known
//     whole-model stage inside `layer-<N>/` with header N or 0xFFFFFFFF (listed as
//     whole-model, Warning, unless the root also holds it: then Duplicate, root wins).
//   * A known per-layer stage at the root has no layer to go by: Misplaced, skipped.
//   * With a `known_stages` lookup, names it does not know are UnknownStage (Warning) and
//     still listed, so they can be shown flat.
//   * The manifest: unreadable or malformed → Manifest issue (Error) and no shapes; a listed
//     shape whose product differs from the file's count → ShapeMismatch naming the manifest
//     and key, and that cell gets no shape; a listed file that is absent → Note.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "formats/atomic_dir.h"
#include "formats/manifest.h"

namespace lockstep::formats {

// ---- names -------------------------------------------------------------------------------

inline constexpr size_t kMaxStageNameLength = 128;

// "layer-<N>" in canonical decimal; nullopt for anything else (including layer-007).
std::optional<uint32_t> parse_layer_dir_name(std::string_view name);
std::string layer_dir_name(uint32_t layer);
// 1..kMaxStageNameLength of [A-Za-z0-9_.-], not starting with '.'.
bool is_valid_stage_name(std::string_view stage);
// "layer-<N>/<stage>.bin" or "<stage>.bin".
std::string dump_rel_path(std::string_view stage, std::optional<uint32_t> layer);

struct DumpKey {
  std::string stage;
  std::optional<uint32_t> layer;  // nullopt: whole-model
  bool operator==(const DumpKey&) const = default;
};
// Inverse of dump_rel_path; nullopt when `rel` is not of that form.
std::optional<DumpKey> parse_dump_rel_path(std::string_view rel);

// ---- scanning ----------------------------------------------------------------------------

enum class StageScope { PerLayer, WholeModel };
// Returns a stage's scope, or nullopt when the name is unknown. The engine builds one from
// engine/stages.h; formats cannot include it.
using StageLookup = std::function<std::optional<StageScope>(std::string_view)>;
StageLookup make_stage_lookup(std::vector<std::pair<std::string, StageScope>> stages);

struct DumpScanOptions {
  StageLookup known_stages;  // empty: every well-formed name is accepted
  bool read_manifest = true;
};

struct DumpCell {
  std::string stage;
  std::optional<uint32_t> layer;  // nullopt: whole-model stage
  uint64_t elements = 0;
  std::filesystem::path path;                  // as found on disk
  std::string rel_path;                        // path relative to the dump, '/'-separated
  uint32_t header_layer = 0;                   // as stored in the file
  std::optional<std::vector<uint64_t>> shape;  // from the manifest, when it has one
};

enum class DumpIssueKind {
  StrayFile,         // not a .bin and not the root manifest.json
  BadDirectoryName,  // starts with "layer" but is not canonical layer-<N>
  NestedDirectory,   // a directory the layout has no place for (not entered)
  BadFileName,       // a .bin whose stem is not a stage name
  MalformedFile,     // bad magic, truncated, trailing bytes, unreadable
  LayerMismatch,     // header layer disagrees with the directory
  Misplaced,         // a per-layer stage at the root, or a whole-model stage in layer-<N>/
  Duplicate,         // a second file for a cell already listed
  UnknownStage,      // not in known_stages
  Manifest,          // manifest.json unreadable or malformed
  ShapeMismatch,     // manifest shape product ≠ file element count
  MissingFile,       // listed in the manifest, absent on disk
};
enum class IssueSeverity { Note, Warning, Error };
std::string_view dump_issue_kind_name(DumpIssueKind k);

struct DumpIssue {
  DumpIssueKind kind;
  IssueSeverity severity;
  std::string rel_path;  // '/'-separated, relative to the dump
  std::string message;   // complete sentence naming the path and what was expected
  bool listed;           // whether the file still appears in cells
};

struct DumpScan {
  std::filesystem::path dir;
  std::vector<DumpCell> cells;    // sorted: layers ascending, then whole-model; by stage name
  std::vector<DumpIssue> issues;  // in the order found (directory entries sorted by name)
  std::optional<Manifest> manifest;

  const DumpCell* find(std::string_view stage, std::optional<uint32_t> layer) const;
  // Layers present, ascending.
  std::vector<uint32_t> layers() const;
  bool has_errors() const;
};

// Throws lockstep::Error only when `dir` itself is missing or not a directory; everything
// inside is reported in the result.
DumpScan scan_dump_dir(const std::filesystem::path& dir, const DumpScanOptions& options = {});

// ---- writing -----------------------------------------------------------------------------

// Writes a dump under a temporary sibling (`<dest>.tmp-<pid>-<n>`) and renames it into place
// on commit(); without commit() the destructor removes it, so no half-written dump is left.
//
//   DumpWriter w(dest);
//   w.write("attn_norm", 0, values, {tokens, hidden});
//   w.write("lm_head", std::nullopt, logits, {tokens, vocab});
//   w.set_manifest(m);
//   w.commit();
//
// An existing `dest` is an error (raised by the constructor, before any work) unless
// `overwrite` is set; then it is replaced only after the new dump is complete, and only if
// it looks like a dump (holds nothing but layer-<N>/ directories, .bin files and
// manifest.json, or is empty), so a mistyped path cannot delete unrelated files.
//
// manifest.json is written when set_manifest() was called or any write gave a shape. Its
// "files" are the manifest's own entries plus the shapes given to write() (which win);
// commit() refuses a manifest that lists a file never written or a shape whose product is
// not the written element count.
class DumpWriter {
 public:
  struct Options {
    bool overwrite = false;
  };
  explicit DumpWriter(std::filesystem::path dest) : DumpWriter(std::move(dest), Options{}) {}
  DumpWriter(std::filesystem::path dest, Options options);
  ~DumpWriter() = default;
  DumpWriter(const DumpWriter&) = delete;
  DumpWriter& operator=(const DumpWriter&) = delete;

  // `shape` empty: no shape is recorded; otherwise its product must equal values.size().
  // Throws on a bad stage name, layer 0xFFFFFFFF, a cell written twice, or after commit().
  void write(std::string_view stage, std::optional<uint32_t> layer, std::span<const float> values,
             std::span<const uint64_t> shape = {});
  void write(std::string_view stage, std::optional<uint32_t> layer, std::span<const float> values,
             std::initializer_list<uint64_t> shape) {
    write(stage, layer, values, std::span<const uint64_t>(shape.begin(), shape.size()));
  }
  void set_manifest(Manifest m);
  void commit();

  const std::filesystem::path& dest() const { return dir_.dest(); }
  const std::filesystem::path& temp_dir() const { return dir_.path(); }

 private:
  AtomicDir dir_;
  std::optional<Manifest> manifest_;
  std::map<std::string, std::vector<uint64_t>, std::less<>> shapes_;
  std::map<std::string, uint64_t, std::less<>> written_;  // rel path → element count
  bool committed_ = false;
};

// Whether `dir` holds nothing but what a dump holds; the reason when it does not.
std::string why_not_a_dump(const std::filesystem::path& dir);

}  // namespace lockstep::formats
