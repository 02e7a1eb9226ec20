#include "formats/hf_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_util.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {
namespace {

using nlohmann::json;

constexpr int kMaxJsonDepth = 64;
constexpr uint64_t kMaxConfigBytes = 16ull << 20;
// Far above any real model, low enough that a later allocation sized by these cannot explode.
constexpr uint64_t kMaxDim = 1ull << 24;
constexpr uint64_t kMaxLayers = 1ull << 16;

std::string found_text(const json& j) {
  return j.is_primitive() && !j.is_string() ? std::string(json_type_name(j)) + " " + j.dump()
                                            : std::string(json_type_name(j));
}

class Reader {
 public:
  Reader(const json& obj, const std::string& name, std::string prefix = {})
      : obj_(obj), name_(name), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(std::string_view key, const std::string& expected,
                         const std::string& found) const {
    throw Error(name_, Error::kNoOffset, "key \"" + prefix_ + std::string(key) + "\" " + expected,
                found);
  }
  // nullptr when absent; null counts as absent only where `null_ok`.
  const json* get(std::string_view key, bool null_ok = false) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || (null_ok && it->is_null())) return nullptr;
    return &*it;
  }
  const json& need(std::string_view key) const {
    const json* j = get(key);
    if (j == nullptr) fail(key, "(required)", "no such key");
    return *j;
  }

  std::string str(std::string_view key, const json& j) const {
    if (!j.is_string()) fail(key, "to be a string", found_text(j));
    return j.get<std::string>();
  }
  uint64_t uint(std::string_view key, const json& j, uint64_t lo, uint64_t hi) const {
    if (!j.is_number_unsigned() || j.get<uint64_t>() < lo || j.get<uint64_t>() > hi)
      fail(key, "to be an integer in " + std::to_string(lo) + ".." + std::to_string(hi),
           found_text(j));
    return j.get<uint64_t>();
  }
  double num(std::string_view key, const json& j) const {
    if (!j.is_number() || !std::isfinite(j.get<double>()))
      fail(key, "to be a finite number", found_text(j));
    return j.get<double>();
  }
  bool boolean(std::string_view key, const json& j) const {
    if (!j.is_boolean()) fail(key, "to be true or false", found_text(j));
    return j.get<bool>();
  }

  std::optional<std::string> opt_str(std::string_view key) const {
    const json* j = get(key, true);
    return j ? std::optional(str(key, *j)) : std::nullopt;
  }
  std::optional<uint64_t> opt_uint(std::string_view key, uint64_t lo, uint64_t hi) const {
    const json* j = get(key, true);
    return j ? std::optional(uint(key, *j, lo, hi)) : std::nullopt;
  }
  std::optional<double> opt_num(std::string_view key) const {
    const json* j = get(key, true);
    return j ? std::optional(num(key, *j)) : std::nullopt;
  }
  std::optional<bool> opt_bool(std::string_view key) const {
    const json* j = get(key, true);
    return j ? std::optional(boolean(key, *j)) : std::nullopt;
  }

 private:
  const json& obj_;
  const std::string& name_;
  std::string prefix_;
};

}  // namespace

std::optional<double> HfConfig::norm_eps() const {
  if (rms_norm_eps) return rms_norm_eps;
  if (layer_norm_eps) return layer_norm_eps;
  return norm_epsilon;
}

uint64_t HfConfig::head_dim_or_default() const {
  if (head_dim) return *head_dim;
  return num_attention_heads == 0 ? 0 : hidden_size / num_attention_heads;
}

HfConfig parse_hf_config(std::string_view text, std::string name) {
  json root = parse_json_document(text, name, kMaxJsonDepth);
  if (!root.is_object())
    throw Error(name, Error::kNoOffset, "a JSON object at the top level", json_type_name(root));
  Reader r(root, name);
  HfConfig c;
  c.model_type = r.str("model_type", r.need("model_type"));
  if (c.model_type.empty()) r.fail("model_type", "to be non-empty", "\"\"");
  if (const json* a = r.get("architectures", true)) {
    if (!a->is_array()) r.fail("architectures", "to be an array of strings", found_text(*a));
    for (const json& s : *a) c.architectures.push_back(r.str("architectures", s));
  }
  c.hidden_size = r.uint("hidden_size", r.need("hidden_size"), 1, kMaxDim);
  c.num_hidden_layers = r.uint("num_hidden_layers", r.need("num_hidden_layers"), 1, kMaxLayers);
  c.num_attention_heads = r.uint("num_attention_heads", r.need("num_attention_heads"), 1, kMaxDim);
  c.intermediate_size = r.uint("intermediate_size", r.need("intermediate_size"), 1, kMaxDim);
  c.vocab_size = r.uint("vocab_size", r.need("vocab_size"), 1, kMaxDim);
  if (auto kv = r.opt_uint("num_key_value_heads", 1, c.num_attention_heads)) {
    c.num_key_value_heads = *kv;
    c.num_key_value_heads_given = true;
  } else {
    c.num_key_value_heads = c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    r.fail("num_key_value_heads",
           "to divide num_attention_heads (" + std::to_string(c.num_attention_heads) + ")",
           std::to_string(c.num_key_value_heads));
  c.head_dim = r.opt_uint("head_dim", 1, kMaxDim);
  if (!c.head_dim && c.hidden_size % c.num_attention_heads != 0)
    r.fail("hidden_size",
           "to be a multiple of num_attention_heads (" + std::to_string(c.num_attention_heads) +
               ") when head_dim is absent",
           std::to_string(c.hidden_size));
  c.max_position_embeddings = r.opt_uint("max_position_embeddings", 1, UINT64_MAX);

  c.rms_norm_eps = r.opt_num("rms_norm_eps");
  c.layer_norm_eps = r.opt_num("layer_norm_eps");
  c.norm_epsilon = r.opt_num("norm_epsilon");
  c.rope_theta = r.opt_num("rope_theta");
  if (const json* rs = r.get("rope_scaling", true)) {
    if (!rs->is_object()) r.fail("rope_scaling", "to be an object or null", found_text(*rs));
    Reader s(*rs, name, "rope_scaling.");
    RopeScaling scaling;
    if (auto t = s.opt_str("rope_type"))
      scaling.type = *t;
    else if (auto t2 = s.opt_str("type"))
      scaling.type = *t2;
    else
      s.fail("type", "or \"rope_scaling.rope_type\" (required in a rope_scaling object)",
             "neither key");
    scaling.factor = s.opt_num("factor");
    scaling.low_freq_factor = s.opt_num("low_freq_factor");
    scaling.high_freq_factor = s.opt_num("high_freq_factor");
    scaling.original_max_position_embeddings =
        s.opt_uint("original_max_position_embeddings", 1, UINT64_MAX);
    c.rope_scaling = scaling;
  }

  c.tie_word_embeddings = r.opt_bool("tie_word_embeddings");
  c.hidden_act = r.opt_str("hidden_act");
  c.attention_bias = r.opt_bool("attention_bias");
  c.mlp_bias = r.opt_bool("mlp_bias");
  c.use_bias = r.opt_bool("use_bias");
  c.sliding_window = r.opt_uint("sliding_window", 0, UINT64_MAX);
  c.use_sliding_window = r.opt_bool("use_sliding_window");

  c.embedding_multiplier = r.opt_num("embedding_multiplier");
  c.residual_multiplier = r.opt_num("residual_multiplier");
  c.attention_multiplier = r.opt_num("attention_multiplier");
  c.logits_scaling = r.opt_num("logits_scaling");

  c.torch_dtype = r.opt_str("torch_dtype");
  if (!c.torch_dtype) c.torch_dtype = r.opt_str("dtype");
  return c;
}

HfConfig read_hf_config(const std::filesystem::path& path) {
  MappedFile f(path.string());
  if (f.size() > kMaxConfigBytes)
    throw Error(path.string(), Error::kNoOffset,
                "a config of at most " + std::to_string(kMaxConfigBytes) + " bytes",
                std::to_string(f.size()) + " bytes");
  auto b = f.bytes();
  return parse_hf_config(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()),
                         path.string());
}

}  // namespace lockstep::formats
