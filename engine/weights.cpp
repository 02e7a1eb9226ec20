#include "engine/weights.h"

#include <algorithm>
#include <functional>

#include "formats/error.h"
#include "formats/hf_config.h"

namespace lockstep::engine {
namespace {

using Slot = std::optional<TensorRef>;

// Where each role lands: a whole-model field of Weights or a field of LayerWeights.
struct RoleSlot {
  WeightRole role;
  Slot Weights::*global;
  Slot LayerWeights::*layer;
};
constexpr RoleSlot kSlots[] = {
    {WeightRole::TokenEmbd, &Weights::token_embd, nullptr},
    {WeightRole::OutputNorm, &Weights::output_norm, nullptr},
    {WeightRole::OutputNormBias, &Weights::output_norm_bias, nullptr},
    {WeightRole::Output, &Weights::output, nullptr},
    {WeightRole::RopeFreqs, &Weights::rope_freqs, nullptr},
    {WeightRole::AttnNorm, nullptr, &LayerWeights::attn_norm},
    {WeightRole::AttnNormBias, nullptr, &LayerWeights::attn_norm_bias},
    {WeightRole::AttnQ, nullptr, &LayerWeights::attn_q},
    {WeightRole::AttnK, nullptr, &LayerWeights::attn_k},
    {WeightRole::AttnV, nullptr, &LayerWeights::attn_v},
    {WeightRole::AttnQBias, nullptr, &LayerWeights::attn_q_bias},
    {WeightRole::AttnKBias, nullptr, &LayerWeights::attn_k_bias},
    {WeightRole::AttnVBias, nullptr, &LayerWeights::attn_v_bias},
    {WeightRole::AttnQNorm, nullptr, &LayerWeights::attn_q_norm},
    {WeightRole::AttnKNorm, nullptr, &LayerWeights::attn_k_norm},
    {WeightRole::AttnOutput, nullptr, &LayerWeights::attn_output},
    {WeightRole::AttnOutputBias, nullptr, &LayerWeights::attn_output_bias},
    {WeightRole::FfnNorm, nullptr, &LayerWeights::ffn_norm},
    {WeightRole::FfnNormBias, nullptr, &LayerWeights::ffn_norm_bias},
    {WeightRole::FfnGate, nullptr, &LayerWeights::ffn_gate},
    {WeightRole::FfnGateBias, nullptr, &LayerWeights::ffn_gate_bias},
    {WeightRole::FfnUp, nullptr, &LayerWeights::ffn_up},
    {WeightRole::FfnUpBias, nullptr, &LayerWeights::ffn_up_bias},
    {WeightRole::FfnDown, nullptr, &LayerWeights::ffn_down},
    {WeightRole::FfnDownBias, nullptr, &LayerWeights::ffn_down_bias},
};
static_assert(std::size(kSlots) == kWeightRoleCount);

const RoleSlot& slot(WeightRole r) {
  return kSlots[static_cast<size_t>(r)];
}

std::string dims_text(const std::vector<uint64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Finds a tensor by name in one file format; nullopt when absent.
using Lookup = std::function<std::optional<TensorRef>(const std::string& name)>;

Weights bind_tensors(const Lookup& lookup, const std::string& file, FileFormat format,
                     const Family& family, const ModelConfig& config) {
  validate(config);
  Weights w;
  w.tied_embeddings = config.tied_embeddings;
  w.layers.resize(config.layers);
  auto resolve = [&](WeightRole role, uint32_t layer) {
    std::string name = family.tensor_name(format, role, layer);
    if (name.empty())
      throw Error(family.source.string(), Error::kNoOffset,
                  "a " + std::string(format == FileFormat::Gguf ? "gguf" : "hf") +
                      " tensor name for \"" + std::string(weight_role_name(role)) + "\"",
                  "none (needed by " + file + ")");
    std::optional<TensorRef> t = lookup(name);
    std::vector<uint64_t> want = expected_dims(config, role);
    if (!t) throw Error(file, Error::kNoOffset, "tensor " + name + " " + dims_text(want), "none");
    if (t->dims != want)
      throw Error(file, Error::kNoOffset, "tensor " + name + " of shape " + dims_text(want),
                  "shape " + dims_text(t->dims));
    if (!formats::ggml_type_info(t->type).has_codec)
      throw Error(file, Error::kNoOffset, "tensor " + name + " in a type Lockstep can dequantize",
                  std::string(formats::ggml_type_name(t->type)));
    return *t;
  };
  for (WeightRole role : required_roles(config)) {
    const RoleSlot& s = slot(role);
    if (s.global) {
      w.*s.global = resolve(role, 0);
    } else {
      for (uint32_t L = 0; L < config.layers; ++L) w.layers[L].*s.layer = resolve(role, L);
    }
  }
  if (config.tied_embeddings) w.output = w.token_embd;
  return w;
}

std::optional<formats::GgmlType> safetensors_type(const formats::SafetensorsTensor& t) {
  switch (t.dtype) {
    case formats::SafetensorsDtype::F32:
      return formats::GgmlType::F32;
    case formats::SafetensorsDtype::F16:
      return formats::GgmlType::F16;
    case formats::SafetensorsDtype::BF16:
      return formats::GgmlType::BF16;
    case formats::SafetensorsDtype::Other:
      return std::nullopt;
  }
  return std::nullopt;
}

}  // namespace

uint64_t TensorRef::elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

const TensorRef* Weights::find(WeightRole role, uint32_t layer) const {
  const RoleSlot& s = slot(role);
  const Slot* p = nullptr;
  if (s.global) {
    p = &(this->*s.global);
  } else if (layer < layers.size()) {
    p = &(layers[layer].*s.layer);
  }
  return p && *p ? &**p : nullptr;
}

std::vector<WeightRole> required_roles(const ModelConfig& c) {
  using R = WeightRole;
  std::vector<R> r{R::TokenEmbd, R::OutputNorm, R::AttnNorm, R::AttnQ, R::AttnK,
                   R::AttnV,     R::AttnOutput, R::FfnNorm,  R::FfnUp, R::FfnDown};
  if (!c.tied_embeddings) r.push_back(R::Output);
  if (c.rope_freq_factors) r.push_back(R::RopeFreqs);
  if (c.norm == NormKind::Layer)
    r.insert(r.end(), {R::OutputNormBias, R::AttnNormBias, R::FfnNormBias});
  if (c.qkv_bias) r.insert(r.end(), {R::AttnQBias, R::AttnKBias, R::AttnVBias});
  if (c.qk_norm) r.insert(r.end(), {R::AttnQNorm, R::AttnKNorm});
  if (c.attn_output_bias) r.push_back(R::AttnOutputBias);
  bool gated = c.activation == Activation::SiluGated;
  if (gated) r.push_back(R::FfnGate);
  if (c.ffn_bias) r.insert(r.end(), {R::FfnUpBias, R::FfnDownBias});
  if (c.ffn_bias && gated) r.push_back(R::FfnGateBias);
  std::sort(r.begin(), r.end());
  return r;
}

std::vector<uint64_t> expected_dims(const ModelConfig& c, WeightRole role) {
  using R = WeightRole;
  switch (role) {
    case R::TokenEmbd:
    case R::Output:
      return {c.hidden, c.vocab};
    case R::OutputNorm:
    case R::OutputNormBias:
    case R::AttnNorm:
    case R::AttnNormBias:
    case R::AttnOutputBias:
    case R::FfnNorm:
    case R::FfnNormBias:
    case R::FfnDownBias:
      return {c.hidden};
    case R::AttnQ:
      return {c.hidden, c.q_dim()};
    case R::AttnK:
    case R::AttnV:
      return {c.hidden, c.kv_dim()};
    case R::AttnQBias:
      return {c.q_dim()};
    case R::AttnKBias:
    case R::AttnVBias:
      return {c.kv_dim()};
    case R::RopeFreqs:
      return {c.rope_dims / 2};
    case R::AttnQNorm:
    case R::AttnKNorm:
      return {c.head_dim};
    case R::AttnOutput:
      return {c.q_dim(), c.hidden};
    case R::FfnGate:
    case R::FfnUp:
      return {c.hidden, c.ffn};
    case R::FfnGateBias:
    case R::FfnUpBias:
      return {c.ffn};
    case R::FfnDown:
      return {c.ffn, c.hidden};
  }
  return {};
}

Weights bind_gguf(const formats::GgufFile& file, const Family& family, const ModelConfig& config) {
  Lookup lookup = [&](const std::string& name) -> std::optional<TensorRef> {
    const formats::GgufTensorInfo* t = file.find_tensor(name);
    if (!t) return std::nullopt;
    return TensorRef{t->name, t->type, t->dims, file.tensor_data(*t)};
  };
  return bind_tensors(lookup, file.path(), FileFormat::Gguf, family, config);
}

Weights bind_safetensors(const formats::SafetensorsModel& model, const Family& family,
                         const ModelConfig& config) {
  std::string where = model.files().empty() ? std::string() : model.files().front().path();
  Lookup lookup = [&](const std::string& name) -> std::optional<TensorRef> {
    auto ref = model.find(name);
    if (!ref) return std::nullopt;
    const formats::SafetensorsTensor& t = *ref->tensor;
    auto type = safetensors_type(t);
    if (!type)
      throw Error(ref->file->path(), Error::kNoOffset, "tensor " + name + " in F32, F16 or BF16",
                  t.dtype_name);
    // safetensors shapes are row-major [out, in]; ggml order lists the innermost first.
    std::vector<uint64_t> dims(t.shape.rbegin(), t.shape.rend());
    return TensorRef{t.name, *type, std::move(dims), ref->file->data(t)};
  };
  return bind_tensors(lookup, where, FileFormat::Safetensors, family, config);
}

Model open_model(const std::filesystem::path& path, const FamilyRegistry& families) {
  Model m;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    std::filesystem::path cfg_path = path / "config.json";
    formats::HfConfig hf = formats::read_hf_config(cfg_path);
    m.family = families.require_hf(hf.model_type, cfg_path.string());
    m.config = config_from_hf(hf, m.family, cfg_path.string());
    m.safetensors =
        std::make_shared<const formats::SafetensorsModel>(formats::SafetensorsModel::open(path));
    m.weights = bind_safetensors(*m.safetensors, m.family, m.config);
  } else {
    m.gguf = std::make_shared<const formats::GgufFile>(formats::GgufFile::open(path.string()));
    auto arch = m.gguf->get_string("general.architecture");
    if (!arch)
      throw Error(path.string(), Error::kNoOffset, "a string general.architecture", "none");
    m.family = families.require_gguf(*arch, path.string());
    m.config = config_from_gguf(*m.gguf, m.family);
    m.weights = bind_gguf(*m.gguf, m.family, m.config);
  }
  m.plan = build_plan(m.config);
  return m;
}

}  // namespace lockstep::engine
