#include "formats/dump_dir.h"

#include <algorithm>
#include <memory>
#include <set>
#include <unordered_map>

#include "formats/aprt.h"
#include "formats/error.h"
#include "formats/shape.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kLayerPrefix = "layer-";
constexpr std::string_view kBinSuffix = ".bin";

// Files other tools leave beside their dumps; harmless, so only noted.
constexpr std::string_view kKnownSidecars[] = {
    "_PROVENANCE.txt",  // aprender's HF reference-stage script
    "llamacpp.json",    // Lockstep's llama.cpp reference outputs
    "greedy.txt",
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string shape_text(std::span<const uint64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string layer_text(uint32_t layer) {
  return layer == kAprtWholeModelLayer ? std::string("0xFFFFFFFF (whole-model)")
                                       : std::to_string(layer);
}

// Directory entries sorted by name, so scans report in a stable order.
std::vector<fs::directory_entry> sorted_entries(const fs::path& dir, std::error_code& ec) {
  std::vector<fs::directory_entry> out;
  fs::directory_iterator it(dir, ec);
  if (ec) return out;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) return out;
    out.push_back(*it);
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  return out;
}

struct Candidate {
  DumpCell cell;
  bool from_root;
};

class Scanner {
 public:
  Scanner(const fs::path& dir, const DumpScanOptions& options) : dir_(dir), options_(options) {}

  DumpScan run() {
    DumpScan scan;
    scan.dir = dir_;
    std::error_code ec;
    auto status = fs::status(dir_, ec);
    if (!fs::exists(status))
      throw Error(dir_.string(), Error::kNoOffset, "a dump directory", "no such directory");
    if (!fs::is_directory(status))
      throw Error(dir_.string(), Error::kNoOffset, "a dump directory", "a file");
    auto entries = sorted_entries(dir_, ec);
    if (ec) throw Error(dir_.string() + ": cannot list: " + ec.message());

    if (options_.read_manifest) read_manifest_file(scan);
    for (const auto& e : entries) visit_root_entry(e);
    resolve(scan);
    apply_manifest(scan);
    scan.issues = std::move(issues_);
    return scan;
  }

 private:
  void issue(DumpIssueKind kind, IssueSeverity sev, std::string rel, std::string msg, bool listed) {
    issues_.push_back({kind, sev, std::move(rel), std::move(msg), listed});
  }

  void read_manifest_file(DumpScan& scan) {
    fs::path p = dir_ / kManifestFileName;
    std::error_code ec;
    auto st = fs::status(p, ec);
    if (!fs::exists(st) || fs::is_directory(st)) return;
    try {
      MappedFile f(p.string());
      auto b = f.bytes();
      scan.manifest = parse_manifest(
          std::string_view(reinterpret_cast<const char*>(b.data()), b.size()), p.string());
    } catch (const Error& e) {
      issue(DumpIssueKind::Manifest, IssueSeverity::Error, std::string(kManifestFileName),
            std::string(e.what()) + " (shapes from the manifest are not used)", false);
    }
    manifest_ = scan.manifest ? &*scan.manifest : nullptr;
  }

  void visit_root_entry(const fs::directory_entry& e) {
    std::string name = e.path().filename().string();
    std::error_code ec;
    if (e.is_directory(ec)) {
      if (auto layer = parse_layer_dir_name(name)) {
        scan_layer_dir(e.path(), *layer);
      } else if (name.rfind("layer", 0) == 0) {
        issue(DumpIssueKind::BadDirectoryName, IssueSeverity::Error, name + "/",
              name +
                  "/: expected a layer directory named layer-<N> (N in decimal without "
                  "sign or leading zeros, below 4294967295); its files are not read",
              false);
      } else {
        issue(DumpIssueKind::NestedDirectory, IssueSeverity::Warning, name + "/",
              name + "/: a directory the dump layout has no place for; not scanned" +
                  (looks_like_dump(e.path()) ? " (it holds a dump of its own, as aprender's "
                                               "parity gate writes to <dir>/cpu/: open it "
                                               "separately)"
                                             : ""),
              false);
      }
      return;
    }
    if (!e.is_regular_file(ec)) {
      issue(DumpIssueKind::StrayFile, IssueSeverity::Warning, name,
            name + ": not a regular file or directory; ignored", false);
      return;
    }
    if (name == kManifestFileName) return;
    if (!ends_with(name, kBinSuffix)) {
      stray(name);
      return;
    }
    visit_bin(e.path(), name, std::nullopt);
  }

  void stray(const std::string& rel) {
    std::string base = fs::path(rel).filename().string();
    bool sidecar = std::find(std::begin(kKnownSidecars), std::end(kKnownSidecars), base) !=
                   std::end(kKnownSidecars);
    issue(DumpIssueKind::StrayFile, sidecar ? IssueSeverity::Note : IssueSeverity::Warning, rel,
          rel + ": not an APRT .bin file" +
              (sidecar ? std::string(" (a known sidecar file); ignored") : "; ignored"),
          false);
  }

  static bool looks_like_dump(const fs::path& dir) {
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
         it.increment(ec)) {
      std::string n = it->path().filename().string();
      if (ends_with(n, kBinSuffix) || parse_layer_dir_name(n)) return true;
    }
    return false;
  }

  void scan_layer_dir(const fs::path& path, uint32_t layer) {
    std::string dir_name = layer_dir_name(layer);
    std::error_code ec;
    auto entries = sorted_entries(path, ec);
    if (ec) {
      issue(DumpIssueKind::MalformedFile, IssueSeverity::Error, dir_name + "/",
            dir_name + "/: cannot list: " + ec.message(), false);
      return;
    }
    for (const auto& e : entries) {
      std::string name = e.path().filename().string();
      std::string rel = dir_name + "/" + name;
      if (e.is_directory(ec)) {
        issue(DumpIssueKind::NestedDirectory, IssueSeverity::Warning, rel + "/",
              rel + "/: a directory inside a layer directory; not scanned", false);
      } else if (!e.is_regular_file(ec)) {
        issue(DumpIssueKind::StrayFile, IssueSeverity::Warning, rel,
              rel + ": not a regular file; ignored", false);
      } else if (!ends_with(name, kBinSuffix)) {
        stray(rel);
      } else {
        visit_bin(e.path(), rel, layer);
      }
    }
  }

  void visit_bin(const fs::path& path, const std::string& rel, std::optional<uint32_t> dir_layer) {
    seen_bins_.insert(rel);
    std::string file = path.filename().string();
    std::string stem = file.substr(0, file.size() - kBinSuffix.size());
    if (!is_valid_stage_name(stem)) {
      issue(DumpIssueKind::BadFileName, IssueSeverity::Error, rel,
            rel + ": expected <stage>.bin with a stage name of 1.." +
                std::to_string(kMaxStageNameLength) +
                " characters from [A-Za-z0-9_.-], not starting with '.'; not read",
            false);
      return;
    }
    AprtHeader h;
    try {
      h = read_aprt_header(path);
    } catch (const Error& e) {
      issue(DumpIssueKind::MalformedFile, IssueSeverity::Error, rel,
            rel + ": not a valid APRT file: " + e.what(), false);
      return;
    }
    std::optional<StageScope> scope;
    if (options_.known_stages) scope = options_.known_stages(stem);
    bool known = !options_.known_stages || scope.has_value();

    DumpCell cell{stem, std::nullopt, h.count, path, rel, h.layer, std::nullopt};
    if (dir_layer) {
      std::string dir_name = layer_dir_name(*dir_layer);
      if (scope == StageScope::WholeModel) {
        if (h.layer != *dir_layer && !h.whole_model()) {
          mismatch(rel, h.layer, std::to_string(*dir_layer) + " or 0xFFFFFFFF");
          return;
        }
        issue(DumpIssueKind::Misplaced, IssueSeverity::Warning, rel,
              rel + ": " + stem + " is a whole-model stage, expected at the dump's root as " +
                  stem + ".bin; listed as whole-model",
              true);
      } else {
        if (h.layer != *dir_layer) {
          mismatch(rel, h.layer, std::to_string(*dir_layer) + ", as its directory");
          return;
        }
        cell.layer = *dir_layer;
      }
    } else {
      if (scope == StageScope::PerLayer) {
        issue(DumpIssueKind::Misplaced, IssueSeverity::Error, rel,
              rel + ": " + stem +
                  " is a per-layer stage, expected under layer-<N>/ (header "
                  "layer " +
                  layer_text(h.layer) + "); not listed",
              false);
        return;
      }
      if (h.layer == 0) {
        issue(DumpIssueKind::LayerMismatch, IssueSeverity::Warning, rel,
              rel +
                  ": header layer 0 at the dump's root, expected 0xFFFFFFFF for a "
                  "whole-model stage; listed as whole-model",
              true);
      } else if (!h.whole_model()) {
        mismatch(rel, h.layer, "0xFFFFFFFF (a whole-model stage at the dump's root)");
        return;
      }
    }
    if (!known)
      issue(DumpIssueKind::UnknownStage, IssueSeverity::Warning, rel,
            rel + ": \"" + stem + "\" is not a known stage name; listed as found", true);
    candidates_.push_back({std::move(cell), !dir_layer.has_value()});
  }

  void mismatch(const std::string& rel, uint32_t header_layer, const std::string& expected) {
    issue(DumpIssueKind::LayerMismatch, IssueSeverity::Error, rel,
          rel + ": at offset 4: expected header layer " + expected + ", found " +
              layer_text(header_layer) + "; not listed",
          false);
  }

  void resolve(DumpScan& scan) {
    // Root files win over whole-model stages found inside layer directories.
    std::stable_sort(
        candidates_.begin(), candidates_.end(),
        [](const Candidate& a, const Candidate& b) { return a.from_root && !b.from_root; });
    std::map<std::pair<std::string, int64_t>, std::string> taken;
    for (auto& c : candidates_) {
      int64_t key = c.cell.layer ? int64_t{*c.cell.layer} : -1;
      auto [it, inserted] = taken.emplace(std::make_pair(c.cell.stage, key), c.cell.rel_path);
      if (!inserted) {
        issue(DumpIssueKind::Duplicate, IssueSeverity::Error, c.cell.rel_path,
              c.cell.rel_path + ": a second file for cell " + c.cell.stage +
                  (c.cell.layer ? " layer " + std::to_string(*c.cell.layer) : " (whole-model)") +
                  ", already listed from " + it->second + "; not listed",
              false);
        // The earlier Misplaced note claimed it was listed; it no longer is.
        for (auto& i : issues_)
          if (i.rel_path == c.cell.rel_path) i.listed = false;
        continue;
      }
      scan.cells.push_back(std::move(c.cell));
    }
    std::sort(scan.cells.begin(), scan.cells.end(), [](const DumpCell& a, const DumpCell& b) {
      if (a.layer.has_value() != b.layer.has_value()) return a.layer.has_value();
      if (a.layer != b.layer) return *a.layer < *b.layer;
      return a.stage < b.stage;
    });
  }

  void apply_manifest(DumpScan& scan) {
    if (!manifest_) return;
    std::string mname = (dir_ / kManifestFileName).string();
    for (auto& cell : scan.cells) {
      const auto* shape = manifest_->shape_of(cell.rel_path);
      if (shape == nullptr) continue;
      auto n = shape_product(*shape);
      if (!n || *n != cell.elements) {
        issue(DumpIssueKind::ShapeMismatch, IssueSeverity::Error, cell.rel_path,
              mname + ": key \"files\".\"" + cell.rel_path + "\": expected shape " +
                  shape_text(*shape) + " to hold the file's " + std::to_string(cell.elements) +
                  " elements; the cell is listed without a shape",
              true);
        continue;
      }
      cell.shape = *shape;
    }
    for (const auto& [rel, shape] : manifest_->files) {
      if (seen_bins_.count(rel) != 0) continue;
      issue(DumpIssueKind::MissingFile, IssueSeverity::Note, rel,
            mname + ": key \"files\".\"" + rel + "\" names a file the dump does not hold", false);
    }
  }

  fs::path dir_;
  const DumpScanOptions& options_;
  const Manifest* manifest_ = nullptr;
  std::vector<Candidate> candidates_;
  std::vector<DumpIssue> issues_;
  std::set<std::string, std::less<>> seen_bins_;
};

}  // namespace

std::optional<uint32_t> parse_layer_dir_name(std::string_view name) {
  if (name.substr(0, kLayerPrefix.size()) != kLayerPrefix) return std::nullopt;
  std::string_view digits = name.substr(kLayerPrefix.size());
  if (digits.empty() || digits.size() > 10) return std::nullopt;
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  uint64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v >= kAprtWholeModelLayer) return std::nullopt;
  return static_cast<uint32_t>(v);
}

std::string layer_dir_name(uint32_t layer) {
  return std::string(kLayerPrefix) + std::to_string(layer);
}

bool is_valid_stage_name(std::string_view stage) {
  if (stage.empty() || stage.size() > kMaxStageNameLength || stage[0] == '.') return false;
  for (char c : stage) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string dump_rel_path(std::string_view stage, std::optional<uint32_t> layer) {
  std::string file = std::string(stage) + std::string(kBinSuffix);
  return layer ? layer_dir_name(*layer) + "/" + file : file;
}

std::optional<DumpKey> parse_dump_rel_path(std::string_view rel) {
  std::optional<uint32_t> layer;
  std::string_view file = rel;
  if (auto slash = rel.find('/'); slash != std::string_view::npos) {
    layer = parse_layer_dir_name(rel.substr(0, slash));
    if (!layer) return std::nullopt;
    file = rel.substr(slash + 1);
  }
  if (!ends_with(file, kBinSuffix)) return std::nullopt;
  std::string_view stem = file.substr(0, file.size() - kBinSuffix.size());
  if (!is_valid_stage_name(stem)) return std::nullopt;  // also rejects a second '/'
  return DumpKey{std::string(stem), layer};
}

StageLookup make_stage_lookup(std::vector<std::pair<std::string, StageScope>> stages) {
  auto table = std::make_shared<std::unordered_map<std::string, StageScope>>();
  for (auto& [name, scope] : stages) table->emplace(std::move(name), scope);
  return [table](std::string_view name) -> std::optional<StageScope> {
    auto it = table->find(std::string(name));
    if (it == table->end()) return std::nullopt;
    return it->second;
  };
}

std::string_view dump_issue_kind_name(DumpIssueKind k) {
  switch (k) {
    case DumpIssueKind::StrayFile:
      return "stray file";
    case DumpIssueKind::BadDirectoryName:
      return "bad directory name";
    case DumpIssueKind::NestedDirectory:
      return "nested directory";
    case DumpIssueKind::BadFileName:
      return "bad file name";
    case DumpIssueKind::MalformedFile:
      return "malformed file";
    case DumpIssueKind::LayerMismatch:
      return "layer mismatch";
    case DumpIssueKind::Misplaced:
      return "misplaced stage";
    case DumpIssueKind::Duplicate:
      return "duplicate cell";
    case DumpIssueKind::UnknownStage:
      return "unknown stage";
    case DumpIssueKind::Manifest:
      return "manifest";
    case DumpIssueKind::ShapeMismatch:
      return "shape mismatch";
    case DumpIssueKind::MissingFile:
      return "missing file";
  }
  return "issue";
}

const DumpCell* DumpScan::find(std::string_view stage, std::optional<uint32_t> layer) const {
  for (const auto& c : cells)
    if (c.stage == stage && c.layer == layer) return &c;
  return nullptr;
}

std::vector<uint32_t> DumpScan::layers() const {
  std::vector<uint32_t> out;
  for (const auto& c : cells)
    if (c.layer && (out.empty() || out.back() != *c.layer)) out.push_back(*c.layer);
  return out;
}

bool DumpScan::has_errors() const {
  return std::any_of(issues.begin(), issues.end(),
                     [](const DumpIssue& i) { return i.severity == IssueSeverity::Error; });
}

DumpScan scan_dump_dir(const fs::path& dir, const DumpScanOptions& options) {
  return Scanner(dir, options).run();
}

std::string why_not_a_dump(const fs::path& dir) {
  std::error_code ec;
  auto entries = sorted_entries(dir, ec);
  if (ec) return "it cannot be listed: " + ec.message();
  for (const auto& e : entries) {
    std::string name = e.path().filename().string();
    if (e.is_directory(ec) && parse_layer_dir_name(name)) {
      auto inner = sorted_entries(e.path(), ec);
      if (ec) return name + "/ cannot be listed: " + ec.message();
      for (const auto& f : inner) {
        std::string n = f.path().filename().string();
        if (!f.is_regular_file(ec) || !ends_with(n, kBinSuffix))
          return "it holds " + name + "/" + n + ", which a dump does not";
      }
      continue;
    }
    if (e.is_regular_file(ec) && (name == kManifestFileName || ends_with(name, kBinSuffix)))
      continue;
    return "it holds " + name + ", which a dump does not";
  }
  return {};
}

DumpWriter::DumpWriter(fs::path dest, Options options) : dir_(std::move(dest), options.overwrite) {}

void DumpWriter::write(std::string_view stage, std::optional<uint32_t> layer,
                       std::span<const float> values, std::span<const uint64_t> shape) {
  const std::string where = dest().string();
  if (committed_) throw Error(where + ": dump already committed");
  if (!is_valid_stage_name(stage))
    throw Error(where, Error::kNoOffset,
                "a stage name of 1.." + std::to_string(kMaxStageNameLength) +
                    " characters from [A-Za-z0-9_.-], not starting with '.'",
                "\"" + std::string(stage) + "\"");
  if (layer == kAprtWholeModelLayer)
    throw Error(where, Error::kNoOffset, "a layer below 4294967295 (nullopt for whole-model)",
                "4294967295");
  std::string rel = dump_rel_path(stage, layer);
  if (written_.count(rel) != 0)
    throw Error(where, Error::kNoOffset, "each cell written once", rel + " written twice");
  if (!shape.empty()) {
    auto n = shape_product(shape);
    if (shape.size() > kManifestMaxRank || !n || *n != values.size())
      throw Error(where, Error::kNoOffset,
                  rel + ": a shape of rank <= " + std::to_string(kManifestMaxRank) +
                      " whose product is the value count " + std::to_string(values.size()),
                  shape_text(shape));
  }
  fs::path file = temp_dir() / rel;
  if (layer) {
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    if (ec) throw Error(file.parent_path().string() + ": cannot create: " + ec.message());
  }
  write_aprt(file, layer.value_or(kAprtWholeModelLayer), values);
  written_.emplace(rel, values.size());
  if (!shape.empty()) shapes_[rel].assign(shape.begin(), shape.end());
}

void DumpWriter::set_manifest(Manifest m) {
  manifest_ = std::move(m);
}

void DumpWriter::commit() {
  const std::string where = dest().string();
  if (committed_) throw Error(where + ": dump already committed");
  if (manifest_ || !shapes_.empty()) {
    Manifest m = manifest_.value_or(Manifest{});
    m.format_version = kManifestFormatVersion;
    for (const auto& [rel, shape] : shapes_) m.files[rel] = shape;
    for (const auto& [rel, shape] : m.files) {
      auto w = written_.find(rel);
      if (w == written_.end())
        throw Error(where + "/manifest.json", Error::kNoOffset,
                    "key \"files\".\"" + rel + "\" to name a file of the dump", "not written");
      auto n = shape_product(shape);
      if (!n || *n != w->second)
        throw Error(where + "/manifest.json", Error::kNoOffset,
                    "key \"files\".\"" + rel + "\": shape " + shape_text(shape) +
                        " to hold the written " + std::to_string(w->second) + " elements",
                    n ? std::to_string(*n) + " elements" : "an overflowing shape");
    }
    write_manifest(temp_dir() / kManifestFileName, m);
  }
  dir_.commit([](const fs::path& old) { return why_not_a_dump(old); });
  committed_ = true;
}

}  // namespace lockstep::formats
