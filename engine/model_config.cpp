#include "engine/model_config.h"

#include <algorithm>
#include <cmath>
#include <span>

#include "formats/error.h"

namespace lockstep::engine {
namespace {

// A config field and the key that sets it in each format, so that errors found after the
// fact (in validate) still name the key the user can look up in the file.
struct FieldKey {
  std::string_view field;
  std::string_view gguf;  // after "<arch>."
  std::string_view hf;
};
constexpr FieldKey kFieldKeys[] = {
    {"hidden", "embedding_length", "hidden_size"},
    {"layers", "block_count", "num_hidden_layers"},
    {"heads", "attention.head_count", "num_attention_heads"},
    {"kv_heads", "attention.head_count_kv", "num_key_value_heads"},
    {"head_dim", "attention.key_length", "head_dim"},
    {"ffn", "feed_forward_length", "intermediate_size"},
    {"vocab", "vocab_size", "vocab_size"},
    {"norm_eps", "attention.layer_norm_rms_epsilon", "rms_norm_eps"},
    {"rope_base", "rope.freq_base", "rope_theta"},
    {"rope_dims", "rope.dimension_count", "head_dim"},
    {"rope_scaling", "rope.scaling.factor", "rope_scaling.factor"},
    {"sliding_window", "attention.sliding_window", "sliding_window"},
    {"embedding_multiplier", "embedding_scale", "embedding_multiplier"},
    {"residual_multiplier", "residual_scale", "residual_multiplier"},
    {"attention_multiplier", "attention.scale", "attention_multiplier"},
    {"logits_scaling", "logit_scale", "logits_scaling"},
};

std::string key_of(const ModelConfig& c, std::string_view field) {
  for (const FieldKey& k : kFieldKeys) {
    if (k.field != field) continue;
    if (c.format == FileFormat::Safetensors) return std::string(k.hf);
    if (field == "norm_eps" && c.norm == NormKind::Layer)
      return c.architecture + ".attention.layer_norm_epsilon";
    return c.architecture + "." + std::string(k.gguf);
  }
  return std::string(field);
}

[[noreturn]] void fail_key(const std::string& file, const std::string& key,
                           const std::string& expected, const std::string& found = {}) {
  throw Error(file, Error::kNoOffset, "\"" + key + "\" " + expected, found);
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Reads GGUF metadata with the file's name in every error; a key of the wrong type is an
// error rather than "absent".
class GgufKeys {
 public:
  GgufKeys(const formats::GgufFile& f, std::string arch) : f_(f), arch_(std::move(arch)) {}
  std::string key(std::string_view suffix) const { return arch_ + "." + std::string(suffix); }

  std::optional<uint64_t> opt_u64(std::string_view suffix) const {
    std::string k = key(suffix);
    const formats::GgufValue* v = f_.find(k);
    if (v == nullptr) return std::nullopt;
    auto u = v->as_u64();
    if (!u) fail_key(f_.path(), k, "to be a non-negative integer", v->summary());
    return u;
  }
  uint64_t u64(std::string_view suffix) const {
    auto v = opt_u64(suffix);
    if (!v) fail_key(f_.path(), key(suffix), "to be present");
    return *v;
  }
  std::optional<double> opt_f64(std::string_view suffix) const {
    std::string k = key(suffix);
    const formats::GgufValue* v = f_.find(k);
    if (v == nullptr) return std::nullopt;
    auto d = v->as_f64();
    if (!d) fail_key(f_.path(), k, "to be a number", v->summary());
    return d;
  }
  std::optional<std::string> opt_string(std::string_view suffix) const {
    std::string k = key(suffix);
    const formats::GgufValue* v = f_.find(k);
    if (v == nullptr) return std::nullopt;
    if (!v->as_string()) fail_key(f_.path(), k, "to be a string", v->summary());
    return *v->as_string();
  }

 private:
  const formats::GgufFile& f_;
  std::string arch_;
};

// A GGUF multiplier key names "{arch}"; the rest of GgufKeys wants it relative.
std::string relative_key(const std::string& templ) {
  const std::string prefix = "{arch}.";
  return templ.rfind(prefix, 0) == 0 ? templ.substr(prefix.size()) : templ;
}

}  // namespace

double ModelConfig::attention_scale() const {
  if (attention_multiplier) return *attention_multiplier;
  return head_dim == 0 ? 0.0 : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

ModelConfig config_from_gguf(const formats::GgufFile& file, const Family& family) {
  ModelConfig c;
  c.source = file.path();
  c.format = FileFormat::Gguf;
  c.family = family.name;
  auto arch = file.get_string("general.architecture");
  if (!arch) fail_key(file.path(), "general.architecture", "to be a string");
  c.architecture = *arch;
  if (std::find(family.gguf_architectures.begin(), family.gguf_architectures.end(), *arch) ==
      family.gguf_architectures.end())
    fail_key(file.path(), "general.architecture", "to be one family " + family.name + " covers",
             "\"" + *arch + "\"");
  GgufKeys k(file, c.architecture);

  c.hidden = k.u64("embedding_length");
  c.layers = k.u64("block_count");
  c.heads = k.u64("attention.head_count");
  c.kv_heads = k.opt_u64("attention.head_count_kv").value_or(c.heads);
  c.ffn = k.u64("feed_forward_length");
  c.context = k.opt_u64("context_length").value_or(0);
  if (auto hd = k.opt_u64("attention.key_length")) {
    c.head_dim = *hd;
  } else if (c.heads != 0) {
    if (c.hidden % c.heads != 0)
      fail_key(file.path(), k.key("embedding_length"),
               "to be a multiple of attention.head_count (" + std::to_string(c.heads) +
                   ") when attention.key_length is absent",
               std::to_string(c.hidden));
    c.head_dim = c.hidden / c.heads;
  }
  // Lanes assume one head size for Q, K and V.
  if (auto vd = k.opt_u64("attention.value_length"); vd && *vd != c.head_dim)
    fail_key(file.path(), k.key("attention.value_length"),
             "to equal the key head size " + std::to_string(c.head_dim), std::to_string(*vd));

  // The vocabulary: llama.cpp's <arch>.vocab_size, else the tokenizer, else the embedding.
  if (auto v = k.opt_u64("vocab_size")) {
    c.vocab = *v;
  } else if (const formats::GgufValue* t = file.find("tokenizer.ggml.tokens"); t && t->as_array()) {
    c.vocab = t->as_array()->items.size();
  } else if (const formats::GgufTensorInfo* e =
                 file.find_tensor(family.tensor_name(FileFormat::Gguf, WeightRole::TokenEmbd));
             e && e->dims.size() == 2) {
    c.vocab = e->dims[1];
  } else {
    fail_key(file.path(), k.key("vocab_size"),
             "or tokenizer.ggml.tokens or a 2-D token_embd to give the vocabulary size");
  }

  const FamilyTraits& t = family.traits;
  c.norm = t.norm;
  c.activation = t.activation;
  c.qk_norm = t.qk_norm;
  const char* eps_key =
      t.norm == NormKind::Rms ? "attention.layer_norm_rms_epsilon" : "attention.layer_norm_epsilon";
  auto eps = k.opt_f64(eps_key);
  if (!eps) fail_key(file.path(), k.key(eps_key), "to be present");
  c.norm_eps = *eps;

  // Bias switches: the family's default, or on when the file carries layer 0's tensor.
  auto has = [&](WeightRole r) {
    std::string name = family.tensor_name(FileFormat::Gguf, r, 0);
    return !name.empty() && file.find_tensor(name) != nullptr;
  };
  c.qkv_bias = t.qkv_bias || has(WeightRole::AttnQBias);
  c.attn_output_bias = t.attn_output_bias || has(WeightRole::AttnOutputBias);
  c.ffn_bias = t.ffn_bias || has(WeightRole::FfnDownBias);
  c.tied_embeddings = !has(WeightRole::Output);
  c.rope_freq_factors = has(WeightRole::RopeFreqs);

  c.rope_layout = family.rope_layout(FileFormat::Gguf);
  c.rope_base = k.opt_f64("rope.freq_base").value_or(10000.0);
  c.rope_dims = k.opt_u64("rope.dimension_count").value_or(c.head_dim);
  auto scaling = k.opt_string("rope.scaling.type");
  if (scaling && *scaling != "none") {
    if (!t.rope_scaling)
      fail_key(file.path(), k.key("rope.scaling.type"),
               "to be absent or \"none\" (family " + family.name + " has no rope scaling)",
               "\"" + *scaling + "\"");
    RopeScalingConfig s;
    s.type = *scaling;
    auto factor = k.opt_f64("rope.scaling.factor");
    if (!factor) fail_key(file.path(), k.key("rope.scaling.factor"), "to be present");
    s.factor = *factor;
    s.original_context = k.opt_u64("rope.scaling.original_context_length");
    c.rope_scaling = s;
  }
  if (t.sliding_window) c.sliding_window = k.opt_u64("attention.sliding_window");

  if (family.multipliers) {
    const MultiplierKeys& m = *family.multipliers;
    c.embedding_multiplier = k.opt_f64(relative_key(m.embedding)).value_or(1.0);
    c.residual_multiplier = k.opt_f64(relative_key(m.residual)).value_or(1.0);
    c.attention_multiplier = k.opt_f64(relative_key(m.attention));
    c.logits_scaling = k.opt_f64(relative_key(m.logits)).value_or(1.0);
  }
  validate(c);
  return c;
}

ModelConfig config_from_hf(const formats::HfConfig& hf, const Family& family,
                           const std::string& source) {
  ModelConfig c;
  c.source = source;
  c.format = FileFormat::Safetensors;
  c.family = family.name;
  c.architecture = hf.model_type;
  c.hidden = hf.hidden_size;
  c.layers = hf.num_hidden_layers;
  c.heads = hf.num_attention_heads;
  c.kv_heads = hf.num_key_value_heads;
  c.ffn = hf.intermediate_size;
  c.vocab = hf.vocab_size;
  c.context = hf.max_position_embeddings.value_or(0);
  if (!hf.head_dim && c.heads != 0 && c.hidden % c.heads != 0)
    fail_key(source, "hidden_size",
             "to be a multiple of num_attention_heads (" + std::to_string(c.heads) +
                 ") when head_dim is absent",
             std::to_string(c.hidden));
  c.head_dim = hf.head_dim_or_default();

  const FamilyTraits& t = family.traits;
  c.norm = t.norm;
  c.activation = t.activation;
  // The family fixes the activation; a config naming another one would silently diverge
  // (HF "gelu" is the erf form, the family's Gelu the tanh approximation).
  if (hf.hidden_act) {
    static constexpr std::string_view kSilu[] = {"silu", "swish"};
    static constexpr std::string_view kGeluTanh[] = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast"};
    bool ok = false;
    for (std::string_view a :
         (t.activation == Activation::SiluGated ? std::span<const std::string_view>(kSilu)
                                                : std::span<const std::string_view>(kGeluTanh)))
      ok = ok || *hf.hidden_act == a;
    if (!ok)
      fail_key(
          source, "hidden_act",
          t.activation == Activation::SiluGated
              ? "to be \"silu\" (family " + family.name + ")"
              : "to be a tanh-approximated GELU (gelu_pytorch_tanh) (family " + family.name + ")",
          "\"" + *hf.hidden_act + "\"");
  }
  c.qk_norm = t.qk_norm;
  c.norm_eps = hf.norm_eps().value_or(family.hf_norm_eps);
  // attention_bias covers q/k/v/o (Llama, Mistral, Granite, Qwen3), mlp_bias the MLP, and
  // StarCoder2's use_bias everything; Qwen2's QKV bias is implicit in the family.
  c.qkv_bias = t.qkv_bias;
  c.attn_output_bias = t.attn_output_bias;
  c.ffn_bias = t.ffn_bias;
  if (hf.attention_bias) c.qkv_bias = c.attn_output_bias = *hf.attention_bias;
  if (hf.mlp_bias) c.ffn_bias = *hf.mlp_bias;
  if (hf.use_bias) c.qkv_bias = c.attn_output_bias = c.ffn_bias = *hf.use_bias;
  c.tied_embeddings = hf.tie_word_embeddings.value_or(t.tied_embeddings);

  c.rope_layout = family.rope_layout(FileFormat::Safetensors);
  c.rope_base = hf.rope_theta.value_or(family.hf_rope_theta);
  c.rope_dims = c.head_dim;
  if (hf.rope_scaling && hf.rope_scaling->type != "default") {
    if (!t.rope_scaling)
      fail_key(source, "rope_scaling",
               "to be null (family " + family.name + " has no rope scaling)",
               hf.rope_scaling->type);
    RopeScalingConfig s;
    s.type = hf.rope_scaling->type;
    if (!hf.rope_scaling->factor) fail_key(source, "rope_scaling.factor", "to be present");
    s.factor = *hf.rope_scaling->factor;
    s.original_context = hf.rope_scaling->original_max_position_embeddings;
    s.low_freq_factor = hf.rope_scaling->low_freq_factor;
    s.high_freq_factor = hf.rope_scaling->high_freq_factor;
    c.rope_scaling = s;
  }
  // Qwen2/Qwen3 write a sliding_window they do not use unless use_sliding_window is set.
  if (t.sliding_window && hf.sliding_window && hf.use_sliding_window.value_or(true))
    c.sliding_window = hf.sliding_window;

  if (family.multipliers) {
    c.embedding_multiplier = hf.embedding_multiplier.value_or(1.0);
    c.residual_multiplier = hf.residual_multiplier.value_or(1.0);
    c.attention_multiplier = hf.attention_multiplier;
    c.logits_scaling = hf.logits_scaling.value_or(1.0);
  }
  validate(c);
  return c;
}

void validate(const ModelConfig& c) {
  auto fail = [&](std::string_view field, const std::string& expected, const std::string& found) {
    fail_key(c.source, key_of(c, field), expected, found);
  };
  auto positive = [&](std::string_view field, uint64_t v) {
    if (v == 0) fail(field, "to be positive", "0");
  };
  positive("hidden", c.hidden);
  positive("layers", c.layers);
  positive("heads", c.heads);
  positive("kv_heads", c.kv_heads);
  positive("head_dim", c.head_dim);
  positive("ffn", c.ffn);
  positive("vocab", c.vocab);
  // Caps far above any real model keep width products and allocations from overflowing.
  constexpr uint64_t kMaxDim = 1u << 20;
  constexpr uint64_t kMaxVocab = 1u << 24;
  for (auto [field, v] : {std::pair<std::string_view, uint64_t>{"hidden", c.hidden},
                          {"heads", c.heads},
                          {"head_dim", c.head_dim},
                          {"ffn", c.ffn},
                          {"layers", c.layers}})
    if (v > kMaxDim) fail(field, "to be at most " + std::to_string(kMaxDim), std::to_string(v));
  if (c.vocab > kMaxVocab)
    fail("vocab", "to be at most " + std::to_string(kMaxVocab), std::to_string(c.vocab));
  if (c.heads % c.kv_heads != 0)
    fail("kv_heads", "to divide the head count " + std::to_string(c.heads),
         std::to_string(c.kv_heads));
  if (c.rope_dims == 0 || c.rope_dims > c.head_dim || c.rope_dims % 2 != 0)
    fail("rope_dims", "to be even and in [2, head_dim = " + std::to_string(c.head_dim) + "]",
         std::to_string(c.rope_dims));
  if (!(c.norm_eps > 0) || !std::isfinite(c.norm_eps))
    fail("norm_eps", "to be positive and finite", num(c.norm_eps));
  if (!(c.rope_base > 0) || !std::isfinite(c.rope_base))
    fail("rope_base", "to be positive and finite", num(c.rope_base));
  if (c.rope_scaling && (!(c.rope_scaling->factor > 0) || !std::isfinite(c.rope_scaling->factor)))
    fail("rope_scaling", "to be positive and finite", num(c.rope_scaling->factor));
  if (c.sliding_window && *c.sliding_window == 0) fail("sliding_window", "to be positive", "0");
  auto finite_nonzero = [&](std::string_view field, double v) {
    if (v == 0 || !std::isfinite(v)) fail(field, "to be finite and non-zero", num(v));
  };
  finite_nonzero("embedding_multiplier", c.embedding_multiplier);
  finite_nonzero("residual_multiplier", c.residual_multiplier);
  if (c.attention_multiplier) finite_nonzero("attention_multiplier", *c.attention_multiplier);
  finite_nonzero("logits_scaling", c.logits_scaling);
}

}  // namespace lockstep::engine
