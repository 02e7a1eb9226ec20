#include "engine/synthetic_model.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <mutex>
#include <numbers>
#include <thread>

#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "formats/error.h"
#include "formats/ggml_codec.h"
#include "formats/gguf.h"

namespace lockstep::engine {
namespace {

using formats::GgmlType;
using formats::GgufValue;
using formats::GgufValueType;

struct MixInfo {
  QuantMix mix;
  std::string_view name;
  GgmlType base;
  uint32_t file_type;  // llama_ftype
};
constexpr std::array<MixInfo, 15> kMixes{{
    {QuantMix::F32, "F32", GgmlType::F32, 0},
    {QuantMix::F16, "F16", GgmlType::F16, 1},
    {QuantMix::BF16, "BF16", GgmlType::BF16, 32},
    {QuantMix::Q8_0, "Q8_0", GgmlType::Q8_0, 7},
    {QuantMix::Q4_0, "Q4_0", GgmlType::Q4_0, 2},
    {QuantMix::Q4_1, "Q4_1", GgmlType::Q4_1, 3},
    {QuantMix::Q5_0, "Q5_0", GgmlType::Q5_0, 8},
    {QuantMix::Q5_1, "Q5_1", GgmlType::Q5_1, 9},
    {QuantMix::Q2_K, "Q2_K", GgmlType::Q2_K, 10},
    {QuantMix::Q3_K_S, "Q3_K_S", GgmlType::Q3_K, 11},
    {QuantMix::Q4_K_S, "Q4_K_S", GgmlType::Q4_K, 14},
    {QuantMix::Q4_K_M, "Q4_K_M", GgmlType::Q4_K, 15},
    {QuantMix::Q5_K_S, "Q5_K_S", GgmlType::Q5_K, 16},
    {QuantMix::Q5_K_M, "Q5_K_M", GgmlType::Q5_K, 17},
    {QuantMix::Q6_K, "Q6_K", GgmlType::Q6_K, 18},
}};

const MixInfo& mix_info(QuantMix m) {
  return kMixes[static_cast<size_t>(m)];
}

std::string upper(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return r;
}

// llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between.
bool use_more_bits(uint64_t i, uint64_t n) {
  return i < n / 8 || i >= 7 * n / 8 || (i >= n / 8 && (i - n / 8) % 3 == 2);
}

bool is_float_type(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16;
}

GgmlType row_fallback(GgmlType t, uint64_t row) {
  const uint32_t block = formats::ggml_type_info(t).block_elems;
  if (row % block == 0) return t;
  switch (t) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
      t = GgmlType::Q4_0;
      break;
    case GgmlType::Q4_K:
      t = GgmlType::Q5_0;
      break;
    case GgmlType::Q5_K:
      t = GgmlType::Q5_1;
      break;
    case GgmlType::Q6_K:
      t = GgmlType::Q8_0;
      break;
    default:
      break;
  }
  return row % formats::ggml_type_info(t).block_elems == 0 ? t : GgmlType::F16;
}

// splitmix64: a counter-based generator, so any element can be drawn without the ones before.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t name_hash(std::string_view s) {  // FNV-1a: stable across platforms and runs
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h;
}

// How a tensor's values are drawn: mean + scale * z, z ~ N(0,1), or mean + scale * U(-1,1).
struct Init {
  double mean = 0;
  double scale = 1;
  bool uniform = false;
};

// Uniform in (0, 1) from 24 random bits, offset by half a step so log() never sees 0 (normals
// are thereby truncated at ~5.9 sigma, harmless for weights).
float unit24(uint64_t bits) {
  return (static_cast<float>(bits & 0xFFFFFF) + 0.5f) * 0x1.0p-24f;
}

// Elements [first, first + out.size()) of the tensor keyed `key`. One splitmix64 per pair of
// elements: its two 24-bit halves feed Box-Muller in float (double libm calls made generation,
// not quantization, the bottleneck).
void generate(uint64_t key, const Init& init, uint64_t first, std::span<float> out) {
  const float mean = static_cast<float>(init.mean), scale = static_cast<float>(init.scale);
  for (size_t i = 0; i < out.size();) {
    const uint64_t e = first + i;
    const uint64_t a = splitmix64(key + (e >> 1));
    if (init.uniform) {
      out[i++] = mean + scale * (2.0f * unit24(e & 1 ? a >> 32 : a) - 1.0f);
      continue;
    }
    // Box-Muller gives two normals per pair of uniforms: elements 2p and 2p+1.
    const float r = std::sqrt(-2.0f * std::log(unit24(a)));
    const float theta = 2.0f * std::numbers::pi_v<float> * unit24(a >> 32);
    if ((e & 1) == 0) {
      out[i++] = mean + scale * r * std::cos(theta);
      if (i < out.size()) out[i++] = mean + scale * r * std::sin(theta);
    } else {
      out[i++] = mean + scale * r * std::sin(theta);
    }
  }
}

Init init_for(const SyntheticTensor& t, const ModelConfig& c, double qk_gain) {
  using R = WeightRole;
  switch (t.role) {
    case R::OutputNorm:
    case R::AttnNorm:
    case R::FfnNorm:
    case R::AttnQNorm:
    case R::AttnKNorm:
      return {1.0, 0.1, true};
    case R::TokenEmbd: {
      double sigma = c.tied_embeddings ? std::pow(static_cast<double>(c.hidden), -0.25) : 1.0;
      return {0.0, sigma / c.embedding_multiplier, false};
    }
    case R::RopeFreqs:
      return {1.0, 0.0, true};
    default:
      break;
  }
  if (t.dims.size() == 1) return {0.0, 0.02, false};  // biases
  double scale = 1.0 / std::sqrt(static_cast<double>(t.dims[0]));
  if (t.role == R::AttnOutput || t.role == R::FfnDown)
    scale /= std::sqrt(2.0 * static_cast<double>(c.layers));
  if (t.role == R::Output) scale *= c.logits_scaling;  // Granite divides logits by it
  if (t.role == R::AttnQ || t.role == R::AttnK) scale *= qk_gain;
  return {0.0, scale, false};
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

[[noreturn]] void bad_option(const std::string& what) {
  throw Error("gen-model: " + what);
}

// SentencePiece-style byte vocab: <unk>, <s>, </s>, <0x00>..<0xFF>, then filler pieces
// ("▁", "▁a", "a", "▁b", ..., then longer lowercase strings) with decreasing scores.
void set_byte_vocab(formats::GgufWriter& w, uint64_t vocab) {
  std::vector<GgufValue> tokens, scores, types;
  tokens.reserve(vocab);
  auto add = [&](std::string text, float score, TokenType type) {
    tokens.push_back(GgufValue::str(std::move(text)));
    scores.push_back(GgufValue::f32(score));
    types.push_back(GgufValue::i32(static_cast<int32_t>(type)));
  };
  add("<unk>", 0.0f, TokenType::Unknown);
  add("<s>", 0.0f, TokenType::Control);
  add("</s>", 0.0f, TokenType::Control);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0.0f, TokenType::Byte);
  }
  // "▁" alone (so a space never falls back to bytes), then strings over a..z of growing
  // length, each once with and once without the "▁" prefix.
  float score = -1.0f;
  if (tokens.size() < vocab) add("\xE2\x96\x81", score, TokenType::Normal);
  score -= 1.0f;
  std::vector<int> digits{0};
  while (tokens.size() < vocab) {
    std::string s;
    for (int d : digits) s += static_cast<char>('a' + d);
    add("\xE2\x96\x81" + s, score, TokenType::Normal);
    score -= 1.0f;
    if (tokens.size() < vocab) add(s, score, TokenType::Normal);
    score -= 1.0f;
    size_t k = 0;  // odometer increment; a carry past the last digit grows the length
    while (k < digits.size() && ++digits[k] == 26) digits[k++] = 0;
    if (k == digits.size()) digits.push_back(0);
  }
  w.set("tokenizer.ggml.model", GgufValue::str("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::array(GgufValueType::String, std::move(tokens)));
  w.set("tokenizer.ggml.scores", GgufValue::array(GgufValueType::Float32, std::move(scores)));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufValueType::Int32, std::move(types)));
  w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(0));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(1));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(2));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(true));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
}

constexpr uint64_t kByteVocab = 3 + 256;

uint64_t borrowed_vocab(const formats::GgufFile& f) {
  const GgufValue* t = f.find("tokenizer.ggml.tokens");
  if (!t || !t->as_array())
    throw Error(f.path(), Error::kNoOffset, "tokenizer.ggml.tokens (a tokenizer to borrow)",
                "none");
  return t->as_array()->items.size();
}

// Encodes rows [row0, row1) of `t` into `dst` (the whole tensor's bytes).
void encode_rows(const SyntheticTensor& t, uint64_t key, const Init& init, uint64_t row0,
                 uint64_t row1, std::span<std::byte> dst, const std::atomic<bool>* cancel) {
  const uint64_t n = t.dims[0];
  const uint64_t row_bytes = *formats::ggml_bytes(t.type, n);
  // A chunk of rows at a time keeps the float buffer small (~256 KiB).
  const uint64_t chunk = std::max<uint64_t>(1, (64 * 1024) / n);
  std::vector<float> buf;
  for (uint64_t r = row0; r < row1; r += chunk) {
    if (cancel && cancel->load(std::memory_order_relaxed)) return;
    uint64_t rows = std::min(chunk, row1 - r);
    buf.resize(rows * n);
    generate(key, init, r * n, buf);
    formats::quantize(t.type, buf, dst.subspan(r * row_bytes, rows * row_bytes));
  }
}

}  // namespace

std::string_view quant_mix_name(QuantMix m) {
  return mix_info(m).name;
}

std::optional<QuantMix> parse_quant_mix(std::string_view name) {
  std::string u = upper(name);
  if (u == "Q3_K") return QuantMix::Q3_K_S;
  for (const MixInfo& m : kMixes)
    if (m.name == u) return m.mix;
  return std::nullopt;
}

std::vector<std::string> quant_mix_names() {
  std::vector<std::string> v;
  for (const MixInfo& m : kMixes) v.emplace_back(m.name);
  return v;
}

uint32_t llama_file_type(QuantMix m) {
  return mix_info(m).file_type;
}

GgmlType mix_tensor_type(QuantMix mix, WeightRole role, uint32_t layer, const ModelConfig& c,
                         uint64_t row_length) {
  using R = WeightRole;
  const GgmlType base = mix_info(mix).base;
  const bool is_matrix = role == R::TokenEmbd || role == R::Output || role == R::AttnQ ||
                         role == R::AttnK || role == R::AttnV || role == R::AttnOutput ||
                         role == R::FfnGate || role == R::FfnUp || role == R::FfnDown;
  if (!is_matrix) return GgmlType::F32;
  GgmlType t = base;
  const bool lm_head = role == R::Output || (role == R::TokenEmbd && c.tied_embeddings);
  if (is_float_type(base)) return row_fallback(t, row_length);
  if (lm_head) {
    if (base != GgmlType::Q8_0) t = GgmlType::Q6_K;
  } else if (role == R::AttnV) {
    if ((mix == QuantMix::Q4_K_M || mix == QuantMix::Q5_K_M) && use_more_bits(layer, c.layers))
      t = GgmlType::Q6_K;
    else if (mix == QuantMix::Q4_K_S && layer < 4)
      t = GgmlType::Q5_K;
    else if (mix == QuantMix::Q2_K)
      t = c.gqa_ratio() >= 4 ? GgmlType::Q4_K : GgmlType::Q3_K;
  } else if (role == R::FfnDown) {
    if ((mix == QuantMix::Q4_K_M || mix == QuantMix::Q5_K_M) && use_more_bits(layer, c.layers))
      t = GgmlType::Q6_K;
    else if (mix == QuantMix::Q4_K_S && layer < c.layers / 8)
      t = GgmlType::Q5_K;
    else if (mix == QuantMix::Q2_K)
      t = GgmlType::Q3_K;
  }
  return row_fallback(t, row_length);
}

SyntheticPlan plan_synthetic_model(const SyntheticModelOptions& o, const FamilyRegistry& families) {
  const Family* requested = families.find_name(o.family);
  if (!requested) {
    std::vector<std::string> names;
    for (const Family& f : families.families()) names.push_back(f.name);
    bad_option("unknown --family \"" + o.family + "\" (supported: " + join(names) + ")");
  }
  SyntheticPlan plan;
  plan.family = requested;
  if (requested->gguf_architectures.empty()) {
    plan.family = families.find_gguf("llama");
    if (!plan.family)
      bad_option("family " + o.family + " has no GGUF architecture and no llama family to use");
  }
  const Family& fam = *plan.family;

  auto positive = [](uint64_t v, const char* opt) {
    if (v == 0) bad_option(std::string(opt) + " must be positive");
  };
  positive(o.hidden, "--hidden");
  positive(o.layers, "--layers");
  positive(o.heads, "--heads");
  positive(o.kv_heads, "--kv-heads");
  positive(o.ffn, "--ffn");
  if (o.heads % o.kv_heads != 0)
    bad_option("--heads " + std::to_string(o.heads) + " is not a multiple of --kv-heads " +
               std::to_string(o.kv_heads));
  if (o.head_dim == 0 && o.hidden % o.heads != 0)
    bad_option("--hidden " + std::to_string(o.hidden) + " is not a multiple of --heads " +
               std::to_string(o.heads) + " (give --head-dim)");
  if (o.threads == 0) bad_option("threads must be positive");
  if (!(o.qk_gain > 0.0 && o.qk_gain < 1e6))
    bad_option("--qk-gain must be a positive number below 1e6, got " + std::to_string(o.qk_gain));

  uint64_t vocab = o.vocab;
  if (!o.tokenizer_from.empty()) {
    formats::GgufFile tok = formats::GgufFile::open(o.tokenizer_from.string());
    uint64_t n = borrowed_vocab(tok);
    if (vocab == 0) vocab = n;
    if (vocab != n)
      bad_option("--vocab " + std::to_string(vocab) + " does not match the " + std::to_string(n) +
                 " tokens of the tokenizer in " + o.tokenizer_from.string());
  } else if (vocab < kByteVocab) {
    bad_option("--vocab " + std::to_string(vocab) + " is too small for the synthetic byte vocab (" +
               "at least " + std::to_string(kByteVocab) + ": <unk>, <s>, </s>, 256 bytes)");
  }

  ModelConfig& c = plan.config;
  c.source = o.out.string();
  c.format = FileFormat::Gguf;
  c.family = fam.name;
  c.architecture = fam.gguf_architectures.front();
  c.hidden = o.hidden;
  c.layers = o.layers;
  c.heads = o.heads;
  c.kv_heads = o.kv_heads;
  c.head_dim = o.head_dim ? o.head_dim : o.hidden / o.heads;
  c.ffn = o.ffn;
  c.vocab = vocab;
  c.context = o.context;
  const FamilyTraits& t = fam.traits;
  c.norm = t.norm;
  c.norm_eps = requested->hf_norm_eps;
  c.activation = t.activation;
  c.qkv_bias = t.qkv_bias;
  c.attn_output_bias = t.attn_output_bias;
  c.ffn_bias = t.ffn_bias;
  c.qk_norm = t.qk_norm;
  c.tied_embeddings = o.tied_embeddings.value_or(requested->traits.tied_embeddings);
  c.rope_layout = fam.rope_layout(FileFormat::Gguf);
  c.rope_base = requested->hf_rope_theta;
  c.rope_dims = c.head_dim;
  if (fam.multipliers) {
    // Granite 3.x's values: attention scale 1/head_dim instead of 1/sqrt(head_dim).
    c.embedding_multiplier = 12.0;
    c.residual_multiplier = 0.22;
    c.attention_multiplier = 1.0 / static_cast<double>(c.head_dim);
    c.logits_scaling = 8.0;
  }
  validate(c);

  for (WeightRole role : required_roles(c)) {
    const WeightRoleInfo& info = weight_role_info(role);
    for (uint32_t L = 0; L < (info.per_layer ? c.layers : 1); ++L) {
      SyntheticTensor st;
      st.role = role;
      st.layer = L;
      st.name = fam.tensor_name(FileFormat::Gguf, role, L);
      if (st.name.empty())
        bad_option("family " + fam.name + " names no GGUF tensor for " + std::string(info.key));
      st.dims = expected_dims(c, role);
      st.type = mix_tensor_type(o.mix, role, L, c, st.dims[0]);
      uint64_t elems = 1;
      for (uint64_t d : st.dims) elems *= d;
      st.bytes = *formats::ggml_bytes(st.type, elems);
      plan.tensors.push_back(std::move(st));
    }
  }
  // llama.cpp's order: whole-model tensors, then layer by layer.
  std::stable_sort(plan.tensors.begin(), plan.tensors.end(),
                   [](const SyntheticTensor& a, const SyntheticTensor& b) {
                     bool ga = !weight_role_info(a.role).per_layer;
                     bool gb = !weight_role_info(b.role).per_layer;
                     if (ga != gb) return ga;
                     return a.layer < b.layer;
                   });
  return plan;
}

SyntheticSummary write_synthetic_model(const SyntheticModelOptions& o,
                                       const FamilyRegistry& families,
                                       const SyntheticProgressFn& progress,
                                       const std::atomic<bool>* cancel) {
  const auto start = std::chrono::steady_clock::now();
  SyntheticPlan plan = plan_synthetic_model(o, families);
  const ModelConfig& c = plan.config;
  if (o.out.empty()) bad_option("no output path (--out)");

  formats::GgufWriter w(o.out.string());
  const std::string a = c.architecture + ".";
  auto u32 = [](uint64_t v) { return GgufValue::u32(static_cast<uint32_t>(v)); };
  w.set("general.architecture", GgufValue::str(c.architecture));
  w.set("general.name", GgufValue::str("lockstep synthetic " + o.family));
  w.set("general.file_type", GgufValue::u32(llama_file_type(o.mix)));
  w.set("general.quantization_version", GgufValue::u32(2));
  w.set("lockstep.synthetic.seed", GgufValue::u64(o.seed));
  if (o.qk_gain != 1.0) w.set("lockstep.synthetic.qk_gain", GgufValue::f32(static_cast<float>(o.qk_gain)));
  w.set(a + "block_count", u32(c.layers));
  w.set(a + "context_length", u32(c.context));
  w.set(a + "embedding_length", u32(c.hidden));
  w.set(a + "feed_forward_length", u32(c.ffn));
  w.set(a + "attention.head_count", u32(c.heads));
  w.set(a + "attention.head_count_kv", u32(c.kv_heads));
  if (c.head_dim * c.heads != c.hidden) {
    w.set(a + "attention.key_length", u32(c.head_dim));
    w.set(a + "attention.value_length", u32(c.head_dim));
  }
  w.set(a + (c.norm == NormKind::Rms ? "attention.layer_norm_rms_epsilon"
                                     : "attention.layer_norm_epsilon"),
        GgufValue::f32(static_cast<float>(c.norm_eps)));
  w.set(a + "rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_base)));
  w.set(a + "rope.dimension_count", u32(c.rope_dims));
  w.set(a + "vocab_size", u32(c.vocab));
  if (plan.family->multipliers) {
    const MultiplierKeys& m = *plan.family->multipliers;
    auto key = [&](const std::string& templ) {
      const std::string prefix = "{arch}.";
      return templ.rfind(prefix, 0) == 0 ? a + templ.substr(prefix.size()) : templ;
    };
    w.set(key(m.embedding), GgufValue::f32(static_cast<float>(c.embedding_multiplier)));
    w.set(key(m.residual), GgufValue::f32(static_cast<float>(c.residual_multiplier)));
    w.set(key(m.attention), GgufValue::f32(static_cast<float>(*c.attention_multiplier)));
    w.set(key(m.logits), GgufValue::f32(static_cast<float>(c.logits_scaling)));
  }
  if (o.tokenizer_from.empty()) {
    set_byte_vocab(w, c.vocab);
  } else {
    formats::GgufFile tok = formats::GgufFile::open(o.tokenizer_from.string());
    for (const auto& [k, v] : tok.metadata())
      if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
  }

  uint64_t total = 0;
  for (const SyntheticTensor& t : plan.tensors) {
    w.add_tensor(t.name, t.type, t.dims);
    total += t.bytes;
  }

  auto cancelled = [&] { return cancel && cancel->load(std::memory_order_relaxed); };
  const uint64_t seed_key = splitmix64(o.seed);
  std::vector<std::byte> bytes;  // one tensor's encoded bytes, reused
  uint64_t done = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const SyntheticTensor& t = plan.tensors[i];
    if (cancelled()) throw Error("gen-model: cancelled; " + o.out.string() + " not written");
    const uint64_t key = splitmix64(seed_key ^ name_hash(t.name));
    const Init init = init_for(t, c, o.qk_gain);
    const uint64_t rows = t.dims.size() == 1 ? 1 : t.dims[1];
    SyntheticTensor flat = t;  // 1-D tensors are one row
    if (t.dims.size() == 1) flat.dims = {t.dims[0], 1};
    bytes.resize(t.bytes);
    const unsigned threads =
        rows * t.dims[0] < (1u << 16) ? 1 : std::min<uint64_t>(o.threads, rows);
    std::vector<std::thread> pool;
    std::exception_ptr failure;  // a worker's exception, rethrown here
    std::mutex failure_mutex;
    for (unsigned k = 1; k < threads; ++k)
      pool.emplace_back([&, k] {
        try {
          encode_rows(flat, key, init, rows * k / threads, rows * (k + 1) / threads, bytes, cancel);
        } catch (...) {
          std::lock_guard lock(failure_mutex);
          failure = std::current_exception();
        }
      });
    try {
      encode_rows(flat, key, init, 0, rows / threads, bytes, cancel);
    } catch (...) {
      std::lock_guard lock(failure_mutex);
      failure = std::current_exception();
    }
    for (std::thread& th : pool) th.join();
    if (failure) std::rethrow_exception(failure);
    if (cancelled()) throw Error("gen-model: cancelled; " + o.out.string() + " not written");
    w.write_tensor(bytes);
    done += t.bytes;
    if (progress) progress({i + 1, plan.tensors.size(), t.name, done, total});
  }
  w.finish();

  SyntheticSummary s;
  s.file_bytes = std::filesystem::file_size(o.out);
  s.tensors = plan.tensors.size();
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return s;
}

}  // namespace lockstep::engine
