#include "formats/manifest.h"

#include <cctype>

#include "formats/aprt.h"
#include "formats/atomic_dir.h"
#include "formats/dump_dir.h"
#include "formats/error.h"
#include "formats/shape.h"
#include "formats/json_util.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {
namespace {

using nlohmann::json;

// Deep enough for any real model config; shallow enough that writing the config back
// (nlohmann's serializer recurses) cannot exhaust the stack.
constexpr int kMaxJsonDepth = 64;
// Token ids and shapes of a long run fit in a few MiB; anything far larger is not a manifest.
constexpr uint64_t kMaxManifestBytes = 64ull << 20;

class Checker {
 public:
  explicit Checker(const std::string& name) : name_(name) {}

  [[noreturn]] void fail(const std::string& key, const std::string& expected,
                         const std::string& found) const {
    throw Error(name_, Error::kNoOffset, "key " + key + " to be " + expected, found);
  }
  void want(const json& j, json::value_t type, const std::string& key, const char* expected) const {
    bool ok =
        j.type() == type || (type == json::value_t::number_unsigned && j.is_number_unsigned());
    if (!ok) fail(key, expected, json_type_name(j));
  }
  std::string string(const json& j, const std::string& key) const {
    want(j, json::value_t::string, key, "a string");
    return j.get<std::string>();
  }
  uint64_t uint(const json& j, const std::string& key) const {
    if (!j.is_number_unsigned()) fail(key, "a non-negative integer", json_type_name(j));
    return j.get<uint64_t>();
  }
  const std::string& name() const { return name_; }

 private:
  const std::string& name_;
};

std::string in_quotes(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool is_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

const std::vector<uint64_t>* Manifest::shape_of(std::string_view rel_path) const {
  auto it = files.find(rel_path);
  return it == files.end() ? nullptr : &it->second;
}

Manifest parse_manifest(std::string_view text, std::string name) {
  json root = parse_json_document(text, name, kMaxJsonDepth);
  Checker c(name);
  if (!root.is_object())
    throw Error(name, Error::kNoOffset, "a JSON object at the top level", json_type_name(root));

  Manifest m;
  auto version = root.find("format_version");
  if (version == root.end())
    throw Error(name, Error::kNoOffset, "key \"format_version\"", "no such key");
  m.format_version = static_cast<int64_t>(
      std::min<uint64_t>(c.uint(*version, "\"format_version\""), static_cast<uint64_t>(INT64_MAX)));
  if (m.format_version < 1 || m.format_version > kManifestFormatVersion)
    throw Error(name, Error::kNoOffset,
                "\"format_version\" between 1 and " + std::to_string(kManifestFormatVersion) +
                    " (a newer Lockstep wrote this dump)",
                std::to_string(m.format_version));

  if (auto it = root.find("tool"); it != root.end()) {
    c.want(*it, json::value_t::object, "\"tool\"", "an object");
    if (auto n = it->find("name"); n != it->end()) m.tool_name = c.string(*n, "\"tool\".\"name\"");
    if (auto v = it->find("version"); v != it->end())
      m.tool_version = c.string(*v, "\"tool\".\"version\"");
  }
  if (auto it = root.find("lane"); it != root.end()) m.lane = c.string(*it, "\"lane\"");
  if (auto it = root.find("model"); it != root.end()) {
    c.want(*it, json::value_t::object, "\"model\"", "an object");
    if (auto p = it->find("path"); p != it->end())
      m.model_path = c.string(*p, "\"model\".\"path\"");
    if (auto h = it->find("sha256"); h != it->end()) {
      m.model_sha256 = lower(c.string(*h, "\"model\".\"sha256\""));
      if (!m.model_sha256.empty() && !is_sha256(m.model_sha256))
        c.fail("\"model\".\"sha256\"", "64 hexadecimal digits", in_quotes(m.model_sha256));
    }
  }
  if (auto it = root.find("family"); it != root.end()) m.family = c.string(*it, "\"family\"");
  if (auto it = root.find("config"); it != root.end()) {
    c.want(*it, json::value_t::object, "\"config\"", "an object");
    m.config = *it;
  }
  if (auto it = root.find("token_ids"); it != root.end()) {
    c.want(*it, json::value_t::array, "\"token_ids\"", "an array");
    m.token_ids.reserve(it->size());
    for (size_t i = 0; i < it->size(); ++i) {
      const json& t = (*it)[i];
      std::string key = "\"token_ids\"[" + std::to_string(i) + "]";
      if (!t.is_number_unsigned() || t.get<uint64_t>() > INT32_MAX)
        c.fail(key, "a token id in 0..2147483647",
               t.is_number() ? t.dump() : std::string(json_type_name(t)));
      m.token_ids.push_back(static_cast<int32_t>(t.get<uint64_t>()));
    }
  }
  if (auto it = root.find("files"); it != root.end()) {
    c.want(*it, json::value_t::object, "\"files\"", "an object");
    for (const auto& [rel, shape_json] : it->items()) {
      std::string key = "\"files\"." + in_quotes(rel);
      if (!parse_dump_rel_path(rel))
        c.fail(key, "named like \"layer-<N>/<stage>.bin\" or \"<stage>.bin\"", in_quotes(rel));
      c.want(shape_json, json::value_t::array, key, "an array (the shape)");
      if (shape_json.empty() || shape_json.size() > kManifestMaxRank)
        c.fail(key, "a shape of rank 1.." + std::to_string(kManifestMaxRank),
               "rank " + std::to_string(shape_json.size()));
      std::vector<uint64_t> shape;
      for (const json& d : shape_json) shape.push_back(c.uint(d, key + " (a dimension)"));
      if (!shape_product(shape))
        c.fail(key, "a shape whose element count fits in 64 bits", shape_text(shape));
      m.files.emplace(rel, std::move(shape));
    }
  }
  return m;
}

std::string format_manifest(const Manifest& m) {
  // ordered_json keeps the documented key order, so manifests diff well.
  nlohmann::ordered_json j;
  j["format_version"] = m.format_version;
  if (!m.tool_name.empty() || !m.tool_version.empty()) {
    j["tool"]["name"] = m.tool_name;
    j["tool"]["version"] = m.tool_version;
  }
  if (!m.lane.empty()) j["lane"] = m.lane;
  if (!m.model_path.empty()) j["model"]["path"] = m.model_path;
  if (!m.model_sha256.empty()) j["model"]["sha256"] = m.model_sha256;
  if (!m.family.empty()) j["family"] = m.family;
  if (!m.config.is_null() && !m.config.empty())
    j["config"] = nlohmann::ordered_json::parse(m.config.dump());
  if (!m.token_ids.empty()) j["token_ids"] = m.token_ids;
  if (!m.files.empty()) {
    j["files"] = nlohmann::ordered_json::object();
    for (const auto& [rel, shape] : m.files) j["files"][rel] = shape;
  }
  // Paths need not be UTF-8; a manifest is informational, so such bytes become U+FFFD.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

void verify_manifest_files(const Manifest& m, const std::filesystem::path& dir,
                           const std::string& manifest_name) {
  for (const auto& [rel, shape] : m.files) {
    std::filesystem::path file = dir / rel;
    std::error_code ec;
    if (!std::filesystem::exists(file, ec)) continue;
    AprtHeader h = read_aprt_header(file);
    uint64_t want = *shape_product(shape);  // parse_manifest checked it
    if (want != h.count)
      throw Error(manifest_name, Error::kNoOffset,
                  "key \"files\"." + in_quotes(rel) + ": shape " + shape_text(shape) + " (" +
                      std::to_string(want) + " elements) to match the file's element count",
                  std::to_string(h.count) + " elements in " + file.string());
  }
}

Manifest read_manifest(const std::filesystem::path& path) {
  MappedFile f(path.string());
  if (f.size() > kMaxManifestBytes)
    throw Error(path.string(), Error::kNoOffset,
                "a manifest of at most " + std::to_string(kMaxManifestBytes) + " bytes",
                std::to_string(f.size()) + " bytes");
  auto bytes = f.bytes();
  Manifest m = parse_manifest(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path.string());
  verify_manifest_files(m, path.parent_path(), path.string());
  return m;
}

void write_manifest(const std::filesystem::path& path, const Manifest& m) {
  std::string text = format_manifest(m);
  write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

}  // namespace lockstep::formats
