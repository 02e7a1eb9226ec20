#include "engine/family.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "formats/error.h"
#include "formats/json_util.h"

namespace lockstep::engine {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& key,
                       const std::string& expected, const std::string& found = {}) {
  throw Error(file.string(), Error::kNoOffset, "key \"" + key + "\" " + expected, found);
}

const json& member(const json& obj, const std::string& key, const std::string& where,
                   const std::filesystem::path& file) {
  auto it = obj.find(key);
  if (it == obj.end()) fail(file, where + key, "to be present");
  return *it;
}

std::string get_string(const json& obj, const std::string& key, const std::string& where,
                       const std::filesystem::path& file) {
  const json& v = member(obj, key, where, file);
  if (!v.is_string()) fail(file, where + key, "to be a string", formats::json_type_name(v));
  return v.get<std::string>();
}

bool get_bool(const json& obj, const std::string& key, const std::string& where,
              const std::filesystem::path& file) {
  const json& v = member(obj, key, where, file);
  if (!v.is_boolean()) fail(file, where + key, "to be a boolean", formats::json_type_name(v));
  return v.get<bool>();
}

double get_positive(const json& obj, const std::string& key, const std::string& where,
                    const std::filesystem::path& file) {
  const json& v = member(obj, key, where, file);
  if (!v.is_number()) fail(file, where + key, "to be a number", formats::json_type_name(v));
  double d = v.get<double>();
  if (!(d > 0) || !std::isfinite(d)) fail(file, where + key, "to be positive", v.dump());
  return d;
}

std::vector<std::string> get_string_list(const json& obj, const std::string& key,
                                         const std::filesystem::path& file) {
  const json& v = member(obj, key, "", file);
  if (!v.is_array()) fail(file, key, "to be an array of strings", formats::json_type_name(v));
  std::vector<std::string> out;
  for (const json& s : v) {
    if (!s.is_string() || s.get<std::string>().empty())
      fail(file, key, "to hold non-empty strings", s.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

template <typename E, size_t N>
E get_enum(const json& obj, const std::string& key, const std::string& where,
           const std::filesystem::path& file,
           const std::array<std::pair<std::string_view, E>, N>& names) {
  std::string s = get_string(obj, key, where, file);
  for (const auto& [n, e] : names)
    if (n == s) return e;
  std::string allowed;
  for (const auto& [n, e] : names) allowed += (allowed.empty() ? "" : "|") + std::string(n);
  fail(file, where + key, "to be one of " + allowed, "\"" + s + "\"");
}

constexpr std::array<std::pair<std::string_view, NormKind>, 2> kNormNames{
    {{"rms", NormKind::Rms}, {"layer", NormKind::Layer}}};
constexpr std::array<std::pair<std::string_view, Activation>, 2> kActivationNames{
    {{"silu_gated", Activation::SiluGated}, {"gelu", Activation::Gelu}}};
constexpr std::array<std::pair<std::string_view, RopeLayout>, 2> kRopeNames{
    {{"normal", RopeLayout::Normal}, {"neox", RopeLayout::Neox}}};

std::array<std::string, kWeightRoleCount> parse_tensor_map(const json& maps,
                                                           const std::string& format,
                                                           const std::filesystem::path& file) {
  const std::string where = "tensors." + format;
  const json& m = member(maps, format, "tensors.", file);
  if (!m.is_object()) fail(file, where, "to be an object", formats::json_type_name(m));
  std::array<std::string, kWeightRoleCount> names;
  for (const auto& [key, value] : m.items()) {
    auto role = find_weight_role(key);
    if (!role) fail(file, where + "." + key, "to be a weight role (token_embd, attn_q, ...)");
    if (!value.is_string() || value.get<std::string>().empty())
      fail(file, where + "." + key, "to be a non-empty string", value.dump());
    std::string name = value.get<std::string>();
    bool has_layer = name.find("{L}") != std::string::npos;
    if (weight_role_info(*role).per_layer != has_layer)
      fail(file, where + "." + key,
           has_layer ? "to name a whole-model tensor (no {L})" : "to contain {L}",
           "\"" + name + "\"");
    names[static_cast<size_t>(*role)] = std::move(name);
  }
  return names;
}

// The roles a family with these traits cannot do without.
std::vector<WeightRole> required_roles(const FamilyTraits& t) {
  using R = WeightRole;
  std::vector<R> r{R::TokenEmbd, R::OutputNorm, R::Output,  R::AttnNorm, R::AttnQ,  R::AttnK,
                   R::AttnV,     R::AttnOutput, R::FfnNorm, R::FfnUp,    R::FfnDown};
  if (t.activation == Activation::SiluGated) r.push_back(R::FfnGate);
  if (t.norm == NormKind::Layer)
    r.insert(r.end(), {R::OutputNormBias, R::AttnNormBias, R::FfnNormBias});
  if (t.qkv_bias) r.insert(r.end(), {R::AttnQBias, R::AttnKBias, R::AttnVBias});
  if (t.attn_output_bias) r.push_back(R::AttnOutputBias);
  if (t.ffn_bias) r.insert(r.end(), {R::FfnUpBias, R::FfnDownBias});
  if (t.ffn_bias && t.activation == Activation::SiluGated) r.push_back(R::FfnGateBias);
  if (t.qk_norm) r.insert(r.end(), {R::AttnQNorm, R::AttnKNorm});
  return r;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

std::string_view norm_kind_name(NormKind k) {
  return k == NormKind::Rms ? "rms" : "layer";
}
std::string_view activation_name(Activation a) {
  return a == Activation::SiluGated ? "silu_gated" : "gelu";
}
std::string_view rope_layout_name(RopeLayout r) {
  return r == RopeLayout::Normal ? "normal" : "neox";
}

std::optional<WeightRole> find_weight_role(std::string_view key) {
  for (const auto& r : kWeightRoles)
    if (r.key == key) return r.role;
  return std::nullopt;
}

std::string Family::tensor_name(FileFormat f, WeightRole role, uint32_t layer) const {
  std::string n = (f == FileFormat::Gguf ? gguf_names : hf_names)[static_cast<size_t>(role)];
  if (auto at = n.find("{L}"); at != std::string::npos) n.replace(at, 3, std::to_string(layer));
  return n;
}

Family parse_family(std::string_view text, const std::filesystem::path& file) {
  json j = formats::parse_json_document(text, file.string(), 16);
  if (!j.is_object()) fail(file, "(document)", "to be an object", formats::json_type_name(j));
  Family f;
  f.source = file;
  f.name = get_string(j, "name", "", file);
  if (f.name.empty()) fail(file, "name", "to be non-empty");
  f.gguf_architectures = get_string_list(j, "gguf_architectures", file);
  f.hf_model_types = get_string_list(j, "hf_model_types", file);
  if (f.gguf_architectures.empty() && f.hf_model_types.empty())
    fail(file, "gguf_architectures", "or hf_model_types to name at least one value");

  const json& t = member(j, "traits", "", file);
  if (!t.is_object()) fail(file, "traits", "to be an object", formats::json_type_name(t));
  const std::string tw = "traits.";
  f.traits.norm = get_enum(t, "norm", tw, file, kNormNames);
  f.traits.activation = get_enum(t, "activation", tw, file, kActivationNames);
  f.traits.qkv_bias = get_bool(t, "qkv_bias", tw, file);
  f.traits.attn_output_bias = get_bool(t, "attn_output_bias", tw, file);
  f.traits.ffn_bias = get_bool(t, "ffn_bias", tw, file);
  f.traits.qk_norm = get_bool(t, "qk_norm", tw, file);
  f.traits.gguf_rope = get_enum(t, "gguf_rope", tw, file, kRopeNames);
  f.traits.rope_scaling = get_bool(t, "rope_scaling", tw, file);
  f.traits.tied_embeddings = get_bool(t, "tied_embeddings", tw, file);
  f.traits.sliding_window = get_bool(t, "sliding_window", tw, file);

  const json& d = member(j, "hf_defaults", "", file);
  if (!d.is_object()) fail(file, "hf_defaults", "to be an object", formats::json_type_name(d));
  f.hf_norm_eps = get_positive(d, "norm_eps", "hf_defaults.", file);
  f.hf_rope_theta = get_positive(d, "rope_theta", "hf_defaults.", file);

  if (auto m = j.find("multipliers"); m != j.end()) {
    if (!m->is_object()) fail(file, "multipliers", "to be an object", formats::json_type_name(*m));
    f.multipliers = MultiplierKeys{get_string(*m, "embedding", "multipliers.", file),
                                   get_string(*m, "residual", "multipliers.", file),
                                   get_string(*m, "attention", "multipliers.", file),
                                   get_string(*m, "logits", "multipliers.", file)};
  }

  const json& maps = member(j, "tensors", "", file);
  if (!maps.is_object()) fail(file, "tensors", "to be an object", formats::json_type_name(maps));
  f.gguf_names = parse_tensor_map(maps, "gguf", file);
  f.hf_names = parse_tensor_map(maps, "hf", file);
  for (WeightRole r : required_roles(f.traits)) {
    size_t i = static_cast<size_t>(r);
    if (f.gguf_names[i].empty())
      fail(file, "tensors.gguf." + std::string(weight_role_name(r)),
           "to be present (traits need it)");
    if (f.hf_names[i].empty())
      fail(file, "tensors.hf." + std::string(weight_role_name(r)),
           "to be present (traits need it)");
  }
  return f;
}

Family read_family(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path.string() + ": cannot open family file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_family(ss.str(), path);
}

std::filesystem::path default_families_dir() {
  return std::filesystem::path(LOCKSTEP_ASSETS_DIR) / "families";
}

FamilyRegistry FamilyRegistry::load(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw Error(dir.string() + ": expected a directory of family files");
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<Family> families;
  for (const auto& p : files) families.push_back(read_family(p));
  if (families.empty()) throw Error(dir.string() + ": expected at least one family file");
  return from(std::move(families));
}

FamilyRegistry FamilyRegistry::from(std::vector<Family> families) {
  // Value → the family file that claimed it, to name both files on a clash.
  std::map<std::string, std::filesystem::path> names, archs, types;
  auto claim = [](std::map<std::string, std::filesystem::path>& seen, const std::string& value,
                  const Family& f, const std::string& what) {
    auto [it, fresh] = seen.emplace(value, f.source);
    if (!fresh)
      throw Error(f.source.string(), Error::kNoOffset,
                  what + " \"" + value + "\" to be claimed by one family",
                  "also claimed by " + it->second.string());
  };
  for (const Family& f : families) {
    claim(names, f.name, f, "name");
    for (const auto& a : f.gguf_architectures) claim(archs, a, f, "GGUF architecture");
    for (const auto& t : f.hf_model_types) claim(types, t, f, "HF model_type");
  }
  FamilyRegistry r;
  r.families_ = std::move(families);
  return r;
}

const Family* FamilyRegistry::find_name(std::string_view name) const {
  for (const Family& f : families_)
    if (f.name == name) return &f;
  return nullptr;
}

const Family* FamilyRegistry::find_gguf(std::string_view architecture) const {
  for (const Family& f : families_)
    for (const auto& a : f.gguf_architectures)
      if (a == architecture) return &f;
  return nullptr;
}

const Family* FamilyRegistry::find_hf(std::string_view model_type) const {
  for (const Family& f : families_)
    for (const auto& t : f.hf_model_types)
      if (t == model_type) return &f;
  return nullptr;
}

const Family& FamilyRegistry::require_gguf(std::string_view architecture,
                                           const std::string& file) const {
  if (const Family* f = find_gguf(architecture)) return *f;
  throw Error(
      file, Error::kNoOffset,
      "general.architecture to be one of the supported ones (" + join(gguf_architectures()) + ")",
      "\"" + std::string(architecture) + "\"");
}

const Family& FamilyRegistry::require_hf(std::string_view model_type,
                                         const std::string& file) const {
  if (const Family* f = find_hf(model_type)) return *f;
  throw Error(file, Error::kNoOffset,
              "model_type to be one of the supported ones (" + join(hf_model_types()) + ")",
              "\"" + std::string(model_type) + "\"");
}

std::vector<std::string> FamilyRegistry::gguf_architectures() const {
  std::vector<std::string> out;
  for (const Family& f : families_)
    out.insert(out.end(), f.gguf_architectures.begin(), f.gguf_architectures.end());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> FamilyRegistry::hf_model_types() const {
  std::vector<std::string> out;
  for (const Family& f : families_)
    out.insert(out.end(), f.hf_model_types.begin(), f.hf_model_types.end());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace lockstep::engine
