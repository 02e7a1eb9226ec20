#include "engine/ref_lane.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <numbers>
#include <set>

#include "engine/rope.h"
#include "formats/error.h"
#include "formats/ggml_codec.h"

namespace lockstep::engine {
namespace {

using Vec = std::vector<double>;

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

[[noreturn]] void fail(const Node& node, const std::string& what) {
  fail_node("ref", node, what);
}

// out[t, o] = Σ_i x[t, i] · W[o, i] for one matrix stored [out, in] (ggml dims [in, out]),
// written at column offset `col` of an output row of width `out_width`.
void matmul(const Vec& x, const std::vector<float>& w, uint64_t n, uint64_t in, uint64_t out,
            Vec& y, uint64_t out_width, uint64_t col) {
  for (uint64_t t = 0; t < n; ++t) {
    const double* xt = &x[t * in];  // [in]
    for (uint64_t o = 0; o < out; ++o) {
      const float* wo = &w[o * in];  // [in]
      double acc = 0.0;
      for (uint64_t i = 0; i < in; ++i) acc += static_cast<double>(wo[i]) * xt[i];
      y[t * out_width + col + o] = acc;
    }
  }
}

// x / sqrt(mean(x²) + eps) · w over rows of `width`, in place.
void rms_norm_rows(Vec& x, uint64_t rows, uint64_t width, const std::vector<float>& w, double eps) {
  for (uint64_t r = 0; r < rows; ++r) {
    double* xr = &x[r * width];  // [width]
    double ss = 0.0;
    for (uint64_t i = 0; i < width; ++i) ss += xr[i] * xr[i];
    double inv = 1.0 / std::sqrt(ss / static_cast<double>(width) + eps);
    for (uint64_t i = 0; i < width; ++i) xr[i] = xr[i] * inv * static_cast<double>(w[i]);
  }
}

}  // namespace

const Model& RefLane::model() const {
  if (!model_) throw Error("ref lane: no model loaded");
  return *model_;
}

const std::vector<float>& RefLane::weight(const WeightRef& ref) const {
  const TensorRef* t = model().weights.find(ref);
  auto it = t ? dequantized_.find(t->data.data()) : dequantized_.end();
  if (it == dequantized_.end())
    throw Error("ref lane: weight " + std::string(weight_role_name(ref.role)) +
                (ref.layer ? "@" + std::to_string(*ref.layer) : std::string()) + " is not loaded");
  return it->second;
}

uint64_t ref_lane_weight_bytes(const Model& m) {
  std::set<const std::byte*> seen;
  uint64_t bytes = 0;
  for (const Node& node : m.plan.nodes)
    for (const auto* refs : {&node.weights, &node.biases})
      for (const WeightRef& ref : *refs)
        if (const TensorRef* t = m.weights.find(ref); t && seen.insert(t->data.data()).second)
          bytes += t->elements() * sizeof(float);
  return bytes;
}

std::optional<uint64_t> available_memory_bytes() {
  if (const char* v = std::getenv("LOCKSTEP_MEMORY_AVAILABLE"); v && *v) {
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (end && *end == '\0') return n;
    throw Error(std::string("LOCKSTEP_MEMORY_AVAILABLE: \"") + v + "\" is not a byte count");
  }
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

std::string ref_lane_memory_problem(const Model& m) {
  const std::optional<uint64_t> available = available_memory_bytes();
  const uint64_t needed = ref_lane_weight_bytes(m);
  if (!available || needed <= *available) return "";
  char text[256];
  std::snprintf(text, sizeof text,
                "lane ref (the float64 oracle) holds this model's weights as f32: %.1f GB, more "
                "than the %.1f GB of memory available; compare lanes without ref (cpu, cuda) and "
                "no noise floor (it runs ref)",
                double(needed) / 1e9, double(*available) / 1e9);
  return text;
}

void RefLane::load(const Model& m) {
  model_ = nullptr;
  dequantized_.clear();
  if (const std::string problem = ref_lane_memory_problem(m); !problem.empty())
    throw Error(problem);
  const ModelConfig& c = m.config;
  for (const Node& node : m.plan.nodes) {
    for (const auto* refs : {&node.weights, &node.biases}) {
      for (const WeightRef& ref : *refs) {
        const TensorRef* t = m.weights.find(ref);
        if (!t) fail(node, "weight " + std::string(weight_role_name(ref.role)) + " is not bound");
        auto [it, fresh] = dequantized_.try_emplace(t->data.data());
        if (!fresh) continue;
        it->second.resize(t->elements());
        formats::dequantize(t->type, t->data, it->second);
      }
    }
  }

  rope_inv_freq_ = rope_inv_freq(c, m.weights);

  last_use_.assign(m.plan.nodes.size(), 0);
  for (const Node& node : m.plan.nodes)
    for (size_t in : node.inputs) last_use_[in] = std::max(last_use_[in], node.index);
  model_ = &m;
  reset();
}

void RefLane::reset() {
  cache_.assign(model_ ? model_->config.layers : 0, LayerCache{});
  cached_ = 0;
}

uint64_t RefLane::input_width(const Node& node, size_t i) const {
  return model().plan.nodes.at(node.inputs.at(i)).width;
}

std::vector<double> RefLane::run_node(const Node& node,
                                      std::span<const std::vector<double>* const> in,
                                      std::span<const int32_t> ids, uint64_t n, uint32_t pos,
                                      std::span<const double> k_ctx,
                                      std::span<const double> v_ctx) const {
  const ModelConfig& c = model().config;
  const uint64_t width = node.width;
  const uint64_t hd = c.head_dim, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const uint64_t ratio = c.gqa_ratio();
  Vec y;

  switch (node.op) {
    case Op::Embed: {
      const std::vector<float>& e = weight(node.weights.at(0));  // [vocab, hidden]
      y.assign(n * width, 0.0);                                  // [tokens, hidden]
      for (uint64_t t = 0; t < n; ++t) {
        if (ids[t] < 0 || static_cast<uint64_t>(ids[t]) >= c.vocab)
          fail(node, "token id " + std::to_string(ids[t]) + " is outside the vocabulary [0, " +
                         std::to_string(c.vocab) + ")");
        const float* row = &e[static_cast<uint64_t>(ids[t]) * width];
        for (uint64_t i = 0; i < width; ++i) y[t * width + i] = row[i] * node.scale;
      }
      break;
    }
    case Op::RmsNorm: {
      y = *in[0];  // [tokens, hidden]
      rms_norm_rows(y, n, width, weight(node.weights.at(0)), c.norm_eps);
      break;
    }
    case Op::LayerNorm: {
      const std::vector<float>& w = weight(node.weights.at(0));  // [hidden]
      const std::vector<float>& b = weight(node.biases.at(0));   // [hidden]
      y = *in[0];                                                // [tokens, hidden]
      for (uint64_t t = 0; t < n; ++t) {
        double* x = &y[t * width];
        double mean = 0.0;
        for (uint64_t i = 0; i < width; ++i) mean += x[i];
        mean /= static_cast<double>(width);
        double var = 0.0;
        for (uint64_t i = 0; i < width; ++i) var += (x[i] - mean) * (x[i] - mean);
        double inv = 1.0 / std::sqrt(var / static_cast<double>(width) + c.norm_eps);
        for (uint64_t i = 0; i < width; ++i)
          x[i] = (x[i] - mean) * inv * static_cast<double>(w[i]) + static_cast<double>(b[i]);
      }
      break;
    }
    case Op::MatMul:
    case Op::AddBias: {
      const uint64_t in_w = input_width(node, 0);
      if (node.op == Op::MatMul) {
        y.assign(n * width, 0.0);  // [tokens, Σ out]
        uint64_t col = 0;
        for (const WeightRef& ref : node.weights) {
          const std::vector<float>& w = weight(ref);  // [out, in]
          uint64_t out = w.size() / in_w;
          if (out * in_w != w.size() || col + out > width)
            fail(node, "weight " + std::string(weight_role_name(ref.role)) + " of " +
                           std::to_string(w.size()) + " values does not fit input width " +
                           std::to_string(in_w) + " and output width " + std::to_string(width));
          matmul(*in[0], w, n, in_w, out, y, width, col);
          col += out;
        }
        if (col != width) fail(node, "matrices give width " + std::to_string(col));
      } else {
        y = *in[0];  // [tokens, width]
      }
      if (!node.biases.empty()) {
        Vec bias;  // [width]  concatenated
        for (const WeightRef& ref : node.biases) {
          const std::vector<float>& b = weight(ref);
          bias.insert(bias.end(), b.begin(), b.end());
        }
        if (bias.size() != width) fail(node, "biases give width " + std::to_string(bias.size()));
        for (uint64_t t = 0; t < n; ++t)
          for (uint64_t i = 0; i < width; ++i) y[t * width + i] += bias[i];
      }
      if (node.scale != 1.0)
        for (double& v : y) v *= node.scale;
      break;
    }
    case Op::QkNorm: {
      const std::vector<float>& wq = weight(node.weights.at(0));  // [head_dim]
      const std::vector<float>& wk = weight(node.weights.at(1));  // [head_dim]
      y = *in[0];  // [tokens, q_dim + 2·kv_dim]; each Q and K head normed as a row of head_dim
      for (uint64_t t = 0; t < n; ++t) {
        double* row = &y[t * width];
        for (uint64_t h = 0; h < c.heads; ++h) {
          Vec head(row + h * hd, row + (h + 1) * hd);
          rms_norm_rows(head, 1, hd, wq, c.norm_eps);
          std::copy(head.begin(), head.end(), row + h * hd);
        }
        for (uint64_t h = 0; h < c.kv_heads; ++h) {
          double* k = row + q_dim + h * hd;
          Vec head(k, k + hd);
          rms_norm_rows(head, 1, hd, wk, c.norm_eps);
          std::copy(head.begin(), head.end(), k);
        }
      }
      break;
    }
    case Op::Rope: {
      const uint64_t in_w = input_width(node, 0);
      if (node.part != QkvPart::Q && node.part != QkvPart::K)
        fail(node, "rope part must be Q or K");
      const uint64_t offset = node.part == QkvPart::Q ? 0 : q_dim;  // into [Q | K | V]
      y.assign(n * width, 0.0);  // [tokens, heads · head_dim] of the part
      const uint64_t rot = c.rope_dims, half = rot / 2;
      for (uint64_t t = 0; t < n; ++t) {
        const double p = static_cast<double>(pos + t);
        const double* src = &(*in[0])[t * in_w + offset];
        double* dst = &y[t * width];
        std::copy(src, src + width, dst);
        for (uint64_t h = 0; h < width / hd; ++h) {
          double* x = dst + h * hd;  // [head_dim]; dims past rope_dims pass through
          for (uint64_t i = 0; i < half; ++i) {
            double theta = p * rope_inv_freq_[i];
            double cs = std::cos(theta), sn = std::sin(theta);
            // Normal: adjacent pairs (2i, 2i+1); NeoX: split halves (i, i + rot/2).
            uint64_t a = c.rope_layout == RopeLayout::Normal ? 2 * i : i;
            uint64_t b = c.rope_layout == RopeLayout::Normal ? 2 * i + 1 : i + half;
            double x0 = x[a], x1 = x[b];
            x[a] = x0 * cs - x1 * sn;
            x[b] = x0 * sn + x1 * cs;
          }
        }
      }
      break;
    }
    case Op::AttnScores: {
      const Vec& q = *in[0];                       // [tokens, q_dim]
      const uint64_t ctx = k_ctx.size() / kv_dim;  // k_ctx: [ctx, kv_dim]
      y.assign(c.heads * n * ctx, kNegInf);        // [heads, tokens, ctx]
      for (uint64_t h = 0; h < c.heads; ++h) {
        const uint64_t kh = h / ratio;  // GQA: ratio Q heads share one KV head
        for (uint64_t t = 0; t < n; ++t) {
          const uint64_t qpos = pos + t;
          const double* qv = &q[t * q_dim + h * hd];
          for (uint64_t j = 0; j <= qpos && j < ctx; ++j) {
            if (c.sliding_window && qpos - j >= *c.sliding_window) continue;
            const double* kv = &k_ctx[j * kv_dim + kh * hd];
            double dot = 0.0;
            for (uint64_t d = 0; d < hd; ++d) dot += qv[d] * kv[d];
            y[(h * n + t) * ctx + j] = node.scale * dot;
          }
        }
      }
      break;
    }
    case Op::Softmax: {
      y = *in[0];  // [heads, tokens, ctx]
      const uint64_t ctx = y.size() / (c.heads * n);
      for (uint64_t r = 0; r < c.heads * n; ++r) {
        double* row = &y[r * ctx];
        double mx = kNegInf;
        for (uint64_t j = 0; j < ctx; ++j) mx = std::max(mx, row[j]);
        double sum = 0.0;
        for (uint64_t j = 0; j < ctx; ++j) {
          row[j] = row[j] == kNegInf ? 0.0 : std::exp(row[j] - mx);
          sum += row[j];
        }
        for (uint64_t j = 0; j < ctx; ++j) row[j] /= sum;
      }
      break;
    }
    case Op::AttnWeightedSum: {
      const Vec& p = *in[0];                       // [heads, tokens, ctx]
      const uint64_t ctx = v_ctx.size() / kv_dim;  // v_ctx: [ctx, kv_dim]
      if (p.size() != c.heads * n * ctx)
        fail(node, "probabilities hold " + std::to_string(p.size()) + " values, expected " +
                       std::to_string(c.heads * n * ctx));
      y.assign(n * width, 0.0);  // [tokens, q_dim]
      for (uint64_t h = 0; h < c.heads; ++h) {
        const uint64_t kh = h / ratio;
        for (uint64_t t = 0; t < n; ++t) {
          const double* pr = &p[(h * n + t) * ctx];
          for (uint64_t d = 0; d < hd; ++d) {
            double acc = 0.0;
            for (uint64_t j = 0; j < ctx; ++j) acc += pr[j] * v_ctx[j * kv_dim + kh * hd + d];
            y[t * width + h * hd + d] = acc;
          }
        }
      }
      break;
    }
    case Op::Add: {
      const Vec& a = *in[0];
      const Vec& b = *in[1];
      y.resize(a.size());  // [tokens, width]
      for (size_t i = 0; i < a.size(); ++i) y[i] = a[i] + node.scale * b[i];
      break;
    }
    case Op::Silu: {
      y = *in[0];  // [tokens, ffn]
      for (double& v : y) v = v / (1.0 + std::exp(-v));
      break;
    }
    case Op::Gelu: {
      y = *in[0];  // [tokens, ffn]
      const double k = std::sqrt(2.0 / std::numbers::pi);
      for (double& v : y) v = 0.5 * v * (1.0 + std::tanh(k * (v + 0.044715 * v * v * v)));
      break;
    }
    case Op::Mul: {
      const Vec& a = *in[0];
      const Vec& b = *in[1];
      y.resize(a.size());  // [tokens, ffn]
      for (size_t i = 0; i < a.size(); ++i) y[i] = a[i] * b[i];
      break;
    }
  }
  // Node boundaries hold what a capture holds, so replay on captured inputs is the forward.
  for (double& v : y) v = static_cast<float>(v);
  return y;
}

Logits RefLane::forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                        Trace& trace) {
  const Model& m = model();
  const ModelConfig& c = m.config;
  if (pos > cached_)
    throw Error("ref lane: forward at position " + std::to_string(pos) +
                " but the KV cache holds " + std::to_string(cached_) + " tokens");
  if (tokens.empty()) throw Error("ref lane: forward needs at least one token");
  for (LayerCache& lc : cache_) {
    lc.k.resize(uint64_t{pos} * c.kv_dim());
    lc.v.resize(uint64_t{pos} * c.kv_dim());
  }
  cached_ = pos;
  trace.lane = name();
  trace.pos = pos;
  trace.tokens.assign(tokens.begin(), tokens.end());

  const uint64_t n = tokens.size();
  const uint64_t ctx = uint64_t{pos} + n;
  const uint64_t kv_dim = c.kv_dim(), q_dim = c.q_dim();
  std::vector<Vec> out(m.plan.nodes.size());  // per node: [tokens, width] or [heads, tokens, ctx]
  for (const Node& node : m.plan.nodes) {
    observe(node);
    std::vector<const Vec*> in;
    for (size_t i : node.inputs) in.push_back(&out[i]);
    std::span<const double> k_ctx, v_ctx;
    if (node.op == Op::AttnScores) {
      Vec& k = cache_.at(*node.layer).k;  // [ctx, kv_dim]
      k.insert(k.end(), in[1]->begin(), in[1]->end());
      k_ctx = k;
    } else if (node.op == Op::AttnWeightedSum) {
      Vec& v = cache_.at(*node.layer).v;  // [ctx, kv_dim]
      const uint64_t qkv_w = m.plan.nodes[node.inputs[1]].width;
      for (uint64_t t = 0; t < n; ++t) {
        const double* src = &(*in[1])[t * qkv_w + q_dim + kv_dim];
        v.insert(v.end(), src, src + kv_dim);
      }
      v_ctx = v;
    }
    out[node.index] = run_node(node, in, tokens, n, pos, k_ctx, v_ctx);

    if (node.stage && capture.wants(*node.stage, node.layer)) {
      Tensor t;
      t.shape = output_shape(c, node, n, ctx);
      t.data.assign(out[node.index].begin(), out[node.index].end());
      trace.put({*node.stage, node.layer}, std::move(t));
    }
    // Free inputs no later node reads (the last node's output is the logits).
    for (size_t i : node.inputs)
      if (last_use_[i] == node.index) Vec().swap(out[i]);
  }
  cached_ = static_cast<uint32_t>(ctx);

  const Node* head = m.plan.find(Stage::LmHead, std::nullopt);
  if (!head) throw Error("ref lane: the plan has no lm_head node");
  Logits logits;
  logits.tokens = last_logits_only() ? 1 : n;
  logits.vocab = head->width;
  const Vec& all = out[head->index];  // [tokens, vocab]
  logits.values.assign(all.end() - static_cast<ptrdiff_t>(logits.tokens * logits.vocab), all.end());
  return logits;
}

Tensor RefLane::replay(const Node& node, std::span<const Tensor> inputs) {
  const Model& m = model();
  const ModelConfig& c = m.config;
  ReplayInputs checked = check_replay_inputs("ref", m, node, inputs);
  const uint64_t n = checked.tokens;
  std::vector<int32_t>& ids = checked.ids;
  std::vector<Vec> held;
  if (node.op != Op::Embed)
    for (const Tensor& t : inputs) held.emplace_back(t.data.begin(), t.data.end());
  std::vector<const Vec*> in;
  for (const Vec& h : held) in.push_back(&h);

  // Attention over exactly the given tokens: keys from input 1 (post-RoPE K), values from the
  // V slice of input 1 (the fused QKV).
  Vec kv_ctx;  // [tokens, kv_dim]
  std::span<const double> k_ctx, v_ctx;
  if (node.op == Op::AttnScores) {
    k_ctx = held[1];
  } else if (node.op == Op::AttnWeightedSum) {
    const uint64_t qkv_w = input_width(node, 1);
    for (uint64_t t = 0; t < n; ++t) {
      const double* src = &held[1][t * qkv_w + c.q_dim() + c.kv_dim()];
      kv_ctx.insert(kv_ctx.end(), src, src + c.kv_dim());
    }
    v_ctx = kv_ctx;
  }
  Vec y = run_node(node, in, ids, n, 0, k_ctx, v_ctx);
  Tensor t;
  t.shape = output_shape(c, node, n, n);
  t.data.assign(y.begin(), y.end());
  return t;
}

}  // namespace lockstep::engine
