#include "cuda/cuda_lane.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/device_buffer.cuh"
#include "cuda/kernels.cuh"
#include "engine/rope.h"
#include "formats/error.h"
#include "formats/ggml_codec.h"

namespace lockstep::cuda {

using engine::Node;
using engine::Op;
using engine::QkvPart;
using formats::GgmlType;

namespace {

constexpr const char* kLane = "cuda";

// A weight on the device: a matrix [rows, cols] in its stored type, or a vector as f32.
struct DeviceWeight {
  DeviceBuffer data;
  GgmlType type = GgmlType::F32;
  uint64_t rows = 1, cols = 0;
};

// Nodes the Embed and MatMul ops read as matrices in their stored type; every other weight
// (norm weights, biases) is a vector kept as f32. Rope's rope_freqs is folded into inv_freq.
bool reads_matrices(Op op) { return op == Op::Embed || op == Op::MatMul; }

}  // namespace

struct CudaLane::Impl {
  int device = 0;
  bool poison = false;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;  // node outputs, recycled in stream order
  // By the address of the tensor's bytes in the file (tied embeddings share one), and whether
  // it is kept as a matrix.
  std::map<std::pair<const std::byte*, bool>, DeviceWeight> weights;
  DeviceBuffer inv_freq;        // [rope_dims / 2] double
  std::vector<size_t> last_use;  // per node: the last node reading its output
  struct LayerCache {
    DeviceBuffer k, v;  // [capacity, kv_dim]  K after RoPE
    uint64_t capacity = 0;
  };
  std::vector<LayerCache> cache;  // [layers]
  // Capture targets, one per captured cell of a forward, kept across forwards (page-locking is
  // slow); a slot is reused only after the stream has been synchronized.
  std::vector<PinnedBuffer> staging;
  // The planted fault, resolved at load: its kind and, per node, whether it is corrupted.
  std::optional<engine::FaultKind> fault;
  std::vector<bool> faulted;  // [nodes]
  // gemv_transposed: per weight of a faulted matmul, an f32 copy laid out wrongly (as the cpu
  // lane's), by the address of the tensor's bytes.
  std::map<const std::byte*, DeviceWeight> miswired;

  bool faulty(const Node& node, engine::FaultKind kind) const {
    return fault == kind && faulted[node.index];
  }

  ~Impl() {
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    if (pool) cudaMemPoolDestroy(pool);
  }

  float* alloc(uint64_t floats) {
    void* p = nullptr;
    LOCKSTEP_CUDA_CHECK(
        cudaMallocFromPoolAsync(&p, std::max<uint64_t>(floats, 1) * sizeof(float), pool, stream));
    if (poison) LOCKSTEP_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, floats * sizeof(float), stream));
    return static_cast<float*>(p);
  }
  void release(float*& p) {
    if (p) cudaFreeAsync(p, stream);  // never throws: may run while an error unwinds
    p = nullptr;
  }

  const DeviceWeight& weight(const engine::Model& m, const engine::WeightRef& ref, bool matrix,
                             const Node& node) const {
    const engine::TensorRef* t = m.weights.find(ref);
    auto it = t ? weights.find({t->data.data(), matrix}) : weights.end();
    if (it == weights.end())
      engine::fail_node(kLane, node,
                        "weight " + std::string(engine::weight_role_name(ref.role)) +
                            " is not loaded");
    return it->second;
  }

  // Grows every layer's cache to hold `ctx` rows, keeping the first `keep`.
  void reserve_cache(uint64_t ctx, uint64_t keep, uint64_t kv_dim) {
    for (LayerCache& lc : cache) {
      if (lc.capacity >= ctx) continue;
      const uint64_t cap = std::max<uint64_t>({ctx, 2 * lc.capacity, 64});
      DeviceBuffer k(cap * kv_dim * sizeof(float)), v(cap * kv_dim * sizeof(float));
      if (keep > 0) {
        const size_t bytes = keep * kv_dim * sizeof(float);
        LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(k.get(), lc.k.get(), bytes, cudaMemcpyDeviceToDevice, stream));
        LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(v.get(), lc.v.get(), bytes, cudaMemcpyDeviceToDevice, stream));
        LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(stream));  // before the old buffers go
      }
      lc.k = std::move(k);
      lc.v = std::move(v);
      lc.capacity = cap;
    }
  }

  // Runs one node for n tokens at positions pos.. over ctx keys. `in`: device inputs (each
  // [tokens, width], or [heads, tokens, ctx]); `ids`: device token ids (Embed); k/v: the
  // context's keys and values, rows of the given strides (attention nodes). y: the output.
  void run_node(const engine::Model& m, const Node& node, std::span<float* const> in,
                const int32_t* ids, uint64_t n, uint64_t pos, uint64_t ctx, const float* k,
                uint64_t k_stride, const float* v, uint64_t v_stride, float* y) const;
};

void CudaLane::Impl::run_node(const engine::Model& m, const Node& node, std::span<float* const> in,
                              const int32_t* ids, uint64_t n, uint64_t pos, uint64_t ctx,
                              const float* k, uint64_t k_stride, const float* v, uint64_t v_stride,
                              float* y) const {
  const engine::ModelConfig& c = m.config;
  const uint64_t width = node.width, hd = c.head_dim, q_dim = c.q_dim();
  const auto eps = static_cast<float>(
      faulty(node, engine::FaultKind::RmsEpsWrong) ? engine::kWrongNormEps : c.norm_eps);
  const auto scale = static_cast<float>(node.scale);
  auto input_width = [&](size_t i) { return m.plan.nodes.at(node.inputs.at(i)).width; };
  auto vec = [&](const engine::WeightRef& ref) {
    return weight(m, ref, false, node).data.as<const float>();
  };
  kernels::AttnShape shape{c.heads, c.kv_heads, hd, n, ctx, pos, c.sliding_window.value_or(0)};
  shape.interleaved_heads = faulty(node, engine::FaultKind::GqaHeadMap);
  shape.lagged_slots = faulty(node, engine::FaultKind::KvCacheOffByOne);

  switch (node.op) {
    case Op::Embed: {
      const DeviceWeight& e = weight(m, node.weights.at(0), true, node);  // [vocab, hidden]
      if (e.cols != width) engine::fail_node(kLane, node, "embedding rows are not the hidden width");
      kernels::embed(e.type, e.data.get(), e.cols, ids, n, scale, y, stream);
      break;
    }
    case Op::RmsNorm:
      kernels::rms_norm(in[0], y, vec(node.weights.at(0)), n, width, 1, width, 0, eps, stream);
      break;
    case Op::LayerNorm:
      kernels::layer_norm(in[0], y, vec(node.weights.at(0)), vec(node.biases.at(0)), n, width, eps,
                          stream);
      break;
    case Op::MatMul:
    case Op::AddBias: {
      if (node.op == Op::MatMul) {
        const uint64_t in_w = input_width(0);
        uint64_t col = 0;
        const bool transposed = faulty(node, engine::FaultKind::GemvTransposed);
        for (const engine::WeightRef& ref : node.weights) {
          const DeviceWeight& w = transposed ? miswired.at(m.weights.find(ref)->data.data())
                                             : weight(m, ref, true, node);  // [out, in]
          if (w.cols != in_w || col + w.rows > width)
            engine::fail_node(kLane, node,
                              "weight " + std::string(engine::weight_role_name(ref.role)) +
                                  " of [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                  "] does not fit input width " + std::to_string(in_w) +
                                  " and output width " + std::to_string(width));
          kernels::matmul(w.type, w.data.get(), w.rows, w.cols, in[0], n, y, width, col, stream);
          col += w.rows;
        }
        if (col != width) engine::fail_node(kLane, node, "matrices give width " + std::to_string(col));
      } else {
        LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(y, in[0], n * width * sizeof(float),
                                            cudaMemcpyDeviceToDevice, stream));
      }
      if (faulty(node, engine::FaultKind::DropQkvBias)) {
        if (node.scale != 1.0) kernels::bias_scale(y, n, width, 0, width, nullptr, scale, stream);
      } else if (!node.biases.empty()) {
        uint64_t total = 0;
        for (const engine::WeightRef& ref : node.biases) total += weight(m, ref, false, node).cols;
        if (total != width) engine::fail_node(kLane, node, "biases give width " + std::to_string(total));
        uint64_t col = 0;
        for (const engine::WeightRef& ref : node.biases) {
          const DeviceWeight& b = weight(m, ref, false, node);
          kernels::bias_scale(y, n, width, col, b.cols, b.data.as<const float>(), scale, stream);
          col += b.cols;
        }
      } else if (node.scale != 1.0) {
        kernels::bias_scale(y, n, width, 0, width, nullptr, scale, stream);
      }
      break;
    }
    case Op::QkNorm: {
      // [tokens, q_dim + 2·kv_dim]: each Q and K head normed as a row of head_dim; V passes.
      const auto qk_eps = static_cast<float>(c.norm_eps);
      LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(y, in[0], n * width * sizeof(float),
                                          cudaMemcpyDeviceToDevice, stream));
      kernels::rms_norm(y, y, vec(node.weights.at(0)), n * c.heads, hd, c.heads, width, 0, qk_eps,
                        stream);
      kernels::rms_norm(y, y, vec(node.weights.at(1)), n * c.kv_heads, hd, c.kv_heads, width,
                        q_dim, qk_eps, stream);
      break;
    }
    case Op::Rope: {
      if (node.part != QkvPart::Q && node.part != QkvPart::K)
        engine::fail_node(kLane, node, "rope part must be Q or K");
      const uint64_t offset = node.part == QkvPart::Q ? 0 : q_dim;  // into [Q | K | V]
      kernels::rope(in[0], input_width(0), offset, y, n, width, hd, c.rope_dims,
                    (c.rope_layout == engine::RopeLayout::Neox) !=
                        faulty(node, engine::FaultKind::RopeNeoxSwap),
                    inv_freq.as<const double>(), pos, stream);
      break;
    }
    case Op::AttnScores:
      kernels::attn_scores(in[0], k, k_stride, shape,
                           faulty(node, engine::FaultKind::AttnScaleMissing) ? 1.0f : scale, y,
                           stream);
      break;
    case Op::Softmax:
      if (faulty(node, engine::FaultKind::SoftmaxNoMax))
        kernels::softmax_fp16_no_max(in[0], y, c.heads * n, ctx, stream);
      else
        kernels::softmax(in[0], y, c.heads * n, ctx, stream);
      break;
    case Op::AttnWeightedSum:
      kernels::attn_weighted_sum(in[0], v, v_stride, shape, y, stream);
      break;
    case Op::Add:
      kernels::add_scaled(in[0], in[1], scale, y, n * width, stream);
      break;
    case Op::Silu:
      if (faulty(node, engine::FaultKind::SiluAsGelu))
        kernels::gelu(in[0], y, n * width, stream);
      else
        kernels::silu(in[0], y, n * width, stream);
      break;
    case Op::Gelu:
      kernels::gelu(in[0], y, n * width, stream);
      break;
    case Op::Mul:
      kernels::mul(in[0], in[1], y, n * width, stream);
      break;
  }
  if (faulty(node, engine::FaultKind::PartialWrite) && node.width != 0 && !node.width_times_ctx) {
    // Only the first part of each [width] row is kept; the rest becomes zero.
    const auto keep =
        static_cast<uint64_t>(static_cast<double>(node.width) * engine::kPartialWriteFraction);
    if (keep < width)
      LOCKSTEP_CUDA_CHECK(cudaMemset2DAsync(y + keep, width * sizeof(float), 0,
                                            (width - keep) * sizeof(float), n, stream));
  }
}

namespace {

// Node outputs of one forward or replay, freed (in stream order) however the call ends.
struct Activations {
  CudaLane::Impl& impl;
  std::vector<float*> out;
  Activations(CudaLane::Impl& i, size_t nodes) : impl(i), out(nodes, nullptr) {}
  ~Activations() {
    for (float*& p : out) impl.release(p);
  }
};

void check_ids(const engine::Model& m, std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<uint64_t>(id) < m.config.vocab) continue;
    auto embed = std::find_if(m.plan.nodes.begin(), m.plan.nodes.end(),
                              [](const Node& n) { return n.op == Op::Embed; });
    const std::string what = "token id " + std::to_string(id) +
                             " is outside the vocabulary [0, " + std::to_string(m.config.vocab) + ")";
    if (embed == m.plan.nodes.end()) throw Error(std::string(kLane) + " lane: " + what);
    engine::fail_node(kLane, *embed, what);
  }
}

}  // namespace

CudaLane::CudaLane(CudaLaneOptions options) : options_(options), impl_(std::make_unique<Impl>()) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || options.device < 0 || options.device >= count) {
    cudaGetLastError();  // clear it; the lane simply is not available
    throw Error("cuda lane: no CUDA device " + std::to_string(options.device) +
                (err != cudaSuccess ? std::string(" (") + cudaGetErrorString(err) + ")"
                                    : " (" + std::to_string(count) + " found)"));
  }
  impl_->device = options.device;
  impl_->poison = options.poison_outputs;
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(options.device));
  LOCKSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = options.device;
  LOCKSTEP_CUDA_CHECK(cudaMemPoolCreate(&impl_->pool, &props));
  uint64_t keep = UINT64_MAX;  // keep freed blocks for the next forward
  LOCKSTEP_CUDA_CHECK(cudaMemPoolSetAttribute(impl_->pool, cudaMemPoolAttrReleaseThreshold, &keep));
}

CudaLane::~CudaLane() = default;

const engine::Model& CudaLane::model() const {
  if (!model_) throw Error("cuda lane: no model loaded");
  return *model_;
}

void CudaLane::load(const engine::Model& m) {
  model_ = nullptr;
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(impl_->device));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
  impl_->weights.clear();
  impl_->cache.clear();
  for (const Node& node : m.plan.nodes) {
    for (const auto* refs : {&node.weights, &node.biases}) {
      for (const engine::WeightRef& ref : *refs) {
        if (node.op == Op::Rope) continue;  // rope_freqs: part of inv_freq below
        const engine::TensorRef* t = m.weights.find(ref);
        const std::string role(engine::weight_role_name(ref.role));
        if (!t) engine::fail_node(kLane, node, "weight " + role + " is not bound");
        const bool matrix = refs == &node.weights && reads_matrices(node.op);
        auto [it, fresh] = impl_->weights.try_emplace({t->data.data(), matrix});
        if (!fresh) continue;
        DeviceWeight& w = it->second;
        if (matrix) {
          if (!kernels::has_weight_kernels(t->type))
            throw Error("cuda lane: tensor " + t->name + " is stored as " +
                        std::string(formats::ggml_type_name(t->type)) +
                        ", which has no CUDA kernel");
          if (t->dims.size() != 2)
            throw Error("cuda lane: tensor " + t->name + " is not a matrix");
          w.type = t->type;
          w.cols = t->dims[0];
          w.rows = t->dims[1];
          if (w.rows * kernels::row_bytes(w.type, w.cols) != t->data.size())
            throw Error("cuda lane: tensor " + t->name + " holds " +
                        std::to_string(t->data.size()) + " bytes, not [" + std::to_string(w.rows) +
                        ", " + std::to_string(w.cols) + "] " +
                        std::string(formats::ggml_type_name(w.type)));
          w.data = DeviceBuffer::upload(t->data);
        } else {
          std::vector<float> host(t->elements());
          formats::dequantize(t->type, t->data, host);
          w.cols = host.size();
          w.data = DeviceBuffer::upload(std::span<const float>(host));
        }
      }
    }
  }
  impl_->fault.reset();
  impl_->faulted.assign(m.plan.nodes.size(), false);
  impl_->miswired.clear();
  if (options_.fault) {
    impl_->faulted = engine::resolve_fault(*options_.fault, m.plan, m.config);
    impl_->fault = options_.fault->kind;
    if (impl_->fault == engine::FaultKind::GemvTransposed) {
      for (const Node& node : m.plan.nodes) {
        if (!impl_->faulted[node.index] || node.op != Op::MatMul) continue;
        for (const engine::WeightRef& ref : node.weights) {
          const engine::TensorRef* t = m.weights.find(ref);
          auto [it, fresh] = impl_->miswired.try_emplace(t->data.data());
          if (!fresh) continue;
          const uint64_t cols = t->dims[0], rows = t->dims[1];  // stored [rows, cols]
          std::vector<float> flat(t->elements()), wrong(rows * cols);
          formats::dequantize(t->type, t->data, flat);
          for (uint64_t o = 0; o < rows; ++o)
            for (uint64_t i = 0; i < cols; ++i) wrong[o * cols + i] = flat[i * rows + o];
          it->second.rows = rows;
          it->second.cols = cols;
          it->second.data = DeviceBuffer::upload(std::span<const float>(wrong));
        }
      }
    }
  }
  std::vector<double> inv_freq = engine::rope_inv_freq(m.config, m.weights);
  if (inv_freq.empty()) inv_freq.push_back(0.0);
  impl_->inv_freq = DeviceBuffer::upload(std::span<const double>(inv_freq));

  impl_->last_use.assign(m.plan.nodes.size(), 0);
  for (const Node& node : m.plan.nodes)
    for (size_t in : node.inputs) impl_->last_use[in] = std::max(impl_->last_use[in], node.index);
  impl_->cache.resize(m.config.layers);
  model_ = &m;
  reset();
}

void CudaLane::reset() {
  cached_ = 0;
}

engine::Logits CudaLane::forward(std::span<const int32_t> tokens, uint32_t pos,
                                 const engine::CapturePlan& capture, engine::Trace& trace) {
  const engine::Model& m = model();
  const engine::ModelConfig& c = m.config;
  if (pos > cached_)
    throw Error("cuda lane: forward at position " + std::to_string(pos) +
                " but the KV cache holds " + std::to_string(cached_) + " tokens");
  if (tokens.empty()) throw Error("cuda lane: forward needs at least one token");
  check_ids(m, tokens);
  Impl& im = *impl_;
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  // Idle unless an earlier forward failed midway; its copies may still target the staging.
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  cached_ = pos;
  trace.lane = name();
  trace.pos = pos;
  trace.tokens.assign(tokens.begin(), tokens.end());

  const uint64_t n = tokens.size(), ctx = uint64_t{pos} + n;
  const uint64_t kv_dim = c.kv_dim(), q_dim = c.q_dim();
  im.reserve_cache(ctx, pos, kv_dim);

  Activations act(im, m.plan.nodes.size() + 1);
  float*& ids_buf = act.out.back();  // the token ids, as int32
  ids_buf = im.alloc(n);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(ids_buf, tokens.data(), n * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, im.stream));
  struct Captured {
    const Node* node;
    uint64_t elems;
  };
  std::vector<Captured> captured;  // in staging order
  for (const Node& node : m.plan.nodes) {
    std::vector<float*> in;
    for (size_t i : node.inputs) in.push_back(act.out[i]);
    const float *k = nullptr, *v = nullptr;
    if (node.op == Op::AttnScores) {
      float* kc = im.cache.at(*node.layer).k.as<float>();  // [ctx, kv_dim]
      LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(kc + pos * kv_dim, in[1], n * kv_dim * sizeof(float),
                                          cudaMemcpyDeviceToDevice, im.stream));
      k = kc;
    } else if (node.op == Op::AttnWeightedSum) {
      float* vc = im.cache.at(*node.layer).v.as<float>();  // [ctx, kv_dim]
      const uint64_t qkv_w = m.plan.nodes[node.inputs[1]].width;
      LOCKSTEP_CUDA_CHECK(cudaMemcpy2DAsync(vc + pos * kv_dim, kv_dim * sizeof(float),
                                            in[1] + q_dim + kv_dim, qkv_w * sizeof(float),
                                            kv_dim * sizeof(float), n, cudaMemcpyDeviceToDevice,
                                            im.stream));
      v = vc;
    }
    const uint64_t elems = n * node.width_for(ctx);
    float* y = act.out[node.index] = im.alloc(elems);
    im.run_node(m, node, in, reinterpret_cast<const int32_t*>(ids_buf), n, pos, ctx, k, kv_dim, v,
                kv_dim, y);

    if (node.stage && capture.wants(*node.stage, node.layer)) {
      // Queued behind the node's kernels; the stream does not wait for the host. The node's
      // buffer is freed in stream order, after the copy.
      if (captured.size() == im.staging.size()) im.staging.emplace_back();
      PinnedBuffer& slot = im.staging[captured.size()];
      slot.reserve(elems * sizeof(float));
      LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(slot.as<float>(), y, elems * sizeof(float),
                                          cudaMemcpyDeviceToHost, im.stream));
      captured.push_back({&node, elems});
    }
    for (size_t i : node.inputs)
      if (im.last_use[i] == node.index) im.release(act.out[i]);
  }

  const Node* head = m.plan.find(engine::Stage::LmHead, std::nullopt);
  if (!head) throw Error("cuda lane: the plan has no lm_head node");
  engine::Logits logits;
  logits.tokens = last_logits_only() ? 1 : n;
  logits.vocab = head->width;
  logits.values.resize(logits.tokens * logits.vocab);
  const float* all = act.out[head->index];  // [tokens, vocab]
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(logits.values.data(),
                                      all + (n - logits.tokens) * logits.vocab,
                                      logits.values.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  for (size_t i = 0; i < captured.size(); ++i) {
    const Node& node = *captured[i].node;
    engine::Tensor t;
    t.shape = engine::output_shape(c, node, n, ctx);
    const float* src = im.staging[i].as<const float>();
    t.data.assign(src, src + captured[i].elems);
    trace.put({*node.stage, node.layer}, std::move(t));
  }
  cached_ = static_cast<uint32_t>(ctx);
  return logits;
}

engine::Tensor CudaLane::replay(const Node& node, std::span<const engine::Tensor> inputs) {
  const engine::Model& m = model();
  const engine::ModelConfig& c = m.config;
  engine::ReplayInputs checked = engine::check_replay_inputs(kLane, m, node, inputs);
  const uint64_t n = checked.tokens;
  if (node.op == Op::Embed) check_ids(m, checked.ids);
  Impl& im = *impl_;
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(im.device));

  Activations act(im, inputs.size() + 2);
  float*& y = act.out[0];
  float*& ids = act.out[1];
  std::vector<float*> in;
  if (node.op == Op::Embed) {
    ids = im.alloc(n);
    LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(ids, checked.ids.data(), n * sizeof(int32_t),
                                        cudaMemcpyHostToDevice, im.stream));
  } else {
    for (size_t i = 0; i < inputs.size(); ++i) {
      float*& d = act.out[2 + i];
      d = im.alloc(inputs[i].data.size());
      LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(d, inputs[i].data.data(),
                                          inputs[i].data.size() * sizeof(float),
                                          cudaMemcpyHostToDevice, im.stream));
      in.push_back(d);
    }
  }
  // Attention over exactly the given tokens: keys from input 1 (post-RoPE K), values from the V
  // slice of input 1 (the fused QKV).
  const float *k = nullptr, *v = nullptr;
  uint64_t k_stride = c.kv_dim(), v_stride = 0;
  if (node.op == Op::AttnScores) {
    k = in[1];
  } else if (node.op == Op::AttnWeightedSum) {
    v_stride = m.plan.nodes.at(node.inputs.at(1)).width;
    v = in[1] + c.q_dim() + c.kv_dim();
  }
  const uint64_t elems = n * node.width_for(n);
  y = im.alloc(elems);
  im.run_node(m, node, in, reinterpret_cast<const int32_t*>(ids), n, 0, n, k, k_stride, v,
              v_stride, y);
  engine::Tensor t;
  t.shape = engine::output_shape(c, node, n, n);
  t.data.resize(elems);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(t.data.data(), y, elems * sizeof(float),
                                      cudaMemcpyDeviceToHost, im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  return t;
}

}  // namespace lockstep::cuda
