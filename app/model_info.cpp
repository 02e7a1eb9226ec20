#include "app/model_info.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <iterator>
#include <nlohmann/json.hpp>
#include <system_error>

#include "app/demo_model.h"
#include "engine/generate.h"
#include "engine/inspect.h"
#include "engine/ref_lane.h"
#include "engine/tokenizer.h"
#include "formats/error.h"

namespace lockstep::app {

namespace fs = std::filesystem;

std::vector<int32_t> parse_token_ids(std::string_view text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    if (c == ',' || std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && text[end] != ',' &&
           !std::isspace(static_cast<unsigned char>(text[end])))
      ++end;
    const std::string_view piece = text.substr(i, end - i);
    int64_t v = -1;
    const auto [ptr, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), v);
    if (ec != std::errc() || ptr != piece.data() + piece.size() || v < 0 || v > INT32_MAX)
      throw Error("token ids: \"" + std::string(piece) +
                  "\" is not a token id (a whole number from 0; separate ids with commas or "
                  "spaces)");
    ids.push_back(static_cast<int32_t>(v));
    i = end;
  }
  if (ids.empty()) throw Error("token ids: none given (type ids such as 1, 2, 3)");
  return ids;
}

std::vector<std::string> push_recent(std::vector<std::string> list, const std::string& path,
                                     size_t max) {
  std::erase(list, path);
  list.insert(list.begin(), path);
  if (list.size() > max) list.resize(max);
  return list;
}

LayerRange parse_layer_range(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  if (text.empty() || text == "all") return {};
  auto number = [&](std::string_view s) {
    uint32_t v = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size())
      throw Error("layers: \"" + std::string(text) +
                  "\" is not a layer range (write all, 3, or 2-5)");
    return v;
  };
  const size_t dash = text.find('-');
  if (dash == std::string_view::npos) {
    const uint32_t l = number(text);
    return {l, l};
  }
  LayerRange r{number(text.substr(0, dash)), number(text.substr(dash + 1))};
  if (r.first > r.last)
    throw Error("layers: \"" + std::string(text) + "\" runs backwards (write the lower first)");
  return r;
}

std::vector<int32_t> default_tokens(const engine::Model& model) {
  if (model.gguf) {
    try {
      std::vector<int32_t> t =
          engine::encode_prompt(engine::Tokenizer::from_gguf(*model.gguf), kDemoPrompt, false);
      if (!t.empty()) return t;
    } catch (const Error&) {
      // no usable tokenizer: fall through to plain ids
    }
  }
  std::vector<int32_t> ids;
  for (int32_t id = 1; id <= 8; ++id)
    if (uint64_t(id) < model.config.vocab) ids.push_back(id);
  if (ids.empty()) ids.push_back(0);
  return ids;
}

std::string byte_text(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(units)) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

namespace {

std::string json_value_text(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

std::string shape_text(const nlohmann::json& shape) {
  std::string s = "[";
  bool first = true;
  for (const auto& d : shape) {
    s += (first ? "" : ", ") + json_value_text(d);
    first = false;
  }
  return s + "]";
}

}  // namespace

views::ModelInfo model_info(const fs::path& path, const engine::Model& model) {
  const nlohmann::json r = engine::inspect(path);
  views::ModelInfo m;
  m.path = path.string();
  m.kind = r.value("kind", std::string());
  m.family = model.family.name;
  m.layers = static_cast<uint32_t>(model.config.layers);
  m.vocab = model.config.vocab;
  const nlohmann::json model_json = r.value("model", nlohmann::json::object());
  m.name = model_json.value("name", std::string());
  if (model_json.contains("architecture"))
    m.hyperparameters.push_back({"architecture", json_value_text(model_json["architecture"])});
  if (auto h = model_json.find("hyperparameters"); h != model_json.end() && h->is_object())
    for (const auto& [k, v] : h->items()) m.hyperparameters.push_back({k, json_value_text(v)});
  uint64_t total = 0;
  if (auto ts = r.find("tensors"); ts != r.end() && ts->is_array())
    for (const auto& t : *ts) {
      const uint64_t bytes = t.value("bytes", uint64_t{0});
      total += bytes;
      m.tensors.push_back({t.value("name", std::string()), t.value("type", std::string()),
                           shape_text(t.value("shape", nlohmann::json::array())),
                           byte_text(bytes)});
    }
  m.tensor_bytes = byte_text(total) + " in " + std::to_string(m.tensors.size()) + " tensors";
  m.ref_problem = engine::ref_lane_memory_problem(model);
  if (auto t = r.find("tokenizer"); t != r.end() && t->is_object() && t->contains("model")) {
    m.has_tokenizer = t->value("tokens", uint64_t{0}) > 0;
    m.tokenizer = json_value_text((*t)["model"]) + ", " +
                  std::to_string(t->value("tokens", uint64_t{0})) + " tokens";
    m.has_chat_template = t->contains("chat_template_chars");
  } else {
    m.tokenizer = m.kind == "safetensors" ? "none readable (safetensors: give token ids)"
                                          : "none in the file (give token ids)";
  }
  return m;
}

views::DirListing list_dir(const fs::path& dir) {
  views::DirListing l;
  std::error_code ec;
  const fs::path abs = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  l.dir = abs.string();
  l.parent = abs.has_parent_path() && abs.parent_path() != abs ? abs.parent_path().string() : "";
  fs::directory_iterator it(abs, fs::directory_options::skip_permission_denied, ec);
  if (ec) {
    l.error = "cannot list " + abs.string() + ": " + ec.message();
    return l;
  }
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const fs::path p = it->path();
    const std::string name = p.filename().string();
    if (name.empty() || name[0] == '.') continue;
    views::DirEntry e;
    e.name = name;
    e.path = p.string();
    std::error_code e2;
    e.is_dir = it->is_directory(e2);
    if (e.is_dir) {
      e.is_model = fs::exists(p / "config.json", e2);
    } else {
      const std::string ext = p.extension().string();
      e.is_model = ext == ".gguf" || ext == ".safetensors";
      const uintmax_t size = it->file_size(e2);
      if (!e2) e.size = byte_text(size);
    }
    l.entries.push_back(std::move(e));
  }
  if (ec) l.error = "listing " + abs.string() + " stopped: " + ec.message();
  std::sort(l.entries.begin(), l.entries.end(), [](const auto& a, const auto& b) {
    if (a.is_dir != b.is_dir) return a.is_dir;
    return a.name < b.name;
  });
  return l;
}

bool is_dump_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  if (fs::exists(dir / "manifest.json", ec)) return true;
  auto holds_cells = [](const fs::path& d) {
    std::error_code e;
    for (fs::directory_iterator it(d, e); !e && it != fs::directory_iterator(); it.increment(e)) {
      const std::string ext = it->path().extension().string();
      if (ext == ".aprt" || ext == ".npy") return true;
    }
    return false;
  };
  if (holds_cells(dir)) return true;
  for (fs::directory_iterator it(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::error_code e;
    if (it->is_directory(e) && holds_cells(it->path())) return true;
  }
  return false;
}

std::vector<views::RecentModel> check_recent(const std::vector<std::string>& paths) {
  std::vector<views::RecentModel> out;
  for (const std::string& p : paths) {
    std::error_code ec;
    out.push_back({p, fs::exists(p, ec)});
  }
  return out;
}

}  // namespace lockstep::app
