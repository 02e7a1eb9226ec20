#include "engine/inspect.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "engine/stages.h"
#include "formats/aprt.h"
#include "formats/dump_dir.h"
#include "formats/error.h"
#include "formats/ggml_codec.h"
#include "formats/gguf.h"
#include "formats/hf_config.h"
#include "formats/npy.h"
#include "formats/safetensors.h"

namespace lockstep::engine {
namespace {

namespace fs = std::filesystem;
using formats::GgufFile;
using formats::GgufValue;
using nlohmann::json;

std::string read_magic(const fs::path& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  std::string m(n, '\0');
  in.read(m.data(), static_cast<std::streamsize>(n));
  m.resize(static_cast<size_t>(in.gcount()));
  return m;
}

// GGUF metadata values as JSON; long arrays are summarised, not copied.
json value_json(const GgufValue& v, size_t max_items) {
  if (const auto* a = v.as_array()) {
    json items = json::array();
    for (size_t i = 0; i < std::min(max_items, a->items.size()); ++i)
      items.push_back(value_json(a->items[i], max_items));
    return {{"type", "array"},
            {"element_type", formats::gguf_type_name(a->elem_type)},
            {"length", a->items.size()},
            {"first", items}};
  }
  if (const auto* s = v.as_string()) return *s;
  if (const auto* b = v.as_bool()) return *b;
  if (v.is_float()) {
    double d = *v.as_f64();
    return std::isfinite(d) ? json(d) : json(std::to_string(d));
  }
  if (auto i = v.as_i64()) return *i;
  return *v.as_u64();
}

// The hyperparameters every family shares, named the same whatever the file calls them.
json gguf_hyperparameters(const GgufFile& f, const std::string& arch) {
  json h = json::object();
  auto put_u = [&](const char* name, const std::string& key) {
    if (auto v = f.get_u64(arch + "." + key)) h[name] = *v;
  };
  put_u("hidden", "embedding_length");
  put_u("layers", "block_count");
  put_u("heads", "attention.head_count");
  put_u("kv_heads", "attention.head_count_kv");
  if (!h.contains("kv_heads") && h.contains("heads")) h["kv_heads"] = h["heads"];
  put_u("head_dim", "attention.key_length");
  if (!h.contains("head_dim") && h.contains("hidden") && h.contains("heads") &&
      h["heads"].get<uint64_t>() > 0)
    h["head_dim"] = h["hidden"].get<uint64_t>() / h["heads"].get<uint64_t>();
  put_u("ffn", "feed_forward_length");
  uint64_t vocab = 0;
  if (auto v = f.get_u64(arch + ".vocab_size"))
    vocab = *v;
  else if (const GgufValue* t = f.find("tokenizer.ggml.tokens"); t && t->as_array())
    vocab = t->as_array()->items.size();
  else if (const auto* e = f.find_tensor("token_embd.weight"); e && e->dims.size() >= 2)
    vocab = e->dims[1];
  if (vocab > 0) h["vocab"] = vocab;
  put_u("context", "context_length");
  put_u("rope_dims", "rope.dimension_count");
  if (auto base = f.get_f64(arch + ".rope.freq_base")) {
    h["rope_freq_base"] = *base;
  } else {
    h["rope_freq_base"] = 10000.0;
    h["rope_freq_base_default"] = true;  // key absent: llama.cpp's default applies
  }
  if (auto s = f.get_string(arch + ".rope.scaling.type")) h["rope_scaling"] = *s;
  if (auto s = f.get_f64(arch + ".rope.scaling.factor")) h["rope_scaling_factor"] = *s;
  if (auto e = f.get_f64(arch + ".attention.layer_norm_rms_epsilon")) h["rms_norm_eps"] = *e;
  if (auto e = f.get_f64(arch + ".attention.layer_norm_epsilon")) h["layer_norm_eps"] = *e;
  if (auto e = f.get_u64(arch + ".expert_count")) h["experts"] = *e;
  if (auto e = f.get_u64(arch + ".attention.sliding_window")) h["sliding_window"] = *e;
  return h;
}

json gguf_tokenizer(const GgufFile& f) {
  json t = json::object();
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model) return t;
  t["model"] = *model;
  if (auto pre = f.get_string("tokenizer.ggml.pre")) t["pre"] = *pre;
  const formats::GgufArray* tokens = nullptr;
  if (const GgufValue* v = f.find("tokenizer.ggml.tokens")) tokens = v->as_array();
  t["tokens"] = tokens ? tokens->items.size() : 0;
  if (const GgufValue* v = f.find("tokenizer.ggml.merges"); v && v->as_array())
    t["merges"] = v->as_array()->items.size();
  t["has_scores"] = f.find("tokenizer.ggml.scores") != nullptr;
  for (const char* id : {"bos", "eos", "unknown", "padding", "seperator"}) {
    auto v = f.get_u64(std::string("tokenizer.ggml.") + id + "_token_id");
    if (!v) continue;
    json e = {{"id", *v}};
    if (tokens && *v < tokens->items.size())
      if (const auto* s = tokens->items[*v].as_string()) e["text"] = *s;
    t[id == std::string("unknown") ? "unk" : id == std::string("seperator") ? "sep" : id] = e;
  }
  for (const char* flag : {"add_bos_token", "add_eos_token", "add_space_prefix"})
    if (const GgufValue* v = f.find(std::string("tokenizer.ggml.") + flag); v && v->as_bool())
      t[flag] = *v->as_bool();
  if (auto tmpl = f.get_string("tokenizer.chat_template")) t["chat_template_chars"] = tmpl->size();
  return t;
}

json numpy_shape(const std::vector<uint64_t>& ggml_dims) {
  json s = json::array();
  for (auto it = ggml_dims.rbegin(); it != ggml_dims.rend(); ++it) s.push_back(*it);
  return s;
}

json inspect_gguf(const fs::path& path) {
  GgufFile f = GgufFile::open(path.string());
  json r;
  r["kind"] = "gguf";
  r["gguf_version"] = f.version();
  r["alignment"] = f.alignment();
  r["metadata_count"] = f.metadata().size();
  r["data_offset"] = f.data_offset();
  std::string arch = f.get_string("general.architecture").value_or("");
  json model;
  model["architecture"] = arch;
  if (auto n = f.get_string("general.name")) model["name"] = *n;
  if (auto ft = f.get_u64("general.file_type")) model["file_type"] = *ft;
  model["hyperparameters"] = gguf_hyperparameters(f, arch);
  json meta = json::object();
  for (const auto& [k, v] : f.metadata()) {
    if (k.rfind("tokenizer.", 0) == 0) continue;
    meta[k] = value_json(v, 8);
  }
  model["metadata"] = meta;
  r["model"] = model;
  r["tokenizer"] = gguf_tokenizer(f);
  json tensors = json::array();
  std::map<std::string, uint64_t> bytes_by_type;
  uint64_t total = 0;
  for (const auto& t : f.tensors()) {
    std::string type(formats::ggml_type_name(t.type));
    tensors.push_back({{"name", t.name},
                       {"type", type},
                       {"shape", numpy_shape(t.dims)},
                       {"ggml_dims", t.dims},
                       {"elements", t.elements},
                       {"bytes", t.bytes},
                       {"offset", f.data_offset() + t.offset},
                       {"dequantizable", formats::has_codec(t.type)}});
    bytes_by_type[type] += t.bytes;
    total += t.bytes;
  }
  r["tensors"] = tensors;
  r["tensor_bytes"] = total;
  r["bytes_by_type"] = bytes_by_type;
  return r;
}

formats::StageLookup known_stage_lookup() {
  std::vector<std::pair<std::string, formats::StageScope>> names;
  for (const auto& s : kStages)
    names.emplace_back(std::string(s.name), s.per_layer ? formats::StageScope::PerLayer
                                                        : formats::StageScope::WholeModel);
  return formats::make_stage_lookup(std::move(names));
}

json inspect_dump(const fs::path& dir) {
  formats::DumpScanOptions options;
  options.known_stages = known_stage_lookup();
  formats::DumpScan scan = formats::scan_dump_dir(dir, options);
  json r;
  r["kind"] = "dump";
  json cells = json::array();
  for (const auto& c : scan.cells) {
    json cell = {{"stage", c.stage}, {"elements", c.elements}, {"path", c.rel_path}};
    cell["layer"] = c.layer ? json(*c.layer) : json(nullptr);
    cell["shape"] = c.shape ? json(*c.shape) : json(nullptr);
    cells.push_back(cell);
  }
  r["cells"] = cells;
  r["layers"] = scan.layers();
  json issues = json::array();
  for (const auto& i : scan.issues) {
    const char* sev = i.severity == formats::IssueSeverity::Error     ? "error"
                      : i.severity == formats::IssueSeverity::Warning ? "warning"
                                                                      : "note";
    issues.push_back({{"kind", formats::dump_issue_kind_name(i.kind)},
                      {"severity", sev},
                      {"path", i.rel_path},
                      {"message", i.message}});
  }
  r["issues"] = issues;
  if (scan.manifest) {
    const formats::Manifest& m = *scan.manifest;
    r["manifest"] = {{"lane", m.lane},
                     {"model_path", m.model_path},
                     {"model_sha256", m.model_sha256},
                     {"family", m.family},
                     {"tokens", m.token_ids.size()},
                     {"tool", m.tool_name + " " + m.tool_version},
                     {"config", m.config}};
  }
  return r;
}

json inspect_aprt(const fs::path& path) {
  formats::AprtHeader h = formats::read_aprt_header(path);
  json r;
  r["kind"] = "aprt";
  r["layer"] = h.whole_model() ? json(nullptr) : json(h.layer);
  r["elements"] = h.count;
  return r;
}

std::string human_bytes(uint64_t b) {
  char buf[64];
  if (b < 1024)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  else if (b < (1u << 20))
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  else if (b < (1u << 30))
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / 1073741824.0);
  return buf;
}

std::string with_commas(uint64_t v) {
  std::string digits = std::to_string(v), s;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
    s += digits[i];
  }
  return s;
}

// JSON text of a value; strings from model files need not be valid UTF-8, so invalid bytes
// become U+FFFD instead of an exception.
std::string json_text(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string dims_text(const json& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + json_text(dims[i]);
  return s + "]";
}

std::string scalar_text(const json& v) {
  if (v.is_object() && v.value("type", "") == "array") {
    std::string s = v["element_type"].get<std::string>() + "[" + json_text(v["length"]) + "]";
    if (!v["first"].empty()) {
      s += " {";
      for (size_t i = 0; i < v["first"].size() && i < 4; ++i)
        s += (i ? ", " : "") + scalar_text(v["first"][i]);
      if (v["length"].get<uint64_t>() > 4) s += ", ...";
      s += "}";
    }
    return s;
  }
  if (v.is_number_float()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", v.get<double>());
    return buf;
  }
  std::string s = json_text(v);
  return s.size() > 80 ? s.substr(0, 77) + "...\"" : s;
}

void pad_to(std::string& s, size_t width) {
  if (s.size() < width)
    s.append(width - s.size(), ' ');
  else
    s += ' ';
}

void render_hyperparameters(std::string& out, const json& h) {
  static const std::pair<const char*, const char*> kLabels[] = {
      {"hidden", "hidden (dim)"},
      {"layers", "layers"},
      {"heads", "heads"},
      {"kv_heads", "kv heads"},
      {"head_dim", "head dim"},
      {"ffn", "ffn"},
      {"vocab", "vocab"},
      {"context", "context"},
      {"rope_dims", "rope dims"},
      {"rope_freq_base", "rope base"},
      {"rope_scaling", "rope scaling"},
      {"rope_scaling_factor", "rope factor"},
      {"rms_norm_eps", "rms eps"},
      {"layer_norm_eps", "norm eps"},
      {"sliding_window", "sliding window"},
      {"experts", "experts"},
  };
  for (const auto& [key, label] : kLabels) {
    if (!h.contains(key)) continue;
    std::string line = std::string("  ") + label;
    pad_to(line, 18);
    if (h[key].is_number_float()) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", h[key].get<double>());
      line += buf;
    } else {
      line += scalar_text(h[key]);
    }
    if (std::string(key) == "rope_freq_base" && h.value("rope_freq_base_default", false))
      line += " (key absent: default)";
    out += line + "\n";
  }
}

void render_tensor_table(std::string& out, const json& r, const char* shape_key,
                         const char* shape_note);

void render_model(std::string& out, const json& m) {
  out += "architecture      " + m.value("architecture", std::string("?"));
  if (m.contains("name")) out += " (\"" + m["name"].get<std::string>() + "\")";
  out += "\n";
  if (m.contains("hyperparameters")) render_hyperparameters(out, m["hyperparameters"]);
}

void render_gguf(std::string& out, const json& r) {
  const json& m = r["model"];
  render_model(out, m);
  const json& t = r["tokenizer"];
  out += "\ntokenizer         ";
  if (t.empty()) {
    out += "none\n";
  } else {
    std::string model = t["model"];
    out += model + (model == "llama"  ? " (SentencePiece)"
                    : model == "gpt2" ? " (byte-level BPE)"
                                      : "");
    if (t.contains("pre")) out += ", pre-tokenizer " + t["pre"].get<std::string>();
    out += ", " + with_commas(t["tokens"].get<uint64_t>()) + " tokens";
    if (t.contains("merges")) out += ", " + with_commas(t["merges"].get<uint64_t>()) + " merges";
    if (t.value("has_scores", false)) out += ", scores";
    out += "\n";
    std::string ids;
    for (const char* id : {"bos", "eos", "unk", "padding", "sep"}) {
      if (!t.contains(id)) continue;
      ids += std::string(ids.empty() ? "" : ", ") + id + " " + json_text(t[id]["id"]);
      if (t[id].contains("text"))
        ids += " " + json_text(t[id]["text"]);
      else
        ids += " (no such token)";
    }
    if (!ids.empty()) out += "  special         " + ids + "\n";
    if (t.contains("chat_template_chars"))
      out += "  chat template   " + json_text(t["chat_template_chars"]) + " characters\n";
  }
  out += "\nmetadata (tokenizer.* summarised above)\n";
  for (const auto& [k, v] : m["metadata"].items()) {
    std::string line = "  " + k;
    pad_to(line, 44);
    out += line + scalar_text(v) + "\n";
  }
  render_tensor_table(out, r, "ggml_dims", "shapes in ggml order, ne0 first");
}

void render_tensor_table(std::string& out, const json& r, const char* shape_key,
                         const char* shape_note) {
  const json& ts = r["tensors"];
  out += "\ntensors (" + std::to_string(ts.size()) + "; " + shape_note + ")\n";
  size_t name_w = 6;
  for (const auto& t2 : ts) name_w = std::max(name_w, t2["name"].get<std::string>().size());
  std::string head = "  name";
  pad_to(head, name_w + 4);
  head += "type     shape              bytes";
  out += head + "\n";
  for (const auto& t2 : ts) {
    std::string line = "  " + t2["name"].get<std::string>();
    pad_to(line, name_w + 4);
    line += t2["type"].get<std::string>();
    pad_to(line, name_w + 13);
    line += dims_text(t2[shape_key]);
    pad_to(line, name_w + 32);
    line += with_commas(t2["bytes"].get<uint64_t>());
    if (!t2.value("dequantizable", true)) line += "  (no codec)";
    out += line + "\n";
  }
  std::string total = "  total " + human_bytes(r["tensor_bytes"].get<uint64_t>());
  std::string mix;
  for (const auto& [type, bytes] : r["bytes_by_type"].items())
    mix += (mix.empty() ? "" : ", ") + type + " " + human_bytes(bytes.get<uint64_t>());
  out += total + " (" + mix + ")\n";
}

void render_dump(std::string& out, const json& r) {
  if (r.contains("manifest")) {
    const json& m = r["manifest"];
    out += "manifest          lane " + m["lane"].get<std::string>() + ", family " +
           m["family"].get<std::string>() + ", " + json_text(m["tokens"]) + " tokens, written by " +
           m["tool"].get<std::string>() + "\n";
    if (!m["model_path"].get<std::string>().empty())
      out += "  model           " + m["model_path"].get<std::string>() + "\n";
  } else {
    out += "manifest          none (shapes come from a model's config, or tensors are flat)\n";
  }
  const json& cells = r["cells"];
  out += "cells             " + std::to_string(cells.size()) + " in " +
         std::to_string(r["layers"].size()) + " layers\n\n";
  out += "  layer  stage                elements      shape\n";
  for (const auto& c : cells) {
    std::string line = "  " + (c["layer"].is_null() ? std::string("-") : json_text(c["layer"]));
    pad_to(line, 9);
    line += c["stage"].get<std::string>();
    pad_to(line, 30);
    line += with_commas(c["elements"].get<uint64_t>());
    pad_to(line, 44);
    line += c["shape"].is_null() ? std::string("(flat)") : dims_text(c["shape"]);
    out += line + "\n";
  }
  if (!r["issues"].empty()) {
    out += "\nissues (" + std::to_string(r["issues"].size()) + ")\n";
    for (const auto& i : r["issues"])
      out +=
          "  " + i["severity"].get<std::string>() + ": " + i["message"].get<std::string>() + "\n";
  }
}

json hf_hyperparameters(const formats::HfConfig& c) {
  json h = {{"hidden", c.hidden_size},
            {"layers", c.num_hidden_layers},
            {"heads", c.num_attention_heads},
            {"kv_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim_or_default()},
            {"ffn", c.intermediate_size},
            {"vocab", c.vocab_size}};
  if (c.max_position_embeddings) h["context"] = *c.max_position_embeddings;
  if (c.rope_theta) h["rope_freq_base"] = *c.rope_theta;
  if (c.rope_scaling) {
    h["rope_scaling"] = c.rope_scaling->type;
    if (c.rope_scaling->factor) h["rope_scaling_factor"] = *c.rope_scaling->factor;
  }
  if (c.rms_norm_eps) h["rms_norm_eps"] = *c.rms_norm_eps;
  if (auto e = c.layer_norm_eps ? c.layer_norm_eps : c.norm_epsilon) h["layer_norm_eps"] = *e;
  if (c.sliding_window) h["sliding_window"] = *c.sliding_window;
  return h;
}

json inspect_safetensors(const fs::path& path) {
  formats::SafetensorsModel model = formats::SafetensorsModel::open(path);
  json r;
  r["kind"] = "safetensors";
  r["shards"] = model.files().size();
  fs::path dir = fs::is_directory(path) ? path : path.parent_path();
  if (dir.empty()) dir = ".";
  json m = json::object();
  if (fs::exists(dir / "config.json")) {
    formats::HfConfig c = formats::read_hf_config(dir / "config.json");
    m["architecture"] = c.model_type;
    if (!c.architectures.empty()) m["name"] = c.architectures.front();
    m["hyperparameters"] = hf_hyperparameters(c);
    json meta = json::object();
    if (c.hidden_act) meta["hidden_act"] = *c.hidden_act;
    if (c.tie_word_embeddings) meta["tie_word_embeddings"] = *c.tie_word_embeddings;
    if (c.attention_bias) meta["attention_bias"] = *c.attention_bias;
    if (c.torch_dtype) meta["torch_dtype"] = *c.torch_dtype;
    for (auto [key, v] : {std::pair{"embedding_multiplier", c.embedding_multiplier},
                          std::pair{"residual_multiplier", c.residual_multiplier},
                          std::pair{"attention_multiplier", c.attention_multiplier},
                          std::pair{"logits_scaling", c.logits_scaling}})
      if (v) meta[key] = *v;
    m["metadata"] = meta;
  }
  r["model"] = m;
  json meta = json::object();
  for (const auto& f : model.files())
    for (const auto& [k, v] : f.metadata()) meta[k] = v;
  r["file_metadata"] = meta;
  json tensors = json::array();
  std::map<std::string, uint64_t> bytes_by_type;
  uint64_t total = 0;
  for (const std::string& name : model.tensor_names()) {
    auto ref = *model.find(name);
    const formats::SafetensorsTensor& t = *ref.tensor;
    tensors.push_back({{"name", t.name},
                       {"type", t.dtype_name},
                       {"shape", t.shape},
                       {"elements", t.elements},
                       {"bytes", t.bytes()},
                       {"offset", ref.file->data_offset() + t.begin},
                       {"file", fs::path(ref.file->path()).filename().string()},
                       {"dequantizable", t.supported()}});
    bytes_by_type[t.dtype_name] += t.bytes();
    total += t.bytes();
  }
  r["tensors"] = tensors;
  r["tensor_bytes"] = total;
  r["bytes_by_type"] = bytes_by_type;
  return r;
}

json inspect_npy(const fs::path& path) {
  formats::MappedFile map(path.string());
  formats::NpyHeader h = formats::parse_npy_header(map.bytes(), path.string());
  return {{"kind", "npy"},
          {"npy_version", std::to_string(h.major) + "." + std::to_string(h.minor)},
          {"shape", h.shape},
          {"elements", h.elements},
          {"dtype", "<f4"}};
}

std::string render_other(const json& r) {
  std::string out;
  std::string kind = r["kind"];
  if (kind == "npy") {
    out += "NPY v" + r["npy_version"].get<std::string>() + ", f32 " + dims_text(r["shape"]) + ", " +
           with_commas(r["elements"].get<uint64_t>()) + " values\n";
  } else if (kind == "safetensors") {
    out += "safetensors, " + json_text(r["shards"]) + " file(s), " +
           std::to_string(r["tensors"].size()) + " tensors\n\n";
    if (r["model"].empty())
      out += "config.json       none beside the weights\n";
    else
      render_model(out, r["model"]);
    if (r["model"].contains("metadata"))
      for (const auto& [k, v] : r["model"]["metadata"].items()) {
        std::string line = "  " + k;
        pad_to(line, 22);
        out += line + scalar_text(v) + "\n";
      }
    render_tensor_table(out, r, "shape", "shapes outermost first");
  }
  return out;
}

}  // namespace

InputKind detect_input(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec))
      if (e.path().extension() == ".safetensors" ||
          e.path().filename() == "model.safetensors.index.json")
        return InputKind::Safetensors;
    return InputKind::DumpDir;
  }
  if (!fs::exists(path, ec)) throw Error(path.string() + ": no such file or directory");
  std::string magic = read_magic(path, 8);
  if (magic.rfind("GGUF", 0) == 0) return InputKind::Gguf;
  if (magic.rfind("APRT", 0) == 0) return InputKind::AprtFile;
  if (magic.rfind("\x93NUMPY", 0) == 0) return InputKind::NpyFile;
  std::string filename = path.filename().string();
  if (path.extension() == ".safetensors" ||
      (filename.size() > 23 && filename.ends_with(".safetensors.index.json")))
    return InputKind::Safetensors;
  throw Error(path.string(), 0,
              "a GGUF file (\"GGUF\"), a .safetensors file, an APRT tensor (\"APRT\"), an NPY "
              "file or a dump directory",
              magic.empty() ? "an empty file" : "other bytes");
}

std::string render_inspect_text(const json& r) {
  std::string out = r["path"].get<std::string>() + ": ";
  std::string kind = r["kind"];
  if (kind == "gguf") {
    out += "GGUF v" + json_text(r["gguf_version"]) + ", " + human_bytes(r["file_bytes"]) + ", " +
           std::to_string(r["tensors"].size()) + " tensors, " + json_text(r["metadata_count"]) +
           " metadata keys, data at offset " + json_text(r["data_offset"]) + "\n\n";
    render_gguf(out, r);
  } else if (kind == "dump") {
    out += "APRT dump directory\n";
    render_dump(out, r);
  } else if (kind == "aprt") {
    out +=
        "APRT tensor, layer " +
        (r["layer"].is_null() ? std::string("whole-model (0xFFFFFFFF)") : json_text(r["layer"])) +
        ", " + with_commas(r["elements"].get<uint64_t>()) + " f32 values\n";
  } else {
    out += render_other(r);
  }
  return out;
}

json inspect(const fs::path& path) {
  json r;
  switch (detect_input(path)) {
    case InputKind::Gguf:
      r = inspect_gguf(path);
      break;
    case InputKind::DumpDir:
      r = inspect_dump(path);
      break;
    case InputKind::AprtFile:
      r = inspect_aprt(path);
      break;
    case InputKind::Safetensors:
      r = inspect_safetensors(path);
      break;
    case InputKind::NpyFile:
      r = inspect_npy(path);
      break;
  }
  r["path"] = path.string();
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) r["file_bytes"] = fs::file_size(path, ec);
  return r;
}

std::vector<uint64_t> export_tensor_npy(const fs::path& input, const std::string& tensor,
                                        const fs::path& out) {
  std::vector<float> values;
  std::vector<uint64_t> shape;
  switch (detect_input(input)) {
    case InputKind::Gguf: {
      GgufFile f = GgufFile::open(input.string());
      const formats::GgufTensorInfo* t = f.find_tensor(tensor);
      if (t == nullptr)
        throw Error(input.string() + ": no tensor named '" + tensor + "' (see lockstep inspect)");
      if (!formats::has_codec(t->type))
        throw Error(input.string() + ": tensor '" + tensor + "' is " +
                    std::string(formats::ggml_type_name(t->type)) +
                    ", which Lockstep cannot dequantize");
      values.resize(t->elements);
      formats::dequantize(t->type, f.tensor_data(*t), values);
      shape.assign(t->dims.rbegin(), t->dims.rend());
      break;
    }
    case InputKind::Safetensors: {
      formats::SafetensorsModel m = formats::SafetensorsModel::open(input);
      auto ref = m.find(tensor);
      if (!ref)
        throw Error(input.string() + ": no tensor named '" + tensor + "' (see lockstep inspect)");
      values = ref->file->to_f32(*ref->tensor);
      shape = ref->tensor->shape;
      break;
    }
    case InputKind::DumpDir: {
      auto key = formats::parse_dump_rel_path(tensor.ends_with(".bin") ? tensor : tensor + ".bin");
      if (!key)
        throw Error(input.string() + ": '" + tensor +
                    "' is not a dump cell (expected layer-<N>/<stage> or <stage>)");
      formats::DumpScan scan = formats::scan_dump_dir(input);
      const formats::DumpCell* cell = scan.find(key->stage, key->layer);
      if (cell == nullptr)
        throw Error(input.string() + ": the dump holds no cell '" + tensor + "'");
      values = formats::read_aprt(cell->path).values;
      if (cell->shape)
        shape = *cell->shape;
      else
        shape = {values.size()};
      break;
    }
    case InputKind::AprtFile: {
      values = formats::read_aprt(input).values;
      shape = {values.size()};
      break;
    }
    case InputKind::NpyFile:
      throw Error(input.string() + ": already an NPY file");
  }
  formats::write_npy(out, values, shape);
  return shape;
}

}  // namespace lockstep::engine
