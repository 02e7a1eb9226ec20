#include "engine/dump_export.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "engine/family.h"
#include "engine/trace_io.h"
#include "formats/aprt.h"
#include "formats/atomic_dir.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "formats/npy.h"
#include "formats/sha256.h"

namespace lockstep::engine {
namespace fs = std::filesystem;
namespace {

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// The cell a dump-relative path names, when its stage is one of ours.
std::optional<Cell> cell_of(std::string_view rel_path) {
  std::optional<formats::DumpKey> key = formats::parse_dump_rel_path(rel_path);
  if (!key) return std::nullopt;
  std::optional<Stage> stage = find_stage(key->stage);
  if (!stage) return std::nullopt;
  return Cell{*stage, stage_info(*stage).per_layer ? key->layer : std::nullopt};
}

std::string row_name(std::string_view rel_path) {
  if (std::optional<Cell> c = cell_of(rel_path)) return cell_name(*c);
  if (std::optional<formats::DumpKey> key = formats::parse_dump_rel_path(rel_path))
    return key->layer ? key->stage + "@" + std::to_string(*key->layer) : key->stage;
  return std::string(rel_path);
}

formats::DumpScan scan(const fs::path& dir) {
  formats::DumpScanOptions options;
  options.known_stages = stage_lookup();
  formats::DumpScan s = formats::scan_dump_dir(dir, options);
  const bool malformed = std::any_of(
      s.issues.begin(), s.issues.end(),
      [](const formats::DumpIssue& i) { return i.kind == formats::DumpIssueKind::MalformedFile; });
  if (s.cells.empty() && !malformed && !s.manifest)
    throw Error(dir.string() +
                ": holds no APRT dump file (expected layer-<N>/<stage>.bin or <stage>.bin, "
                "as `lockstep dump` or aprender's `apr trace --save-tensor` write them)");
  return s;
}

DumpListing list_one(const formats::DumpScan& s) {
  DumpListing l;
  l.dir = s.dir.string();
  if (s.manifest) {
    l.has_manifest = true;
    l.lane = s.manifest->lane;
    l.model = s.manifest->model_path;
    if (!s.manifest->token_ids.empty()) l.tokens = s.manifest->token_ids.size();
  }
  for (const formats::DumpCell& c : s.cells) {
    DumpListingRow r;
    r.name = row_name(c.rel_path);
    r.rel_path = c.rel_path;
    r.shape = c.shape ? shape_text(*c.shape) : "[" + std::to_string(c.elements) + "] (flat)";
    r.dtype = "f32";
    r.bytes = formats::kAprtHeaderBytes + 4 * c.elements;
    l.rows.push_back(std::move(r));
  }
  for (const formats::DumpIssue& i : s.issues) {
    if (i.kind == formats::DumpIssueKind::MalformedFile) {
      DumpListingRow r;
      r.name = row_name(i.rel_path);
      r.rel_path = i.rel_path;
      std::error_code ec;
      const uintmax_t size = fs::file_size(s.dir / i.rel_path, ec);
      r.bytes = ec ? 0 : size;
      r.status = DumpCellStatus::Malformed;
      r.detail = i.message;
      l.rows.push_back(std::move(r));
    } else if (i.kind == formats::DumpIssueKind::MissingFile) {
      DumpListingRow r;
      r.name = row_name(i.rel_path);
      r.rel_path = i.rel_path;
      r.status = DumpCellStatus::Missing;
      r.detail = i.message;
      l.rows.push_back(std::move(r));
    } else {
      l.notes.push_back(i.message);
    }
  }
  return l;
}

// Plan order for the cells we know, then the other names by path.
void sort_and_count(DumpListing& l) {
  std::stable_sort(l.rows.begin(), l.rows.end(),
                   [](const DumpListingRow& x, const DumpListingRow& y) {
                     const std::optional<Cell> cx = cell_of(x.rel_path), cy = cell_of(y.rel_path);
                     if (cx && cy) return *cx < *cy;
                     if (cx || cy) return cx.has_value();
                     return x.rel_path < y.rel_path;
                   });
  l.ok = l.missing = l.malformed = 0;
  for (const DumpListingRow& r : l.rows)
    (r.status == DumpCellStatus::Ok        ? l.ok
     : r.status == DumpCellStatus::Missing ? l.missing
                                           : l.malformed)++;
}

// Adds a Missing row to `l` for every file `other` has that `l` has no row for.
void add_missing(DumpListing& l, const DumpListing& other) {
  std::set<std::string> have;
  for (const DumpListingRow& r : l.rows) have.insert(r.rel_path);
  for (const DumpListingRow& r : other.rows) {
    if (r.status == DumpCellStatus::Missing || have.count(r.rel_path)) continue;
    DumpListingRow m;
    m.name = r.name;
    m.rel_path = r.rel_path;
    m.status = DumpCellStatus::Missing;
    m.detail = r.rel_path + " is in " + other.dir + " but not in " + l.dir;
    l.rows.push_back(std::move(m));
  }
}

std::string number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::optional<double> local_error(const BisectResult& r, const Cell& c) {
  if (auto it = r.local.find(c); it != r.local.end() && !std::isnan(it->second)) return it->second;
  if (r.localization)
    for (const ReplayVerdict& v : r.localization->replays)
      if (v.cell == c) return v.local;
  for (const ReplayVerdict& v : r.requested)
    if (v.cell == c) return v.local;
  return std::nullopt;
}

void write_text(const fs::path& path, const std::string& text) {
  formats::write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

// What an export directory holds; anything else means `dest` is not one of ours.
std::string why_not_an_export(const fs::path& dir) {
  static const std::set<std::string> kNames = {
      "a", "b", "npy", "comparison.json", "comparison.md", "comparison.csv"};
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (!kNames.count(e.path().filename().string()))
      return dir.string() + " holds " + e.path().filename().string() +
             ", which no export writes; refusing to replace it";
  if (ec) return dir.string() + ": " + ec.message();
  return {};
}

}  // namespace

std::string_view dump_cell_status_name(DumpCellStatus s) {
  switch (s) {
    case DumpCellStatus::Ok:
      return "ok";
    case DumpCellStatus::Missing:
      return "missing";
    case DumpCellStatus::Malformed:
      return "malformed";
  }
  return "?";
}

std::vector<DumpListing> list_dumps(const fs::path& dir_a, const std::optional<fs::path>& dir_b) {
  std::vector<DumpListing> out;
  out.push_back(list_one(scan(dir_a)));
  if (dir_b) {
    out.push_back(list_one(scan(*dir_b)));
    const DumpListing a = out[0];
    add_missing(out[0], out[1]);
    add_missing(out[1], a);
  }
  for (DumpListing& l : out) sort_and_count(l);
  return out;
}

nlohmann::json manifest_config(const ModelConfig& c) {
  nlohmann::json j = {
      {"format", c.format == FileFormat::Gguf ? "gguf" : "safetensors"},
      {"family", c.family},
      {"architecture", c.architecture},
      {"hidden", c.hidden},
      {"layers", c.layers},
      {"heads", c.heads},
      {"kv_heads", c.kv_heads},
      {"head_dim", c.head_dim},
      {"ffn", c.ffn},
      {"vocab", c.vocab},
      {"context", c.context},
      {"norm", norm_kind_name(c.norm)},
      {"norm_eps", c.norm_eps},
      {"activation", activation_name(c.activation)},
      {"qkv_bias", c.qkv_bias},
      {"attn_output_bias", c.attn_output_bias},
      {"ffn_bias", c.ffn_bias},
      {"qk_norm", c.qk_norm},
      {"tied_embeddings", c.tied_embeddings},
      {"rope_layout", rope_layout_name(c.rope_layout)},
      {"rope_base", c.rope_base},
      {"rope_dims", c.rope_dims},
      {"rope_freq_factors", c.rope_freq_factors},
      {"embedding_multiplier", c.embedding_multiplier},
      {"residual_multiplier", c.residual_multiplier},
      {"logits_scaling", c.logits_scaling},
      {"attention_scale", c.attention_scale()},
  };
  if (c.rope_scaling) {
    const RopeScalingConfig& s = *c.rope_scaling;
    j["rope_scaling"] = {{"type", s.type}, {"factor", s.factor}};
    if (s.original_context) j["rope_scaling"]["original_context"] = *s.original_context;
    if (s.low_freq_factor) j["rope_scaling"]["low_freq_factor"] = *s.low_freq_factor;
    if (s.high_freq_factor) j["rope_scaling"]["high_freq_factor"] = *s.high_freq_factor;
  }
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  if (c.attention_multiplier) j["attention_multiplier"] = *c.attention_multiplier;
  return j;
}

formats::Manifest run_manifest(const std::string& lane, const Model& model,
                               const fs::path& model_path, std::span<const int32_t> tokens,
                               const std::string& tool_version) {
  formats::Manifest m;
  m.tool_name = "lockstep";
  m.tool_version = tool_version;
  m.lane = lane;
  m.model_path = fs::absolute(model_path).lexically_normal().string();
  if (model.gguf) m.model_sha256 = formats::sha256_hex(formats::MappedFile(model_path).bytes());
  m.family = model.family.name;
  m.config = manifest_config(model.config);
  m.token_ids.assign(tokens.begin(), tokens.end());
  return m;
}

std::string comparison_csv(const BisectResult& r, std::span<const Cell> cells) {
  std::string out =
      "cell,layer,stage,shape,relative_rms,cosine,max_abs_diff,sqnr_db,floor,threshold,diverges,"
      "local\n";
  for (const CellDivergence& d : r.scan.cells) {
    if (!cells.empty() && std::find(cells.begin(), cells.end(), d.cell) == cells.end()) continue;
    const CellComparison* c = r.comparison.find(d.cell);
    std::string shape;
    if (c)
      for (size_t i = 0; i < c->shape_a.size(); ++i)
        shape += (i ? "x" : "") + std::to_string(c->shape_a[i]);
    const std::optional<double> local = local_error(r, d.cell);
    out += cell_name(d.cell) + "," + (d.cell.layer ? std::to_string(*d.cell.layer) : "") + "," +
           std::string(stage_name(d.cell.stage)) + "," + shape + "," + number(d.rel_rms) + "," +
           (c ? number(c->cosine) : "") + "," + (c ? number(c->max_abs_diff) : "") + "," +
           (c ? number(c->sqnr_db) : "") + "," + number(d.floor) + "," + number(d.threshold) + "," +
           (d.diverges ? "1" : "0") + "," + (local ? number(*local) : "") + "\n";
  }
  return out;
}

ExportOutcome export_run(const ExportSource& source, const ExportSpec& spec,
                         const ExportProgressFn& progress, const std::atomic<bool>* cancel) {
  if (!source.a || !source.b) throw Error("export: there are no traces to export: run first");
  const ExportFormats& f = spec.formats;
  if (!f.aprt && !f.npy && !f.json && !f.markdown && !f.csv)
    throw Error(
        "export: no format is selected: tick at least one of APRT, NPY, JSON, Markdown, "
        "CSV");
  if ((f.json || f.markdown || f.csv) && !source.result)
    throw Error("export: there is no comparison to export: run a bisection first");
  if (spec.dest.empty()) throw Error("export: the destination directory is empty: type a path");
  std::error_code ec;
  if (fs::exists(spec.dest, ec)) {
    if (!spec.overwrite)
      throw Error("export: " + spec.dest.string() +
                  " already exists; choose a new directory or tick \"overwrite\"");
    if (!fs::is_directory(spec.dest, ec))
      throw Error("export: " + spec.dest.string() + " is a file, not an export directory");
    if (std::string why = why_not_an_export(spec.dest); !why.empty()) throw Error("export: " + why);
  }

  // The cells: the selection (each must be in a trace), else the union of both traces.
  std::set<Cell> cells;
  for (const Cell& c : spec.cells) {
    if (!source.a->find(c) && !source.b->find(c))
      throw Error("export: neither trace holds " + cell_name(c));
    cells.insert(c);
  }
  if (spec.cells.empty()) {
    for (const auto& [c, t] : source.a->cells()) cells.insert(c);
    for (const auto& [c, t] : source.b->cells()) cells.insert(c);
  }
  if (cells.empty()) throw Error("export: no cell is selected");

  formats::AtomicDir dir(spec.dest, spec.overwrite);
  ExportOutcome out;
  out.dest = spec.dest;
  std::vector<fs::path> rel;  // written, relative to dest
  const size_t steps = 2 * cells.size() * (size_t(f.aprt) + size_t(f.npy)) + 3;
  size_t done = 0;
  auto step = [&](const std::string& message) {
    if (progress) progress(double(done) / double(steps), message);
    ++done;
    return cancel && cancel->load();
  };

  const std::pair<const char*, const Trace*> lanes[] = {{"a", source.a}, {"b", source.b}};
  if (f.aprt) {
    for (const auto& [sub, trace] : lanes) {
      formats::DumpWriter writer(dir.path() / sub);
      for (const Cell& c : cells) {
        if (step("writing APRT " + std::string(sub) + "/" + cell_name(c))) {
          out.cancelled = true;
          return out;
        }
        const Tensor* t = trace->find(c);
        if (!t) continue;
        writer.write(stage_name(c.stage), c.layer, t->data, t->shape);
        rel.push_back(fs::path(sub) / formats::dump_rel_path(stage_name(c.stage), c.layer));
      }
      if (source.model) {
        writer.set_manifest(run_manifest(trace->lane, *source.model, source.model_path,
                                         trace->tokens, source.context.tool_version));
      } else {
        formats::Manifest m;
        m.tool_name = "lockstep";
        m.tool_version = source.context.tool_version;
        m.lane = trace->lane;
        m.token_ids = trace->tokens;
        writer.set_manifest(std::move(m));
      }
      writer.commit();
      rel.push_back(fs::path(sub) / formats::kManifestFileName);
    }
  }
  if (f.npy) {
    for (const auto& [sub, trace] : lanes) {
      for (const Cell& c : cells) {
        if (step("writing NPY " + std::string(sub) + "/" + cell_name(c))) {
          out.cancelled = true;
          return out;
        }
        const Tensor* t = trace->find(c);
        if (!t) continue;
        fs::path r = fs::path("npy") / sub / formats::dump_rel_path(stage_name(c.stage), c.layer);
        r.replace_extension(".npy");
        fs::create_directories((dir.path() / r).parent_path());
        formats::write_npy(dir.path() / r, t->data, t->shape);
        rel.push_back(r);
      }
    }
  }
  if (source.result) {
    if (step("writing the comparison")) {
      out.cancelled = true;
      return out;
    }
    if (f.json) {
      write_text(dir.path() / "comparison.json", to_json(*source.result, source.context).dump(2));
      rel.push_back("comparison.json");
    }
    if (f.markdown) {
      write_text(dir.path() / "comparison.md", to_markdown(*source.result, source.context));
      rel.push_back("comparison.md");
    }
    if (f.csv) {
      const std::vector<Cell> selected(
          spec.cells.empty() ? std::vector<Cell>() : std::vector<Cell>(cells.begin(), cells.end()));
      write_text(dir.path() / "comparison.csv", comparison_csv(*source.result, selected));
      rel.push_back("comparison.csv");
    }
  }
  if (cancel && cancel->load()) {
    out.cancelled = true;
    return out;
  }
  dir.commit([](const fs::path& d) { return why_not_an_export(d); });
  for (const fs::path& r : rel) out.files.push_back(spec.dest / r);
  if (progress) progress(1.0, "exported to " + spec.dest.string());
  return out;
}

}  // namespace lockstep::engine
