#include "engine/cpu_lane.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <numbers>
#include <thread>

#include "engine/rope.h"
#include "formats/error.h"
#include "formats/ggml_codec.h"

namespace lockstep::engine {
namespace {

using Buf = std::vector<float>;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

[[noreturn]] void fail(const Node& node, const std::string& what) {
  fail_node("cpu", node, what);
}

std::string weight_name(const WeightRef& ref) {
  return std::string(weight_role_name(ref.role)) +
         (ref.layer ? "@" + std::to_string(*ref.layer) : std::string());
}

// x / sqrt(mean(x²) + eps) · w for one row; the sum of squares in double, as llama.cpp does.
void rms_norm_row(const float* x, float* y, uint64_t width, const float* w, double eps) {
  double ss = 0.0;
  for (uint64_t i = 0; i < width; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(width) + eps));
  for (uint64_t i = 0; i < width; ++i) y[i] = x[i] * inv * w[i];
}

void gelu(const float* x, float* y, size_t count) {  // tanh approximation
  const float k = static_cast<float>(std::sqrt(2.0 / std::numbers::pi));
  for (size_t i = 0; i < count; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
  }
}

float round_fp16(float v) {
  return formats::fp16_to_f32(formats::f32_to_fp16(v));
}

// The context slot a fault reads for key/value j: kv_cache_off_by_one lags by one.
constexpr uint64_t lagged_slot(uint64_t j) {
  return j == 0 ? 0 : j - 1;
}

}  // namespace

// Everything the lane keeps between calls: weights as the kernels see them, small tensors
// (norms, biases) widened to f32, the KV cache and reusable buffers.
struct CpuLane::Impl {
  struct LayerCache {
    Buf k;  // [ctx, kv_dim]  after RoPE
    Buf v;  // [ctx, kv_dim]
  };
  // Inputs of one node run: [tokens, width] buffers (attention probabilities
  // [heads, tokens, ctx]), token ids for Embed, and the context's keys and values.
  struct NodeArgs {
    std::vector<const Buf*> in;
    std::span<const int32_t> ids;
    uint64_t n = 0;     // tokens
    uint32_t pos = 0;   // position of the first token
    uint64_t ctx = 0;   // keys visible to the last token (pos + n)
    const float* k_ctx = nullptr;  // [ctx, kv_dim]
    const float* v_ctx = nullptr;  // [ctx, kv_dim]
    uint64_t rows_from = 0;        // MatMul: compute only tokens >= rows_from (lm_head)
  };

  std::map<const std::byte*, cpu::WeightMatrix> matrices;  // by the tensor's bytes
  std::map<const std::byte*, Buf> vectors;                 // norms, biases, widened to f32
  std::vector<double> inv_freq;                            // [rope_dims / 2]
  std::vector<size_t> last_use;                            // per node: its last reader
  std::vector<LayerCache> cache;                           // [layers]

  // The planted fault, resolved at load: its kind and, per node, whether it is corrupted.
  std::optional<FaultKind> fault;
  std::vector<bool> faulted;  // [nodes]; empty without a fault
  // gemv_transposed: per weight tensor of a faulted matmul, an f32 copy laid out so that the
  // ordinary kernel computes the wrong-stride read.
  struct Miswired {
    Buf values;  // [rows, cols]  values[o·cols + i] = W_flat[i·rows + o]
    cpu::WeightMatrix w;
  };
  std::map<const std::byte*, Miswired> miswired;

  // Activations prepared for the matrices of the node that last read them.
  struct Prepared {
    size_t input = SIZE_MAX;  // node whose output they hold
    uint64_t rows_from = 0;
    cpu::PreparedActs acts;
  };
  std::array<Prepared, 3> prepared;  // one per ActFormat

  std::vector<Buf> pool;  // released node outputs, reused to avoid reallocations
  Buf acquire(uint64_t size) {
    Buf b;
    if (!pool.empty()) {
      b = std::move(pool.back());
      pool.pop_back();
    }
    b.resize(size);
    return b;
  }
  void release(Buf& b) {
    if (b.capacity() != 0) pool.push_back(std::move(b));
    b = Buf();
  }
};

CpuLane::CpuLane(CpuLaneOptions options) : fault_(options.fault), impl_(std::make_unique<Impl>()) {
  threads_ = options.threads != 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  isa_ = options.isa ? *options.isa : cpu::best_isa();
  const auto supported = cpu::supported_isas();
  if (std::find(supported.begin(), supported.end(), isa_) == supported.end())
    throw Error("cpu lane: this CPU cannot run the " + std::string(cpu::isa_name(isa_)) +
                " kernels");
}

CpuLane::~CpuLane() = default;

const Model& CpuLane::model() const {
  if (!model_) throw Error("cpu lane: no model loaded");
  return *model_;
}

void CpuLane::load(const Model& m) {
  model_ = nullptr;
  Impl& s = *impl_;
  s.matrices.clear();
  s.vectors.clear();
  for (const Node& node : m.plan.nodes) {
    for (const auto* refs : {&node.weights, &node.biases}) {
      for (const WeightRef& ref : *refs) {
        const TensorRef* t = m.weights.find(ref);
        if (!t) fail(node, "weight " + weight_name(ref) + " is not bound");
        const std::byte* key = t->data.data();
        // Matrices stay in their stored type; everything else (norm weights, biases, RoPE
        // divisors: one dimension) is widened once.
        const bool matrix = refs == &node.weights && (node.op == Op::MatMul || node.op == Op::Embed);
        if (matrix) {
          if (t->dims.size() != 2)
            fail(node, "weight " + weight_name(ref) + " (" + t->name + ") is not a matrix");
          cpu::WeightMatrix w;
          w.type = t->type;
          w.data = key;
          w.cols = t->dims[0];
          w.rows = t->dims[1];
          w.row_bytes = static_cast<size_t>(formats::ggml_bytes(t->type, w.cols).value_or(0));
          if (node.op == Op::MatMul) {
            try {
              (void)cpu::act_format(t->type);
            } catch (const Error& e) {
              fail(node, "weight " + weight_name(ref) + " (" + t->name + "): " + e.what());
            }
          } else if (!formats::has_codec(t->type)) {
            fail(node, "weight " + weight_name(ref) + " (" + t->name + ") has type " +
                           std::string(formats::ggml_type_info(t->type).name) +
                           ", which Lockstep cannot decode");
          }
          s.matrices.emplace(key, w);
        } else if (!s.vectors.contains(key)) {
          Buf v(t->elements());
          formats::dequantize(t->type, t->data, v);
          s.vectors.emplace(key, std::move(v));
        }
      }
    }
  }
  s.inv_freq = rope_inv_freq(m.config, m.weights);
  s.fault.reset();
  s.faulted.clear();
  s.miswired.clear();
  if (fault_) {
    s.faulted = resolve_fault(*fault_, m.plan, m.config);
    s.fault = fault_->kind;
    if (fault_->kind == FaultKind::GemvTransposed) {
      for (const Node& node : m.plan.nodes) {
        if (!s.faulted[node.index]) continue;
        for (const WeightRef& ref : node.weights) {
          const TensorRef* t = m.weights.find(ref);
          const std::byte* key = t->data.data();
          if (s.miswired.contains(key)) continue;
          const uint64_t cols = t->dims[0], rows = t->dims[1];  // stored [rows, cols]
          Buf flat(t->elements());
          formats::dequantize(t->type, t->data, flat);
          Impl::Miswired mw;
          mw.values.resize(rows * cols);
          for (uint64_t o = 0; o < rows; ++o)
            for (uint64_t i = 0; i < cols; ++i) mw.values[o * cols + i] = flat[i * rows + o];
          Impl::Miswired& e = s.miswired.emplace(key, std::move(mw)).first->second;
          e.w.type = formats::GgmlType::F32;
          e.w.data = reinterpret_cast<const std::byte*>(e.values.data());
          e.w.rows = rows;
          e.w.cols = cols;
          e.w.row_bytes = cols * sizeof(float);
        }
      }
    }
  }
  s.last_use.assign(m.plan.nodes.size(), 0);
  for (const Node& node : m.plan.nodes)
    for (size_t in : node.inputs) s.last_use[in] = std::max(s.last_use[in], node.index);
  model_ = &m;
  reset();
}

void CpuLane::reset() {
  impl_->cache.assign(model_ ? model_->config.layers : 0, Impl::LayerCache{});
  cached_ = 0;
}

namespace {

// The lane's node implementations, over f32 buffers. One object per forward or replay.
class Runner {
 public:
  Runner(const Model& m, CpuLane::Impl& s, unsigned threads, cpu::Isa isa)
      : m_(m), c_(m.config), s_(s), threads_(static_cast<int>(threads)), isa_(isa) {}

  // Whether `kind` is planted at `node`: one test per node or row, never per element.
  bool faulty(const Node& node, FaultKind kind) const {
    return s_.fault == kind && s_.faulted[node.index];
  }

  const cpu::WeightMatrix& matrix(const Node& node, const WeightRef& ref) const {
    const TensorRef* t = m_.weights.find(ref);
    if (node.op == Op::MatMul && faulty(node, FaultKind::GemvTransposed)) {
      auto it = t ? s_.miswired.find(t->data.data()) : s_.miswired.end();
      if (it == s_.miswired.end()) fail(node, "weight " + weight_name(ref) + " is not loaded");
      return it->second.w;
    }
    auto it = t ? s_.matrices.find(t->data.data()) : s_.matrices.end();
    if (it == s_.matrices.end()) fail(node, "weight " + weight_name(ref) + " is not loaded");
    return it->second;
  }
  const Buf& vec(const Node& node, const WeightRef& ref) const {
    const TensorRef* t = m_.weights.find(ref);
    auto it = t ? s_.vectors.find(t->data.data()) : s_.vectors.end();
    if (it == s_.vectors.end()) fail(node, "weight " + weight_name(ref) + " is not loaded");
    return it->second;
  }
  uint64_t input_width(const Node& node, size_t i) const {
    return m_.plan.nodes.at(node.inputs.at(i)).width;
  }

  // RoPE cos/sin for positions pos..pos+n-1: [n, rope_dims/2] each.
  void rope_table(uint32_t pos, uint64_t n) {
    const uint64_t half = c_.rope_dims / 2;
    cos_.resize(n * half);
    sin_.resize(n * half);
    for (uint64_t t = 0; t < n; ++t)
      for (uint64_t i = 0; i < half; ++i) {
        const double theta = static_cast<double>(pos + t) * s_.inv_freq[i];
        cos_[t * half + i] = static_cast<float>(std::cos(theta));
        sin_[t * half + i] = static_cast<float>(std::sin(theta));
      }
  }

  void run(const Node& node, const CpuLane::Impl::NodeArgs& a, Buf& y);

  // Attention of one query row (head h, token t) over the context, in three steps that both the
  // node-by-node path and the fused path call, so the two agree bit for bit.
  void score_row(const Node& node, const float* q, uint64_t h, uint64_t qpos, uint64_t ctx,
                 const float* k_ctx, float* row) const {
    const uint64_t hd = c_.head_dim, kv_dim = c_.kv_dim();
    uint64_t kh = h / c_.gqa_ratio();
    float scale = static_cast<float>(node.scale);
    bool lag = false;
    if (s_.fault && s_.faulted[node.index]) {
      if (*s_.fault == FaultKind::GqaHeadMap) kh = h % c_.kv_heads;
      if (*s_.fault == FaultKind::AttnScaleMissing) scale = 1.0f;
      lag = *s_.fault == FaultKind::KvCacheOffByOne;
    }
    const float* k = k_ctx + kh * hd;  // [ctx, kv_dim] from this head's offset
    const auto visible = [&](uint64_t j) {
      return j <= qpos && !(c_.sliding_window && qpos - j >= *c_.sliding_window);
    };
    if (lag) {
      for (uint64_t j = 0; j < ctx; ++j)
        row[j] =
            visible(j) ? scale * cpu::dot_f32(isa_, q, k + lagged_slot(j) * kv_dim, hd) : kNegInf;
      return;
    }
    for (uint64_t j = 0; j < ctx; ++j)
      row[j] = visible(j) ? scale * cpu::dot_f32(isa_, q, k + j * kv_dim, hd) : kNegInf;
  }
  void softmax_row(const Node& node, float* row, uint64_t ctx) const {
    if (faulty(node, FaultKind::SoftmaxNoMax)) return softmax_row_fp16_no_max(row, ctx);
    float mx = kNegInf;
    for (uint64_t j = 0; j < ctx; ++j) mx = std::max(mx, row[j]);
    double sum = 0.0;
    for (uint64_t j = 0; j < ctx; ++j) {
      row[j] = row[j] == kNegInf ? 0.0f : std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (uint64_t j = 0; j < ctx; ++j) row[j] *= inv;
  }
  // softmax_no_max: exp(s) without the row max; each term, the running sum and the result in
  // fp16 (overflowing to Inf past 65504, so the row becomes NaN or zeros).
  static void softmax_row_fp16_no_max(float* row, uint64_t ctx) {
    float sum = 0.0f;
    for (uint64_t j = 0; j < ctx; ++j) {
      row[j] = row[j] == kNegInf ? 0.0f : round_fp16(std::exp(row[j]));
      sum = round_fp16(sum + row[j]);
    }
    for (uint64_t j = 0; j < ctx; ++j) row[j] = round_fp16(row[j] / sum);
  }
  void weighted_sum_row(const Node& node, const float* p, uint64_t h, uint64_t ctx,
                        const float* v_ctx, float* out) const {
    const uint64_t hd = c_.head_dim, kv_dim = c_.kv_dim();
    uint64_t kh = h / c_.gqa_ratio();
    bool lag = false;
    if (s_.fault && s_.faulted[node.index]) {
      if (*s_.fault == FaultKind::GqaHeadMap) kh = h % c_.kv_heads;
      lag = *s_.fault == FaultKind::KvCacheOffByOne;
    }
    const float* v = v_ctx + kh * hd;  // [ctx, kv_dim] from this head's offset
    std::fill(out, out + hd, 0.0f);
    if (lag) {
      for (uint64_t j = 0; j < ctx; ++j)
        if (p[j] != 0.0f) cpu::axpy_f32(isa_, p[j], v + lagged_slot(j) * kv_dim, out, hd);
      return;
    }
    for (uint64_t j = 0; j < ctx; ++j)
      if (p[j] != 0.0f) cpu::axpy_f32(isa_, p[j], v + j * kv_dim, out, hd);
  }
  // partial_write: only the first part of each [width] row of `node`'s output is written.
  void finish(const Node& node, Buf& y) const {
    if (!faulty(node, FaultKind::PartialWrite) || node.width == 0) return;
    const uint64_t keep =
        static_cast<uint64_t>(static_cast<double>(node.width) * kPartialWriteFraction);
    for (uint64_t r = 0; r < y.size() / node.width; ++r)
      std::fill(y.begin() + static_cast<ptrdiff_t>(r * node.width + keep),
                y.begin() + static_cast<ptrdiff_t>((r + 1) * node.width), 0.0f);
  }

  // Scores, softmax and weighted sum in one pass per query row, with no [heads, tokens, ctx]
  // tensor: used when neither attn_scores nor attn_softmax of the layer is captured.
  void fused_attention(const Node& scores_node, const Node& probs_node, const Node& sum_node,
                       const Buf& q, uint64_t n, uint32_t pos, uint64_t ctx, const float* k_ctx,
                       const float* v_ctx, Buf& y) {
    const uint64_t hd = c_.head_dim, q_dim = c_.q_dim(), heads = c_.heads;
    y.assign(n * q_dim, 0.0f);  // [tokens, q_dim]
#pragma omp parallel num_threads(threads_)
    {
      Buf row(ctx);
#pragma omp for schedule(static)
      for (uint64_t r = 0; r < heads * n; ++r) {
        const uint64_t h = r / n, t = r % n;
        score_row(scores_node, &q[t * q_dim + h * hd], h, pos + t, ctx, k_ctx, row.data());
        softmax_row(probs_node, row.data(), ctx);
        weighted_sum_row(sum_node, row.data(), h, ctx, v_ctx, &y[t * q_dim + h * hd]);
      }
    }
    finish(sum_node, y);
  }

 private:
  void matmul(const Node& node, const CpuLane::Impl::NodeArgs& a, Buf& y);
  bool parallel(uint64_t work) const { return threads_ > 1 && work >= 32768; }
  double eps(const Node& node) const {
    return faulty(node, FaultKind::RmsEpsWrong) ? kWrongNormEps : c_.norm_eps;
  }

  const Model& m_;
  const ModelConfig& c_;
  CpuLane::Impl& s_;
  int threads_;
  cpu::Isa isa_;
  std::vector<float> cos_, sin_;
};

void Runner::matmul(const Node& node, const CpuLane::Impl::NodeArgs& a, Buf& y) {
  const uint64_t n = a.n, width = node.width, in_w = input_width(node, 0);
  const uint64_t from = a.rows_from, rows = n - from;
  y.assign(n * width, 0.0f);  // [tokens, Σ out]; rows before `from` stay 0

  // Every matrix's rows, split into chunks the team shares out.
  struct Chunk {
    const cpu::WeightMatrix* w;
    const cpu::PreparedActs* x;
    uint64_t r0, r1, col;
  };
  std::vector<Chunk> chunks;
  // About 8 chunks per thread over all matrices, in multiples of 16 rows (whole kernel tiles).
  const uint64_t per = std::max<uint64_t>(
      16, (width / (static_cast<uint64_t>(threads_) * 8) + 15) / 16 * 16);
  uint64_t col = 0;
  for (const WeightRef& ref : node.weights) {
    const cpu::WeightMatrix& w = matrix(node, ref);
    if (w.cols != in_w || col + w.rows > width)
      fail(node, "weight " + weight_name(ref) + " [" + std::to_string(w.cols) + " × " +
                     std::to_string(w.rows) + "] does not fit input width " +
                     std::to_string(in_w) + " and output width " + std::to_string(width));
    const cpu::ActFormat f = cpu::act_format(w.type);
    auto& p = s_.prepared[static_cast<size_t>(f)];
    if (p.input != node.inputs[0] || p.rows_from != from || p.acts.rows != rows) {
      cpu::prepare_acts(isa_, f, a.in[0]->data() + from * in_w, rows, in_w, in_w, p.acts);
      p.input = node.inputs[0];
      p.rows_from = from;
    }
    for (uint64_t r0 = 0; r0 < w.rows; r0 += per)
      chunks.push_back({&w, &p.acts, r0, std::min(w.rows, r0 + per), col});
    col += w.rows;
  }
  if (col != width) fail(node, "matrices give width " + std::to_string(col));

  float* out = y.data() + from * width;
  const int64_t count = static_cast<int64_t>(chunks.size());
  // Dynamic: chunks differ in cost (Q6_K V beside Q4_K Q and K); results do not depend on
  // which thread computes a chunk. A small product (a tiny model's) costs less than waking the
  // team.
#pragma omp parallel for schedule(dynamic) num_threads(threads_) if (count > 1 && parallel(rows * width * in_w / 8))
  for (int64_t i = 0; i < count; ++i) {
    const Chunk& ch = chunks[static_cast<size_t>(i)];
    cpu::matmul(isa_, *ch.w, *ch.x, ch.r0, ch.r1, out + ch.col, width);
  }

  if (!node.biases.empty()) {
    Buf bias;  // [width]  concatenated
    for (const WeightRef& ref : node.biases) {
      const Buf& b = vec(node, ref);
      bias.insert(bias.end(), b.begin(), b.end());
    }
    if (bias.size() != width) fail(node, "biases give width " + std::to_string(bias.size()));
    for (uint64_t t = from; t < n; ++t)
      for (uint64_t i = 0; i < width; ++i) y[t * width + i] += bias[i];
  }
  if (node.scale != 1.0) {
    const float scale = static_cast<float>(node.scale);
    for (uint64_t i = from * width; i < y.size(); ++i) y[i] *= scale;
  }
}

void Runner::run(const Node& node, const CpuLane::Impl::NodeArgs& a, Buf& y) {
  const uint64_t n = a.n, width = node.width;
  const uint64_t hd = c_.head_dim, q_dim = c_.q_dim();

  switch (node.op) {
    case Op::Embed: {
      const cpu::WeightMatrix& e = matrix(node, node.weights.at(0));  // [vocab, hidden]
      y.resize(n * width);                                            // [tokens, hidden]
      const float scale = static_cast<float>(node.scale);
      for (uint64_t t = 0; t < n; ++t) {
        if (a.ids[t] < 0 || static_cast<uint64_t>(a.ids[t]) >= e.rows)
          fail(node, "token id " + std::to_string(a.ids[t]) + " is outside the vocabulary [0, " +
                         std::to_string(e.rows) + ")");
        std::span<const std::byte> row(e.data + static_cast<uint64_t>(a.ids[t]) * e.row_bytes,
                                       e.row_bytes);
        std::span<float> dst(&y[t * width], width);
        formats::dequantize(e.type, row, dst);
        if (scale != 1.0f)
          for (float& v : dst) v *= scale;
      }
      break;
    }
    case Op::RmsNorm: {
      const Buf& w = vec(node, node.weights.at(0));  // [hidden]
      const Buf& x = *a.in[0];                       // [tokens, hidden]
      y.resize(n * width);
      for (uint64_t t = 0; t < n; ++t)
        rms_norm_row(&x[t * width], &y[t * width], width, w.data(), eps(node));
      break;
    }
    case Op::LayerNorm: {
      const Buf& w = vec(node, node.weights.at(0));  // [hidden]
      const Buf& b = vec(node, node.biases.at(0));   // [hidden]
      const Buf& x = *a.in[0];                       // [tokens, hidden]
      y.resize(n * width);
      for (uint64_t t = 0; t < n; ++t) {
        const float* xr = &x[t * width];
        double mean = 0.0;
        for (uint64_t i = 0; i < width; ++i) mean += xr[i];
        mean /= static_cast<double>(width);
        double var = 0.0;
        for (uint64_t i = 0; i < width; ++i) var += (xr[i] - mean) * (xr[i] - mean);
        const float inv =
            static_cast<float>(1.0 / std::sqrt(var / static_cast<double>(width) + eps(node)));
        const float mf = static_cast<float>(mean);
        for (uint64_t i = 0; i < width; ++i) y[t * width + i] = (xr[i] - mf) * inv * w[i] + b[i];
      }
      break;
    }
    case Op::MatMul:
      matmul(node, a, y);
      break;
    case Op::AddBias: {
      Buf bias;  // [width]  concatenated
      for (const WeightRef& ref : node.biases) {
        const Buf& b = vec(node, ref);
        bias.insert(bias.end(), b.begin(), b.end());
      }
      if (bias.size() != width) fail(node, "biases give width " + std::to_string(bias.size()));
      const Buf& x = *a.in[0];  // [tokens, width]
      y.resize(n * width);
      if (faulty(node, FaultKind::DropQkvBias)) {
        std::copy(x.begin(), x.begin() + static_cast<ptrdiff_t>(n * width), y.begin());
      } else {
        for (uint64_t t = 0; t < n; ++t)
          for (uint64_t i = 0; i < width; ++i) y[t * width + i] = x[t * width + i] + bias[i];
      }
      if (node.scale != 1.0)
        for (float& v : y) v *= static_cast<float>(node.scale);
      break;
    }
    case Op::QkNorm: {
      const Buf& wq = vec(node, node.weights.at(0));  // [head_dim]
      const Buf& wk = vec(node, node.weights.at(1));  // [head_dim]
      y = *a.in[0];  // [tokens, q_dim + 2·kv_dim]; each Q and K head normed, V passes
      for (uint64_t t = 0; t < n; ++t) {
        float* row = &y[t * width];
        for (uint64_t h = 0; h < c_.heads; ++h)
          rms_norm_row(row + h * hd, row + h * hd, hd, wq.data(), c_.norm_eps);
        for (uint64_t h = 0; h < c_.kv_heads; ++h)
          rms_norm_row(row + q_dim + h * hd, row + q_dim + h * hd, hd, wk.data(), c_.norm_eps);
      }
      break;
    }
    case Op::Rope: {
      if (node.part != QkvPart::Q && node.part != QkvPart::K)
        fail(node, "rope part must be Q or K");
      const uint64_t in_w = input_width(node, 0);
      const uint64_t offset = node.part == QkvPart::Q ? 0 : q_dim;  // into [Q | K | V]
      const uint64_t half = c_.rope_dims / 2;
      const bool normal =
          (c_.rope_layout == RopeLayout::Normal) != faulty(node, FaultKind::RopeNeoxSwap);
      if (cos_.size() != n * half) rope_table(a.pos, n);
      y.resize(n * width);  // [tokens, heads · head_dim] of the part
      for (uint64_t t = 0; t < n; ++t) {
        const float* src = &(*a.in[0])[t * in_w + offset];
        float* dst = &y[t * width];
        std::copy(src, src + width, dst);
        const float* cs = &cos_[t * half];
        const float* sn = &sin_[t * half];
        for (uint64_t h = 0; h < width / hd; ++h) {
          float* x = dst + h * hd;  // [head_dim]; dims past rope_dims pass through
          for (uint64_t i = 0; i < half; ++i) {
            // Normal: adjacent pairs (2i, 2i+1); NeoX: split halves (i, i + rot/2).
            const uint64_t p = normal ? 2 * i : i, q = normal ? 2 * i + 1 : i + half;
            const float x0 = x[p], x1 = x[q];
            x[p] = x0 * cs[i] - x1 * sn[i];
            x[q] = x0 * sn[i] + x1 * cs[i];
          }
        }
      }
      break;
    }
    case Op::AttnScores: {
      const Buf& q = *a.in[0];  // [tokens, q_dim]
      const uint64_t ctx = a.ctx, heads = c_.heads;
      y.resize(heads * n * ctx);  // [heads, tokens, ctx]
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel(heads * n * ctx * hd))
      for (uint64_t r = 0; r < heads * n; ++r) {
        const uint64_t h = r / n, t = r % n;
        score_row(node, &q[t * q_dim + h * hd], h, a.pos + t, ctx, a.k_ctx, &y[r * ctx]);
      }
      break;
    }
    case Op::Softmax: {
      y = *a.in[0];  // [heads, tokens, ctx]
      const uint64_t rows = c_.heads * n, ctx = y.size() / rows;
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel(rows * ctx))
      for (uint64_t r = 0; r < rows; ++r) softmax_row(node, &y[r * ctx], ctx);
      break;
    }
    case Op::AttnWeightedSum: {
      const Buf& p = *a.in[0];  // [heads, tokens, ctx]
      const uint64_t ctx = a.ctx, heads = c_.heads;
      if (p.size() != heads * n * ctx)
        fail(node, "probabilities hold " + std::to_string(p.size()) + " values, expected " +
                       std::to_string(heads * n * ctx));
      y.assign(n * width, 0.0f);  // [tokens, q_dim]
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel(heads * n * ctx * hd))
      for (uint64_t r = 0; r < heads * n; ++r) {
        const uint64_t h = r / n, t = r % n;
        weighted_sum_row(node, &p[r * ctx], h, ctx, a.v_ctx, &y[t * width + h * hd]);
      }
      break;
    }
    case Op::Add: {
      const Buf& x0 = *a.in[0];
      const Buf& x1 = *a.in[1];
      y.resize(x0.size());  // [tokens, width]
      const float scale = static_cast<float>(node.scale);
      if (scale == 1.0f) {
        for (size_t i = 0; i < y.size(); ++i) y[i] = x0[i] + x1[i];
      } else {
        for (size_t i = 0; i < y.size(); ++i) y[i] = x0[i] + scale * x1[i];
      }
      break;
    }
    case Op::Silu: {
      const Buf& x = *a.in[0];  // [tokens, ffn]
      y.resize(x.size());
      if (faulty(node, FaultKind::SiluAsGelu)) {
        gelu(x.data(), y.data(), y.size());
      } else {
        for (size_t i = 0; i < y.size(); ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
      }
      break;
    }
    case Op::Gelu: {
      const Buf& x = *a.in[0];  // [tokens, ffn]
      y.resize(x.size());
      gelu(x.data(), y.data(), y.size());
      break;
    }
    case Op::Mul: {
      const Buf& x0 = *a.in[0];
      const Buf& x1 = *a.in[1];
      y.resize(x0.size());  // [tokens, ffn]
      for (size_t i = 0; i < y.size(); ++i) y[i] = x0[i] * x1[i];
      break;
    }
  }
  finish(node, y);
}

}  // namespace

Logits CpuLane::forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                        Trace& trace) {
  const Model& m = model();
  const ModelConfig& c = m.config;
  Impl& s = *impl_;
  if (pos > cached_)
    throw Error("cpu lane: forward at position " + std::to_string(pos) +
                " but the KV cache holds " + std::to_string(cached_) + " tokens");
  if (tokens.empty()) throw Error("cpu lane: forward needs at least one token");
  const uint64_t n = tokens.size(), kv_dim = c.kv_dim(), q_dim = c.q_dim();
  const uint64_t ctx = uint64_t{pos} + n;
  for (Impl::LayerCache& lc : s.cache) {
    lc.k.resize(uint64_t{pos} * kv_dim);
    lc.v.resize(uint64_t{pos} * kv_dim);
  }
  cached_ = pos;
  trace.lane = name();
  trace.pos = pos;
  trace.tokens.assign(tokens.begin(), tokens.end());
  for (auto& p : s.prepared) p.input = SIZE_MAX;

  Runner runner(m, s, threads_, isa_);
  const std::vector<Node>& nodes = m.plan.nodes;
  std::vector<Buf> out(nodes.size());  // per node: [tokens, width] or [heads, tokens, ctx]
  std::vector<bool> done(nodes.size(), false);
  const auto wants = [&](const Node& node) {
    return node.stage && capture.wants(*node.stage, node.layer);
  };

  for (const Node& node : nodes) {
    observe(node);
    if (!done[node.index]) {
      Impl::NodeArgs a;
      for (size_t i : node.inputs) a.in.push_back(&out[i]);
      a.ids = tokens;
      a.n = n;
      a.pos = pos;
      a.ctx = ctx;
      Buf& y = out[node.index];
      y = s.acquire(0);
      if (node.op == Op::AttnScores) {
        // The layer's K (post-RoPE, input 1) and V (the V slice of the fused QKV that the
        // weighted sum reads) join the cache here, so the fused path has both.
        const Node& probs = nodes.at(node.index + 1);
        const Node& sum = nodes.at(node.index + 2);
        if (probs.op != Op::Softmax || sum.op != Op::AttnWeightedSum)
          fail(node, "attention scores must be followed by softmax and the weighted sum");
        Impl::LayerCache& lc = s.cache.at(*node.layer);
        const Buf& k = *a.in[1];
        lc.k.insert(lc.k.end(), k.begin(), k.end());
        const Buf& qkv = out[sum.inputs.at(1)];
        const uint64_t qkv_w = nodes[sum.inputs[1]].width;
        for (uint64_t t = 0; t < n; ++t) {
          const float* v = &qkv[t * qkv_w + q_dim + kv_dim];
          lc.v.insert(lc.v.end(), v, v + kv_dim);
        }
        a.k_ctx = lc.k.data();
        if (!wants(node) && !wants(probs)) {
          Buf& att = out[sum.index];
          att = s.acquire(0);
          runner.fused_attention(node, probs, sum, *a.in[0], n, pos, ctx, lc.k.data(), lc.v.data(),
                                 att);
          done[node.index] = done[probs.index] = done[sum.index] = true;
          if (wants(sum))
            trace.put({*sum.stage, sum.layer}, Tensor{{n, sum.width}, att});
        } else {
          runner.run(node, a, y);
        }
      } else {
        if (node.op == Op::AttnWeightedSum) a.v_ctx = s.cache.at(*node.layer).v.data();
        if (node.stage == Stage::LmHead && last_logits_only() && !wants(node))
          a.rows_from = n - 1;
        runner.run(node, a, y);
      }
      if (!done[node.index] && wants(node)) {
        Tensor t;
        t.shape = output_shape(c, node, n, ctx);
        t.data = y;
        trace.put({*node.stage, node.layer}, std::move(t));
      }
      done[node.index] = true;
    }
    // Free inputs no later node reads (the last node's output is the logits).
    for (size_t i : node.inputs)
      if (s.last_use[i] == node.index) s.release(out[i]);
  }
  cached_ = static_cast<uint32_t>(ctx);

  const Node* head = m.plan.find(Stage::LmHead, std::nullopt);
  if (!head) throw Error("cpu lane: the plan has no lm_head node");
  Logits logits;
  logits.tokens = last_logits_only() ? 1 : n;
  logits.vocab = head->width;
  const Buf& all = out[head->index];  // [tokens, vocab]
  logits.values.assign(all.end() - static_cast<ptrdiff_t>(logits.tokens * logits.vocab), all.end());
  for (Buf& b : out) s.release(b);
  return logits;
}

Tensor CpuLane::replay(const Node& node, std::span<const Tensor> inputs) {
  const Model& m = model();
  const ModelConfig& c = m.config;
  Impl& s = *impl_;
  ReplayInputs checked = check_replay_inputs("cpu", m, node, inputs);
  const uint64_t n = checked.tokens;
  Runner runner(m, s, threads_, isa_);
  std::vector<const Buf*> in;
  if (node.op != Op::Embed)
    for (const Tensor& t : inputs) in.push_back(&t.data);
  // Attention over exactly the given tokens: keys from input 1 (post-RoPE K), values from the
  // V slice of input 1 (the fused QKV).
  Buf v_ctx;  // [tokens, kv_dim]
  Impl::NodeArgs a;
  a.in = in;
  a.ids = checked.ids;
  a.n = n;
  a.pos = 0;
  a.ctx = n;
  if (node.op == Op::AttnScores) {
    a.k_ctx = inputs[1].data.data();
  } else if (node.op == Op::AttnWeightedSum) {
    const uint64_t qkv_w = m.plan.nodes.at(node.inputs[1]).width;
    for (uint64_t t = 0; t < n; ++t) {
      const float* src = &inputs[1].data[t * qkv_w + c.q_dim() + c.kv_dim()];
      v_ctx.insert(v_ctx.end(), src, src + c.kv_dim());
    }
    a.v_ctx = v_ctx.data();
  }
  for (auto& p : s.prepared) p.input = SIZE_MAX;  // replay inputs are not node outputs
  Tensor t;
  runner.run(node, a, t.data);
  for (auto& p : s.prepared) p.input = SIZE_MAX;
  t.shape = output_shape(c, node, n, n);
  return t;
}

}  // namespace lockstep::engine
