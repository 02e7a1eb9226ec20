#include "cuda/cuda_lane.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <system_error>
#include <thread>
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

// A weight on the device: a matrix [rows, cols] in its stored type, or a vector as f32. Resident
// in `data`, or (streamed) at `offset` in its layer's block, wherever that layer is uploaded.
struct DeviceWeight {
  DeviceBuffer data;
  GgmlType type = GgmlType::F32;
  uint64_t rows = 1, cols = 0;
  int streamed_layer = -1;
  uint64_t offset = 0;
};

// Nodes the Embed and MatMul ops read as matrices in their stored type; every other weight
// (norm weights, biases) is a vector kept as f32. Rope's rope_freqs is folded into inv_freq.
bool reads_matrices(Op op) { return op == Op::Embed || op == Op::MatMul; }

// The layer whose weights a node reads, or -1 (embedding, final norm, lm_head).
int weight_layer(const Node& node) {
  return node.op == Op::Embed || !node.layer ? -1 : static_cast<int>(*node.layer);
}

constexpr uint64_t kAlign = 256;  // of each weight within a streamed layer's block
uint64_t aligned(uint64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

constexpr int kSlots = 2;  // streaming: the layer computed and the next one uploaded

}  // namespace

namespace {

// An owned CUDA event without timing (a marker in the stream); destroying never throws.
class Event {
 public:
  Event() { LOCKSTEP_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  ~Event() {
    if (e_) cudaEventDestroy(e_);
  }
  Event(Event&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  Event& operator=(Event&&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace

struct CudaLane::Impl {
  int device = 0;
  bool poison = false;
  const char* lane = "cuda";  // for messages
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
  uint64_t cache_generation = 0;  // changes whenever a cache buffer moves
  // Capture targets, one per captured cell of a forward, kept across forwards (page-locking is
  // slow); a slot is reused only after the stream has been synchronized. staged[i] is recorded
  // behind slot i's copy, so the host can take each cell while later nodes still run.
  std::vector<PinnedBuffer> staging;
  std::vector<Event> staged;
  // The copies run on copy_stream, so the compute stream never waits for one: copy_start[i]
  // marks the node's output ready, consumed[i] its last reader done (its buffer is then freed
  // on copy_stream, after the copy).
  cudaStream_t copy_stream = nullptr;
  std::vector<Event> copy_start, consumed;
  // The planted fault, resolved at load: its kind and, per node, whether it is corrupted.
  std::optional<engine::FaultKind> fault;
  std::vector<bool> faulted;  // [nodes]
  // gemv_transposed: per weight of a faulted matmul, an f32 copy laid out wrongly (as the cpu
  // lane's), by the address of the tensor's bytes.
  std::map<const std::byte*, DeviceWeight> miswired;

  // Layer streaming (`streamed` empty: everything resident).
  WeightPlacement placement;
  cudaStream_t upload_stream = nullptr;
  std::vector<PinnedBuffer> host_layers;  // [layers] the streamed layers' weight blocks
  std::vector<uint64_t> layer_bytes;      // [layers]
  std::vector<int> stream_index;          // [layers] position in `streamed`, or -1
  std::vector<uint32_t> streamed;         // the streamed layers, in order
  std::vector<size_t> first_node, last_node;  // [layers] of the nodes reading layer weights
  DeviceBuffer slot[kSlots];
  int slot_layer[kSlots] = {-1, -1};
  std::vector<int> layer_slot;  // [layers] the slot holding it, or -1
  cudaEvent_t uploaded[kSlots] = {}, slot_free[kSlots] = {};
  bool streaming() const { return !streamed.empty(); }

  // cuda-graph: the step's {token id, pos, ctx} on the device, written before each launch from
  // a page-locked copy, and the captured decode step.
  bool graphs = false;
  DeviceBuffer step_dev;  // [4] int32 id, uint32 pos, uint32 ctx, unused
  PinnedBuffer step_host;
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::vector<bool> captured;  // [nodes] whether the node's output is copied out
    bool last_only = false;
    uint64_t cache_generation = 0;
    uint64_t capacity = 0;      // the context the launch covers
    DeviceBuffer arena;         // every node's output for one token
    std::vector<float*> out;    // [nodes] into arena: [1, width_for(capacity)]
    std::vector<size_t> copied;  // nodes copied out, in staging order
    std::vector<PinnedBuffer> staging;
  } graph;
  uint64_t graph_captures = 0;

  bool faulty(const Node& node, engine::FaultKind kind) const {
    return fault == kind && faulted[node.index];
  }

  ~Impl() {
    drop_graph();
    if (copy_stream) {
      cudaStreamSynchronize(copy_stream);
      cudaStreamDestroy(copy_stream);
    }
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    if (upload_stream) {
      cudaStreamSynchronize(upload_stream);
      cudaStreamDestroy(upload_stream);
    }
    for (int i = 0; i < kSlots; ++i) {
      if (uploaded[i]) cudaEventDestroy(uploaded[i]);
      if (slot_free[i]) cudaEventDestroy(slot_free[i]);
    }
    if (pool) cudaMemPoolDestroy(pool);
  }

  void drop_graph() {  // never throws
    if (graph.exec) cudaGraphExecDestroy(graph.exec);
    graph.exec = nullptr;
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
  // Frees a captured node's output once its readers (on `stream`) and its copy (staging slot
  // k, on copy_stream) are both done, without making `stream` wait for the copy.
  void release_after_copy(float*& p, size_t k) {
    LOCKSTEP_CUDA_CHECK(cudaEventRecord(consumed[k].get(), stream));
    LOCKSTEP_CUDA_CHECK(cudaStreamWaitEvent(copy_stream, consumed[k].get(), 0));
    LOCKSTEP_CUDA_CHECK(cudaFreeAsync(p, copy_stream));
    p = nullptr;
  }

  const DeviceWeight& weight(const engine::Model& m, const engine::WeightRef& ref, bool matrix,
                             const Node& node) const {
    const engine::TensorRef* t = m.weights.find(ref);
    auto it = t ? weights.find({t->data.data(), matrix}) : weights.end();
    if (it == weights.end())
      engine::fail_node(lane, node,
                        "weight " + std::string(engine::weight_role_name(ref.role)) +
                            " is not loaded");
    return it->second;
  }
  // Where the weight's bytes are now: resident, or in the slot its layer was uploaded to.
  const void* ptr(const DeviceWeight& w, const Node& node) const {
    if (w.streamed_layer < 0) return w.data.get();
    const int s = layer_slot[w.streamed_layer];
    if (s < 0) engine::fail_node(lane, node, "streamed layer weights are not uploaded");
    return slot[s].as<const std::byte>() + w.offset;
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
      ++cache_generation;
    }
  }

  // Streaming: queues the upload of the k-th streamed layer into slot k % 2 on the upload
  // stream, once the compute stream is done with the layer the slot held.
  void upload_layer(size_t k) {
    const uint32_t layer = streamed[k];
    const int s = static_cast<int>(k % kSlots);
    if (slot_layer[s] >= 0) layer_slot[slot_layer[s]] = -1;
    slot_layer[s] = static_cast<int>(layer);
    layer_slot[layer] = s;
    LOCKSTEP_CUDA_CHECK(cudaStreamWaitEvent(upload_stream, slot_free[s], 0));
    LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(slot[s].get(), host_layers[layer].as<const void>(),
                                        layer_bytes[layer], cudaMemcpyHostToDevice,
                                        upload_stream));
    LOCKSTEP_CUDA_CHECK(cudaEventRecord(uploaded[s], upload_stream));
  }
  // Before node `node` runs in a forward: at the first node of a streamed layer, the compute
  // stream waits for its upload and the next streamed layer's upload is queued.
  void before_node(const Node& node) {
    const int l = weight_layer(node);
    if (!streaming() || l < 0 || stream_index[l] < 0 || first_node[l] != node.index) return;
    const auto k = static_cast<size_t>(stream_index[l]);
    LOCKSTEP_CUDA_CHECK(cudaStreamWaitEvent(stream, uploaded[layer_slot[l]], 0));
    if (k + 1 < streamed.size()) upload_layer(k + 1);
  }
  // After its last node, the layer's slot may be overwritten once the stream gets there.
  void after_node(const Node& node) {
    const int l = weight_layer(node);
    if (!streaming() || l < 0 || stream_index[l] < 0 || last_node[l] != node.index) return;
    LOCKSTEP_CUDA_CHECK(cudaEventRecord(slot_free[layer_slot[l]], stream));
  }
  // Replay: the node's layer uploaded now, synchronously.
  void upload_now(const Node& node) {
    const int l = weight_layer(node);
    if (!streaming() || l < 0 || stream_index[l] < 0) return;
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(stream));
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(upload_stream));
    upload_layer(static_cast<size_t>(stream_index[l]));
    LOCKSTEP_CUDA_CHECK(cudaStreamWaitEvent(stream, uploaded[layer_slot[l]], 0));
  }

  // One node of a forward for n tokens at pos.. over ctx keys: the KV-cache append of an
  // attention node, then its kernels. `step` (graph mode): device {pos, ctx} read by the
  // kernels, ctx then the cache capacity.
  void forward_node(const engine::Model& m, const Node& node, std::span<float* const> in,
                    const int32_t* ids, uint64_t n, uint64_t pos, uint64_t ctx,
                    const uint32_t* step, float* y) {
    const engine::ModelConfig& c = m.config;
    const uint64_t kv_dim = c.kv_dim();
    const float *k = nullptr, *v = nullptr;
    if (node.op == Op::AttnScores) {
      float* kc = cache.at(*node.layer).k.as<float>();  // [capacity, kv_dim]
      kernels::kv_append(in[1], kv_dim, n, kv_dim, kc, pos, stream, step);
      k = kc;
    } else if (node.op == Op::AttnWeightedSum) {
      float* vc = cache.at(*node.layer).v.as<float>();  // [capacity, kv_dim]
      const uint64_t qkv_w = m.plan.nodes[node.inputs[1]].width;
      kernels::kv_append(in[1] + c.q_dim() + kv_dim, qkv_w, n, kv_dim, vc, pos, stream, step);
      v = vc;
    }
    run_node(m, node, in, ids, n, pos, ctx, k, kv_dim, v, kv_dim, y, step);
  }

  // Runs one node for n tokens at positions pos.. over ctx keys. `in`: device inputs (each
  // [tokens, width], or [heads, tokens, ctx]); `ids`: device token ids (Embed); k/v: the
  // context's keys and values, rows of the given strides (attention nodes). y: the output.
  // step: see forward_node (null: pos and ctx as given).
  void run_node(const engine::Model& m, const Node& node, std::span<float* const> in,
                const int32_t* ids, uint64_t n, uint64_t pos, uint64_t ctx, const float* k,
                uint64_t k_stride, const float* v, uint64_t v_stride, float* y,
                const uint32_t* step) const;

  // cuda-graph: captures the one-token step for the cells `copied` marks; the context launched
  // for is the cache's capacity.
  void capture_graph(const engine::Model& m, const std::vector<bool>& copied, bool last_only);
};

void CudaLane::Impl::run_node(const engine::Model& m, const Node& node, std::span<float* const> in,
                              const int32_t* ids, uint64_t n, uint64_t pos, uint64_t ctx,
                              const float* k, uint64_t k_stride, const float* v, uint64_t v_stride,
                              float* y, const uint32_t* step) const {
  const engine::ModelConfig& c = m.config;
  const uint64_t width = node.width, hd = c.head_dim, q_dim = c.q_dim();
  const auto eps = static_cast<float>(
      faulty(node, engine::FaultKind::RmsEpsWrong) ? engine::kWrongNormEps : c.norm_eps);
  const auto scale = static_cast<float>(node.scale);
  auto input_width = [&](size_t i) { return m.plan.nodes.at(node.inputs.at(i)).width; };
  auto vec = [&](const engine::WeightRef& ref) {
    return static_cast<const float*>(ptr(weight(m, ref, false, node), node));
  };
  kernels::AttnShape shape{c.heads, c.kv_heads, hd, n, ctx, pos, c.sliding_window.value_or(0)};
  shape.interleaved_heads = faulty(node, engine::FaultKind::GqaHeadMap);
  shape.lagged_slots = faulty(node, engine::FaultKind::KvCacheOffByOne);
  shape.step = step;
  const uint32_t* dev_ctx = step ? step + 1 : nullptr;

  switch (node.op) {
    case Op::Embed: {
      const DeviceWeight& e = weight(m, node.weights.at(0), true, node);  // [vocab, hidden]
      if (e.cols != width) engine::fail_node(lane, node, "embedding rows are not the hidden width");
      kernels::embed(e.type, ptr(e, node), e.cols, ids, n, scale, y, stream);
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
      // The biases to add (none under drop_qkv_bias), checked against the width.
      std::vector<const DeviceWeight*> biases;
      if (!faulty(node, engine::FaultKind::DropQkvBias)) {
        uint64_t total = 0;
        for (const engine::WeightRef& ref : node.biases) {
          biases.push_back(&weight(m, ref, false, node));
          total += biases.back()->cols;
        }
        if (!biases.empty() && total != width)
          engine::fail_node(lane, node, "biases give width " + std::to_string(total));
      }
      const bool finish = !biases.empty() || node.scale != 1.0;  // bias and scale to apply
      // Whether the matvecs applied them already.
      bool finished = false;
      if (node.op == Op::MatMul) {
        const uint64_t in_w = input_width(0);
        const bool transposed = faulty(node, engine::FaultKind::GemvTransposed);
        std::vector<const DeviceWeight*> ws;
        uint64_t col = 0;
        for (const engine::WeightRef& ref : node.weights) {
          const DeviceWeight& w = transposed ? miswired.at(m.weights.find(ref)->data.data())
                                             : weight(m, ref, true, node);  // [out, in]
          if (w.cols != in_w || col + w.rows > width)
            engine::fail_node(lane, node,
                              "weight " + std::string(engine::weight_role_name(ref.role)) +
                                  " of [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                  "] does not fit input width " + std::to_string(in_w) +
                                  " and output width " + std::to_string(width));
          ws.push_back(&w);
          col += w.rows;
        }
        if (col != width)
          engine::fail_node(lane, node, "matrices give width " + std::to_string(col));
        // One token: the matrices of one type in one launch each run of them, the bias and scale
        // applied as each output is written (the same roundings as bias_scale's), when every
        // matrix has its own bias or none has one.
        bool fused = n == 1 && (biases.empty() || biases.size() == ws.size());
        for (size_t i = 0; fused && i < biases.size(); ++i) fused = biases[i]->cols == ws[i]->rows;
        col = 0;
        for (size_t i = 0; i < ws.size();) {
          size_t j = i + 1;
          if (fused)
            while (j < ws.size() && j - i < kernels::kMaxMatvecParts && ws[j]->type == ws[i]->type)
              ++j;
          std::vector<kernels::MatvecPart> parts;
          uint64_t rows = 0;
          for (size_t k = i; k < j; ++k) {
            parts.push_back(
                {ptr(*ws[k], node), ws[k]->rows,
                 biases.empty() ? nullptr : static_cast<const float*>(ptr(*biases[k], node))});
            rows += ws[k]->rows;
          }
          if (!fused ||
              !kernels::matvec(ws[i]->type, parts, in_w, in[0], y + col, finish, scale, stream)) {
            for (size_t k = i; k < j; ++k) {
              kernels::matmul(ws[k]->type, parts[k - i].w, ws[k]->rows, in_w, in[0], n, y, width,
                              col, stream);
              if (fused && finish)
                kernels::bias_scale(y, n, width, col, ws[k]->rows, parts[k - i].bias, scale,
                                    stream);
              col += ws[k]->rows;
            }
          } else {
            col += rows;
          }
          i = j;
        }
        finished = fused;
      } else if (!finish || biases.size() > kernels::kMaxBiasSegments) {
        LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(y, in[0], n * width * sizeof(float),
                                            cudaMemcpyDeviceToDevice, stream));
      }
      if (finished || !finish) break;
      if (biases.size() <= kernels::kMaxBiasSegments) {
        // One launch for all the biases (an AddBias node reads its input directly, no copy).
        std::vector<kernels::BiasSegment> segments;
        for (const DeviceWeight* b : biases)
          segments.push_back({static_cast<const float*>(ptr(*b, node)), b->cols});
        if (segments.empty()) segments.push_back({nullptr, width});
        kernels::add_biases(node.op == Op::MatMul ? y : in[0], y, n, width, segments, scale,
                            stream);
      } else {
        uint64_t col = 0;
        for (const DeviceWeight* b : biases) {
          kernels::bias_scale(y, n, width, col, b->cols, static_cast<const float*>(ptr(*b, node)),
                              scale, stream);
          col += b->cols;
        }
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
        engine::fail_node(lane, node, "rope part must be Q or K");
      const uint64_t offset = node.part == QkvPart::Q ? 0 : q_dim;  // into [Q | K | V]
      kernels::rope(in[0], input_width(0), offset, y, n, width, hd, c.rope_dims,
                    (c.rope_layout == engine::RopeLayout::Neox) !=
                        faulty(node, engine::FaultKind::RopeNeoxSwap),
                    inv_freq.as<const double>(), pos, stream, step);
      break;
    }
    case Op::AttnScores:
      kernels::attn_scores(in[0], k, k_stride, shape,
                           faulty(node, engine::FaultKind::AttnScaleMissing) ? 1.0f : scale, y,
                           stream);
      break;
    case Op::Softmax:
      if (faulty(node, engine::FaultKind::SoftmaxNoMax))
        kernels::softmax_fp16_no_max(in[0], y, c.heads * n, ctx, stream, dev_ctx);
      else
        kernels::softmax(in[0], y, c.heads * n, ctx, stream, dev_ctx);
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
    // A capture copy may still read a buffer (an error unwinding midway): let it finish.
    if (impl.copy_stream) cudaStreamSynchronize(impl.copy_stream);
    for (float*& p : out) impl.release(p);
  }
};

void check_ids(const char* lane, const engine::Model& m, std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    if (id >= 0 && static_cast<uint64_t>(id) < m.config.vocab) continue;
    auto embed = std::find_if(m.plan.nodes.begin(), m.plan.nodes.end(),
                              [](const Node& n) { return n.op == Op::Embed; });
    const std::string what = "token id " + std::to_string(id) +
                             " is outside the vocabulary [0, " + std::to_string(m.config.vocab) + ")";
    if (embed == m.plan.nodes.end()) throw Error(std::string(lane) + " lane: " + what);
    engine::fail_node(lane, *embed, what);
  }
}

std::string size_text(uint64_t bytes) {
  char s[32];
  if (bytes >= (1ull << 30))
    std::snprintf(s, sizeof s, "%.2f GiB", static_cast<double>(bytes) / (1ull << 30));
  else
    std::snprintf(s, sizeof s, "%.2f MiB", static_cast<double>(bytes) / (1ull << 20));
  return s;
}

const Node& lm_head(const char* lane, const engine::Model& m) {
  const Node* head = m.plan.find(engine::Stage::LmHead, std::nullopt);
  if (!head) throw Error(std::string(lane) + " lane: the plan has no lm_head node");
  return *head;
}

// Asks for transparent huge pages over the 2 MiB-aligned part of [p, p + bytes), before the
// memory is first touched: a full capture fills ~1.8 GB of fresh trace memory, and faulting it
// in 4 KiB pages was most of the capture's host-side cost. Only a hint (no effect where THP is
// off).
void advise_huge_pages(void* p, uint64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

// Copies the staged captures of a forward into the trace (after the stream is synchronized):
// the first tokens · width_for(ctx) floats of each slot.
// The captured output of `node` out of its staging slot.
engine::Tensor take_slot(const engine::Model& m, const Node& node, const PinnedBuffer& slot,
                         uint64_t n, uint64_t ctx) {
  engine::Tensor t;
  t.shape = engine::output_shape(m.config, node, n, ctx);
  const float* src = slot.as<const float>();
  const uint64_t count = n * node.width_for(ctx);
  t.data.reserve(count);  // allocated, not yet touched
  advise_huge_pages(t.data.data(), count * sizeof(float));
  t.data.assign(src, src + count);
  return t;
}

void fill_trace(const engine::Model& m, std::span<const size_t> nodes,
                std::span<const PinnedBuffer> slots, uint64_t n, uint64_t ctx,
                engine::Trace& trace) {
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& node = m.plan.nodes[nodes[i]];
    trace.put({*node.stage, node.layer}, take_slot(m, node, slots[i], n, ctx));
  }
}

// fill_trace for a large capture, while the stream still runs: worker threads take the slots
// round-robin, each waiting for its slot's event and then copying it out (allocating and
// touching the trace's memory is most of the cost, and it overlaps the GPU's work). Returns
// after every slot is copied; a CUDA error in a worker is rethrown here.
void fill_trace_overlapped(const engine::Model& m, int device, std::span<const size_t> nodes,
                           std::span<const PinnedBuffer> slots, std::span<const Event> ready,
                           uint64_t n, uint64_t ctx, engine::Trace& trace) {
  // Up to 16 (every core of the H100 machine): a 128-token capture of the 7B-shaped model
  // cost 1.49x the uncaptured prefill with 8 and 1.35x with 16 (huge pages in both).
  const unsigned workers =
      std::min<unsigned>({16u, std::max(1u, std::thread::hardware_concurrency()),
                          static_cast<unsigned>(nodes.size())});
  std::vector<engine::Tensor> out(nodes.size());
  std::vector<std::string> errors(workers);
  auto work = [&](unsigned w) {
    try {
      LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
      for (size_t i = w; i < nodes.size(); i += workers) {
        LOCKSTEP_CUDA_CHECK(cudaEventSynchronize(ready[i].get()));
        out[i] = take_slot(m, m.plan.nodes[nodes[i]], slots[i], n, ctx);
      }
    } catch (const std::exception& e) {
      errors[w] = e.what();
    }
  };
  std::vector<std::thread> threads;
  for (unsigned w = 1; w < workers; ++w) {
    try {
      threads.emplace_back(work, w);
    } catch (const std::system_error&) {
      work(w);  // no thread to be had: this one takes the slots
    }
  }
  work(0);
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors)
    if (!e.empty()) throw Error(e);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& node = m.plan.nodes[nodes[i]];
    trace.put({*node.stage, node.layer}, std::move(out[i]));
  }
}

// Captures at least this large are copied out by worker threads while the stream runs.
constexpr uint64_t kOverlapBytes = uint64_t{32} << 20;

// The eager forward (every prefill; decode steps of `cuda`, and of `cuda-graph` while
// streaming). With last_only, the trailing whole-model nodes nobody captures (final norm,
// lm_head) run on the last token only.
engine::Logits run_eager(CudaLane::Impl& im, const engine::Model& m,
                         std::span<const int32_t> tokens, uint64_t pos,
                         const std::vector<bool>& copied, bool last_only, engine::Trace& trace) {
  const std::vector<Node>& nodes = m.plan.nodes;
  const Node& head = lm_head(im.lane, m);
  const uint64_t n = tokens.size(), ctx = pos + n;
  size_t reduced = nodes.size();  // nodes from here on: the last token only
  if (last_only && n > 1) {
    for (size_t i = nodes.size(); i-- > 0;) {
      if (nodes[i].layer || nodes[i].op == Op::Embed || copied[i]) break;
      reduced = i;
    }
  }
  Activations act(im, nodes.size() + 1);
  float*& ids_buf = act.out.back();  // the token ids, as int32
  ids_buf = im.alloc(n);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(ids_buf, tokens.data(), n * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, im.stream));
  if (im.streaming()) im.upload_layer(0);
  std::vector<size_t> captured;  // in staging order
  std::vector<int64_t> slot_of(nodes.size(), -1);  // per node: its staging slot, or -1
  uint64_t captured_bytes = 0;
  for (const Node& node : nodes) {
    const bool last = node.index >= reduced;
    const uint64_t rows = last ? 1 : n;
    std::vector<float*> in;
    for (size_t i : node.inputs) {
      float* p = act.out[i];
      if (last && i < reduced) p += (n - 1) * nodes[i].width_for(ctx);  // its last row
      in.push_back(p);
    }
    const uint64_t elems = rows * node.width_for(ctx);
    float* y = act.out[node.index] = im.alloc(elems);
    im.before_node(node);
    im.forward_node(m, node, in, reinterpret_cast<const int32_t*>(ids_buf), rows,
                    last ? ctx - 1 : pos, ctx, nullptr, y);
    im.after_node(node);
    if (copied[node.index]) {
      // Queued behind the node's kernels; the stream does not wait for the host. The node's
      // buffer is freed in stream order, after the copy.
      const size_t k = captured.size();
      if (k == im.staging.size()) im.staging.emplace_back();
      while (im.staged.size() <= k) im.staged.emplace_back();
      while (im.copy_start.size() <= k) im.copy_start.emplace_back();
      while (im.consumed.size() <= k) im.consumed.emplace_back();
      PinnedBuffer& slot = im.staging[k];
      slot.reserve(elems * sizeof(float));
      LOCKSTEP_CUDA_CHECK(cudaEventRecord(im.copy_start[k].get(), im.stream));
      LOCKSTEP_CUDA_CHECK(cudaStreamWaitEvent(im.copy_stream, im.copy_start[k].get(), 0));
      LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(slot.as<float>(), y, elems * sizeof(float),
                                          cudaMemcpyDeviceToHost, im.copy_stream));
      LOCKSTEP_CUDA_CHECK(cudaEventRecord(im.staged[k].get(), im.copy_stream));
      captured_bytes += elems * sizeof(float);
      slot_of[node.index] = static_cast<int64_t>(k);
      captured.push_back(node.index);
    }
    for (size_t i : node.inputs) {
      if (im.last_use[i] != node.index || !act.out[i]) continue;
      if (slot_of[i] >= 0)
        im.release_after_copy(act.out[i], static_cast<size_t>(slot_of[i]));
      else
        im.release(act.out[i]);
    }
  }

  engine::Logits logits;
  logits.tokens = last_only ? 1 : n;
  logits.vocab = head.width;
  logits.values.resize(logits.tokens * logits.vocab);
  const uint64_t rows = head.index >= reduced ? 1 : n;
  const float* all = act.out[head.index];  // [rows, vocab]
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(logits.values.data(),
                                      all + (rows - logits.tokens) * logits.vocab,
                                      logits.values.size() * sizeof(float), cudaMemcpyDeviceToHost,
                                      im.stream));
  if (captured_bytes >= kOverlapBytes) {
    fill_trace_overlapped(m, im.device, captured, im.staging, im.staged, n, ctx, trace);
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.copy_stream));
  } else {
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
    LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.copy_stream));
    fill_trace(m, captured, im.staging, n, ctx, trace);
  }
  return logits;
}

// A cuda-graph decode step: the captured graph (captured first when anything baked into it
// changed), launched after the step's id, position and context length are written.
engine::Logits run_graph(CudaLane::Impl& im, const engine::Model& m, int32_t token, uint64_t pos,
                         const std::vector<bool>& copied, bool last_only, engine::Trace& trace) {
  const Node& head = lm_head(im.lane, m);
  const uint64_t ctx = pos + 1;
  CudaLane::Impl::Graph& g = im.graph;
  if (!g.exec || g.captured != copied || g.last_only != last_only ||
      g.cache_generation != im.cache_generation)
    im.capture_graph(m, copied, last_only);
  if (ctx > g.capacity) throw Error(std::string(im.lane) + " lane: the KV cache is too small");
  auto* step = im.step_host.as<uint32_t>();  // {token id, pos, ctx}
  step[0] = static_cast<uint32_t>(token);
  step[1] = static_cast<uint32_t>(pos);
  step[2] = static_cast<uint32_t>(ctx);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(im.step_dev.get(), step, 3 * sizeof(uint32_t),
                                      cudaMemcpyHostToDevice, im.stream));
  LOCKSTEP_CUDA_CHECK(cudaGraphLaunch(g.exec, im.stream));
  engine::Logits logits;
  logits.tokens = 1;
  logits.vocab = head.width;
  logits.values.resize(logits.vocab);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(logits.values.data(), g.out[head.index],
                                      logits.vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                      im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  fill_trace(m, g.copied, g.staging, 1, ctx, trace);
  return logits;
}

}  // namespace

void CudaLane::Impl::capture_graph(const engine::Model& m, const std::vector<bool>& copied,
                                   bool last_only) {
  drop_graph();
  const std::vector<Node>& nodes = m.plan.nodes;
  if (cache.empty()) throw Error(std::string(lane) + " lane: a model without layers");
  const uint64_t cap = cache.front().capacity;
  // Fixed addresses: every node's output for one token at the capacity's context.
  std::vector<uint64_t> offset(nodes.size());
  uint64_t total = 0;
  for (const Node& node : nodes) {
    offset[node.index] = total;
    total += (node.width_for(cap) + 63) / 64 * 64;
  }
  if (graph.arena.bytes() < total * sizeof(float)) {
    graph.arena = DeviceBuffer();
    graph.arena = DeviceBuffer(total * sizeof(float));
  }
  graph.out.assign(nodes.size(), nullptr);
  for (const Node& node : nodes)
    graph.out[node.index] = graph.arena.as<float>() + offset[node.index];
  graph.copied.clear();
  for (const Node& node : nodes)
    if (copied[node.index]) graph.copied.push_back(node.index);
  while (graph.staging.size() < graph.copied.size()) graph.staging.emplace_back();
  for (size_t i = 0; i < graph.copied.size(); ++i)
    graph.staging[i].reserve(nodes[graph.copied[i]].width_for(cap) * sizeof(float));

  const auto* ids = step_dev.as<const int32_t>();
  const uint32_t* step = step_dev.as<const uint32_t>() + 1;  // {pos, ctx}
  cudaGraph_t captured = nullptr;
  LOCKSTEP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    size_t staged = 0;
    for (const Node& node : nodes) {
      std::vector<float*> in;
      for (size_t i : node.inputs) in.push_back(graph.out[i]);
      float* y = graph.out[node.index];
      const uint64_t elems = node.width_for(cap);
      if (poison) LOCKSTEP_CUDA_CHECK(cudaMemsetAsync(y, 0xFF, elems * sizeof(float), stream));
      forward_node(m, node, in, ids, 1, 0, cap, step, y);
      if (copied[node.index])
        LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(graph.staging[staged++].as<float>(), y,
                                            elems * sizeof(float), cudaMemcpyDeviceToHost, stream));
    }
    LOCKSTEP_CUDA_CHECK(cudaStreamEndCapture(stream, &captured));
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(stream, &broken);  // ends a capture still open; never throws
    if (broken) cudaGraphDestroy(broken);
    cudaGetLastError();
    throw;
  }
  const cudaError_t err = cudaGraphInstantiate(&graph.exec, captured, 0);
  cudaGraphDestroy(captured);
  if (err != cudaSuccess) graph.exec = nullptr;
  LOCKSTEP_CUDA_CHECK(err);
  graph.captured = copied;
  graph.last_only = last_only;
  graph.cache_generation = cache_generation;
  graph.capacity = cap;
  ++graph_captures;
}

CudaLane::CudaLane(CudaLaneOptions options) : options_(options), impl_(std::make_unique<Impl>()) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || options.device < 0 || options.device >= count) {
    cudaGetLastError();  // clear it; the lane simply is not available
    throw Error(name() + " lane: no CUDA device " + std::to_string(options.device) +
                (err != cudaSuccess ? std::string(" (") + cudaGetErrorString(err) + ")"
                                    : " (" + std::to_string(count) + " found)"));
  }
  Impl& im = *impl_;
  im.device = options.device;
  im.poison = options.poison_outputs;
  im.graphs = options.graphs;
  im.lane = options.graphs ? "cuda-graph" : "cuda";
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(options.device));
  LOCKSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&im.stream, cudaStreamNonBlocking));
  LOCKSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&im.upload_stream, cudaStreamNonBlocking));
  LOCKSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&im.copy_stream, cudaStreamNonBlocking));
  for (int i = 0; i < kSlots; ++i) {
    LOCKSTEP_CUDA_CHECK(cudaEventCreateWithFlags(&im.uploaded[i], cudaEventDisableTiming));
    LOCKSTEP_CUDA_CHECK(cudaEventCreateWithFlags(&im.slot_free[i], cudaEventDisableTiming));
  }
  im.step_dev = DeviceBuffer(4 * sizeof(uint32_t));
  im.step_host.reserve(4 * sizeof(uint32_t));
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = options.device;
  LOCKSTEP_CUDA_CHECK(cudaMemPoolCreate(&im.pool, &props));
  uint64_t keep = UINT64_MAX;  // keep freed blocks for the next forward
  LOCKSTEP_CUDA_CHECK(cudaMemPoolSetAttribute(im.pool, cudaMemPoolAttrReleaseThreshold, &keep));
  kernels::prepare_matmul();  // never first inside a graph capture
}

CudaLane::~CudaLane() = default;

uint64_t CudaLane::graph_captures() const { return impl_->graph_captures; }
const WeightPlacement& CudaLane::placement() const { return impl_->placement; }

const engine::Model& CudaLane::model() const {
  if (!model_) throw Error(name() + " lane: no model loaded");
  return *model_;
}

void CudaLane::load(const engine::Model& m) {
  model_ = nullptr;
  Impl& im = *impl_;
  const std::string lane = name();
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.copy_stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.upload_stream));
  im.drop_graph();
  im.graph.arena = DeviceBuffer();
  im.weights.clear();
  im.cache.clear();
  ++im.cache_generation;
  // The pool keeps freed activations; give them back so that the budget sees them as free.
  LOCKSTEP_CUDA_CHECK(cudaMemPoolTrimTo(im.pool, 0));
  im.host_layers.clear();
  im.streamed.clear();
  for (int s = 0; s < kSlots; ++s) {
    im.slot[s] = DeviceBuffer();
    im.slot_layer[s] = -1;
  }
  im.placement = {};
  const uint32_t layers = m.config.layers;

  // Every weight the plan reads, described, with its host bytes and the layer it belongs to
  // (-1: outside the layers, or read by more than one layer).
  struct Host {
    std::span<const std::byte> bytes;  // matrices: the file's
    std::vector<float> vec;            // vectors: dequantized
    int layer = -1;
  };
  std::map<std::pair<const std::byte*, bool>, Host> host;
  for (const Node& node : m.plan.nodes) {
    for (const auto* refs : {&node.weights, &node.biases}) {
      for (const engine::WeightRef& ref : *refs) {
        if (node.op == Op::Rope) continue;  // rope_freqs: part of inv_freq below
        const engine::TensorRef* t = m.weights.find(ref);
        const std::string role(engine::weight_role_name(ref.role));
        if (!t) engine::fail_node(im.lane, node, "weight " + role + " is not bound");
        const bool matrix = refs == &node.weights && reads_matrices(node.op);
        const std::pair key{t->data.data(), matrix};
        auto [it, fresh] = im.weights.try_emplace(key);
        if (!fresh) {
          if (host[key].layer != weight_layer(node)) host[key].layer = -1;
          continue;
        }
        Host& h = host[key];
        h.layer = weight_layer(node);
        DeviceWeight& w = it->second;
        if (matrix) {
          if (!kernels::has_weight_kernels(t->type))
            throw Error(lane + " lane: tensor " + t->name + " is stored as " +
                        std::string(formats::ggml_type_name(t->type)) +
                        ", which has no CUDA kernel");
          if (t->dims.size() != 2)
            throw Error(lane + " lane: tensor " + t->name + " is not a matrix");
          w.type = t->type;
          w.cols = t->dims[0];
          w.rows = t->dims[1];
          if (w.rows * kernels::row_bytes(w.type, w.cols) != t->data.size())
            throw Error(lane + " lane: tensor " + t->name + " holds " +
                        std::to_string(t->data.size()) + " bytes, not [" + std::to_string(w.rows) +
                        ", " + std::to_string(w.cols) + "] " +
                        std::string(formats::ggml_type_name(w.type)));
          h.bytes = t->data;
        } else {
          h.vec.resize(t->elements());
          formats::dequantize(t->type, t->data, h.vec);
          w.cols = h.vec.size();
          h.bytes = std::as_bytes(std::span<const float>(h.vec));
        }
      }
    }
  }

  // Placement: everything resident when it fits the budget; otherwise the non-layer weights,
  // two slots and as many layers as fit (from the first), the rest streamed.
  WeightPlacement& p = im.placement;
  p.layers = layers;
  im.layer_bytes.assign(layers, 0);
  std::map<std::pair<const std::byte*, bool>, uint64_t> offset;
  for (auto& [key, h] : host) {
    p.total_bytes += h.bytes.size();
    if (h.layer < 0) {
      p.non_layer_bytes += h.bytes.size();
    } else {
      offset[key] = im.layer_bytes[h.layer];
      im.layer_bytes[h.layer] += aligned(h.bytes.size());
    }
  }
  for (uint64_t b : im.layer_bytes) p.max_layer_bytes = std::max(p.max_layer_bytes, b);
  p.budget_bytes = options_.weight_budget_bytes;
  if (p.budget_bytes == 0) {
    size_t free = 0, total = 0;
    LOCKSTEP_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    const uint64_t margin = std::max<uint64_t>(uint64_t{1} << 30, free / 10);
    p.budget_bytes = free > margin ? free - margin : 0;
  }
  im.stream_index.assign(layers, -1);
  im.layer_slot.assign(layers, -1);
  if (p.total_bytes > p.budget_bytes) {
    const uint64_t fixed = p.non_layer_bytes + kSlots * p.max_layer_bytes;
    if (fixed > p.budget_bytes)
      throw Error(lane + " lane: the weights take " + size_text(p.total_bytes) +
                  ", more than the GPU weight budget of " + size_text(p.budget_bytes) +
                  "; streaming layers from host memory still needs the weights outside the layers "
                  "(embedding, output norm, lm_head: " + size_text(p.non_layer_bytes) +
                  ") and two layer slots (" + size_text(kSlots * p.max_layer_bytes) +
                  ") on the device");
    uint64_t room = p.budget_bytes - fixed;
    for (uint32_t l = 0; l < layers; ++l) {
      if (im.streamed.empty() && im.layer_bytes[l] <= room) {
        room -= im.layer_bytes[l];
        continue;
      }
      im.stream_index[l] = static_cast<int>(im.streamed.size());
      im.streamed.push_back(l);
    }
    p.streamed_layers = static_cast<uint32_t>(im.streamed.size());
    im.host_layers = std::vector<PinnedBuffer>(layers);
    for (uint32_t l : im.streamed) im.host_layers[l].reserve(im.layer_bytes[l]);
    for (int s = 0; s < kSlots; ++s) im.slot[s] = DeviceBuffer(p.max_layer_bytes);
  }
  for (auto& [key, h] : host) {
    DeviceWeight& w = im.weights.at(key);
    if (h.layer >= 0 && im.stream_index[h.layer] >= 0) {
      w.streamed_layer = h.layer;
      w.offset = offset.at(key);
      std::memcpy(im.host_layers[h.layer].as<std::byte>() + w.offset, h.bytes.data(),
                  h.bytes.size());
    } else {
      w.data = DeviceBuffer::upload(h.bytes);
    }
  }
  im.first_node.assign(layers, 0);
  im.last_node.assign(layers, 0);
  for (const Node& node : m.plan.nodes) {
    const int l = weight_layer(node);
    if (l < 0 || static_cast<uint32_t>(l) >= layers) continue;
    if (im.first_node[l] == 0) im.first_node[l] = node.index;  // node 0 is the embedding
    im.last_node[l] = node.index;
  }
  if (im.streaming())
    std::fprintf(stderr,
                 "%s lane: %u of %u layers streamed from host memory (weights %s, budget %s)%s\n",
                 lane.c_str(), p.streamed_layers, layers, size_text(p.total_bytes).c_str(),
                 size_text(p.budget_bytes).c_str(),
                 im.graphs ? "; decode steps run eagerly, not from a CUDA graph" : "");

  im.fault.reset();
  im.faulted.assign(m.plan.nodes.size(), false);
  im.miswired.clear();
  if (options_.fault) {
    im.faulted = engine::resolve_fault(*options_.fault, m.plan, m.config);
    im.fault = options_.fault->kind;
    if (im.fault == engine::FaultKind::GemvTransposed) {
      for (const Node& node : m.plan.nodes) {
        if (!im.faulted[node.index] || node.op != Op::MatMul) continue;
        for (const engine::WeightRef& ref : node.weights) {
          const engine::TensorRef* t = m.weights.find(ref);
          auto [it, fresh] = im.miswired.try_emplace(t->data.data());
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
  im.inv_freq = DeviceBuffer::upload(std::span<const double>(inv_freq));

  im.last_use.assign(m.plan.nodes.size(), 0);
  for (const Node& node : m.plan.nodes)
    for (size_t in : node.inputs) im.last_use[in] = std::max(im.last_use[in], node.index);
  im.cache.resize(layers);
  model_ = &m;
  reset();
}

void CudaLane::reset() {
  cached_ = 0;
}

engine::Logits CudaLane::forward(std::span<const int32_t> tokens, uint32_t pos,
                                 const engine::CapturePlan& capture, engine::Trace& trace) {
  const engine::Model& m = model();
  const std::string lane = name();
  if (pos > cached_)
    throw Error(lane + " lane: forward at position " + std::to_string(pos) +
                " but the KV cache holds " + std::to_string(cached_) + " tokens");
  if (tokens.empty()) throw Error(lane + " lane: forward needs at least one token");
  Impl& im = *impl_;
  check_ids(im.lane, m, tokens);
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  // Idle unless an earlier forward failed midway; its copies may still target the staging.
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.copy_stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.upload_stream));
  cached_ = pos;
  trace.lane = lane;
  trace.pos = pos;
  trace.tokens.assign(tokens.begin(), tokens.end());

  const uint64_t n = tokens.size(), ctx = uint64_t{pos} + n;
  im.reserve_cache(ctx, pos, m.config.kv_dim());
  std::vector<bool> copied(m.plan.nodes.size());
  for (const Node& node : m.plan.nodes)
    copied[node.index] = node.stage && capture.wants(*node.stage, node.layer);
  engine::Logits logits =
      n == 1 && im.graphs && !im.streaming()
          ? run_graph(im, m, tokens[0], pos, copied, last_logits_only(), trace)
          : run_eager(im, m, tokens, pos, copied, last_logits_only(), trace);
  cached_ = static_cast<uint32_t>(ctx);
  return logits;
}

engine::Tensor CudaLane::replay(const Node& node, std::span<const engine::Tensor> inputs) {
  const engine::Model& m = model();
  const engine::ModelConfig& c = m.config;
  Impl& im = *impl_;
  engine::ReplayInputs checked = engine::check_replay_inputs(im.lane, m, node, inputs);
  const uint64_t n = checked.tokens;
  if (node.op == Op::Embed) check_ids(im.lane, m, checked.ids);
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  im.upload_now(node);

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
              v_stride, y, nullptr);
  engine::Tensor t;
  t.shape = engine::output_shape(c, node, n, n);
  t.data.resize(elems);
  LOCKSTEP_CUDA_CHECK(cudaMemcpyAsync(t.data.data(), y, elems * sizeof(float),
                                      cudaMemcpyDeviceToHost, im.stream));
  LOCKSTEP_CUDA_CHECK(cudaStreamSynchronize(im.stream));
  return t;
}

}  // namespace lockstep::cuda
