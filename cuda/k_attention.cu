// RoPE and attention over a KV cache, each stage materialised (scores, probabilities, weighted
// sum) so that any of them can be captured. GQA: query head h reads KV head h / ratio.
// RoPE and the softmax take a thread per element and a block per row; scores take a warp per
// score and the weighted sum splits the keys over 32 warps, so a decode step (one query) still
// fills the GPU. Each kernel takes its position and context length from the host, or
// (cuda-graph) from a device scalar written before the graph's launch (grids sized for the
// cache capacity); the arithmetic is the same either way.

#include <cuda_fp16.h>

#include <cmath>

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/reduce.cuh"

namespace lockstep::cuda::kernels {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(uint64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

// Angles in double, as the oracle does: positions of thousands times small frequencies lose
// digits in f32.
__global__ void rope_kernel(const float* x, uint64_t x_stride, uint64_t offset, float* y,
                            uint64_t tokens, uint64_t width, uint64_t head_dim, uint64_t rope_dims,
                            bool neox, const double* inv_freq, uint64_t pos,
                            const uint32_t* dev_pos) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= tokens * width) return;
  if (dev_pos) pos = *dev_pos;
  const uint64_t t = i / width, j = i % width;
  const float* src = x + t * x_stride + offset;  // [width] of token t
  const uint64_t h = j / head_dim, d = j % head_dim, half = rope_dims / 2;
  if (d >= rope_dims) {
    y[i] = src[j];
    return;
  }
  uint64_t pair, a, b;
  if (neox) {
    pair = d < half ? d : d - half;
    a = pair;
    b = pair + half;
  } else {
    pair = d / 2;
    a = 2 * pair;
    b = 2 * pair + 1;
  }
  const double theta = static_cast<double>(pos + t) * inv_freq[pair];
  double sn, cs;
  sincos(theta, &sn, &cs);
  const double x0 = src[h * head_dim + a], x1 = src[h * head_dim + b];
  y[i] = static_cast<float>(d == a ? x0 * cs - x1 * sn : x0 * sn + x1 * cs);
}

// Graph mode: the real pos and ctx from the device (see AttnShape::step).
__device__ inline void read_step(AttnShape& s) {
  if (!s.step) return;
  s.pos = s.step[0];
  s.ctx = s.step[1];
}

__global__ void kv_append_kernel(const float* src, uint64_t src_stride, uint64_t tokens,
                                 uint64_t width, float* cache, uint64_t pos,
                                 const uint32_t* dev_pos) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= tokens * width) return;
  if (dev_pos) pos = *dev_pos;
  const uint64_t t = i / width, j = i % width;
  cache[(pos + t) * width + j] = src[t * src_stride + j];
}

// One warp per score: lane l sums q·k over d = l, l + 32, ... in order, then the 32 partials
// are reduced with xor shuffles; reads of q and of the key row are coalesced. The arithmetic
// does not depend on the token count or the position, so prefill equals decode bit for bit.
__global__ void scores_kernel(const float* q, const float* k, uint64_t k_stride, AttnShape s,
                              float scale, float* y) {
  pdl::begin();
  read_step(s);
  const uint64_t i = (uint64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (i >= s.heads * s.tokens * s.ctx) return;  // whole warps
  const uint64_t j = i % s.ctx, t = (i / s.ctx) % s.tokens, h = i / (s.ctx * s.tokens);
  const uint64_t qpos = s.pos + t;
  if (j > qpos || (s.window != 0 && qpos - j >= s.window)) {
    if (lane == 0) y[i] = -INFINITY;
    return;
  }
  const uint64_t kh = s.interleaved_heads ? h % s.kv_heads : h / (s.heads / s.kv_heads);
  const uint64_t slot = s.lagged_slots && j > 0 ? j - 1 : j;
  const float* qv = q + t * s.heads * s.head_dim + h * s.head_dim;  // [head_dim]
  const float* kv = k + slot * k_stride + kh * s.head_dim;          // [head_dim]
  float dot = 0.0f;
  for (uint64_t d = lane; d < s.head_dim; d += 32) dot = fmaf(qv[d], kv[d], dot);
  dot = reduce::warp_all(dot, reduce::Sum{});
  if (lane == 0) y[i] = scale * dot;
}

__global__ void softmax_kernel(const float* x, float* y, uint64_t width,
                               const uint32_t* dev_width) {
  pdl::begin();
  __shared__ float scratch[reduce::kMaxWarps];
  if (dev_width) width = *dev_width;
  const float* xr = x + blockIdx.x * width;  // [width]
  float* yr = y + blockIdx.x * width;        // [width]
  float mx = -INFINITY;
  for (uint64_t j = threadIdx.x; j < width; j += blockDim.x) mx = fmaxf(mx, xr[j]);
  mx = reduce::block_all(mx, reduce::Max{}, -INFINITY, scratch);
  float sum = 0.0f;
  for (uint64_t j = threadIdx.x; j < width; j += blockDim.x) {
    const float e = xr[j] == -INFINITY ? 0.0f : expf(xr[j] - mx);
    yr[j] = e;
    sum += e;
  }
  sum = reduce::block_all(sum, reduce::Sum{}, 0.0f, scratch);
  const float inv = 1.0f / sum;
  for (uint64_t j = threadIdx.x; j < width; j += blockDim.x) yr[j] = yr[j] * inv;
}

// One thread per row: the running sum is sequential by definition.
__global__ void softmax_fp16_no_max_kernel(const float* x, float* y, uint64_t rows, uint64_t width,
                                           const uint32_t* dev_width) {
  pdl::begin();
  const uint64_t r = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  if (dev_width) width = *dev_width;
  const float* xr = x + r * width;  // [width]
  float* yr = y + r * width;        // [width]
  auto fp16 = [](float v) { return __half2float(__float2half_rn(v)); };
  float sum = 0.0f;
  for (uint64_t j = 0; j < width; ++j) {
    yr[j] = xr[j] == -INFINITY ? 0.0f : fp16(expf(xr[j]));
    sum = fp16(sum + yr[j]);
  }
  for (uint64_t j = 0; j < width; ++j) yr[j] = fp16(yr[j] / sum);
}

// One block per (token, head, 32 output dims): warp g sums p·v over the keys j = g, g + 32, ...
// in order (lane l on dim l, so value rows are read coalesced), then thread l of warp 0 adds
// the 32 partials in order. Every key of the context is summed, masked ones too (their p is 0,
// which adds nothing to a finite sum), so the arithmetic does not depend on the token count:
// prefill equals decode bit for bit, and replay computes exactly Σ p·v on any inputs.
constexpr int kSumGroups = 32;
__global__ void __launch_bounds__(32 * kSumGroups)
    weighted_sum_kernel(const float* p, const float* v, uint64_t v_stride, AttnShape s, float* y) {
  pdl::begin();
  read_step(s);
  __shared__ float partial[kSumGroups][33];
  const uint64_t groups_per_head = (s.head_dim + 31) / 32;
  const uint64_t b = blockIdx.x;
  const uint64_t t = b / (s.heads * groups_per_head);
  const uint64_t h = (b / groups_per_head) % s.heads;
  const uint64_t d = (b % groups_per_head) * 32 + threadIdx.x % 32;
  const uint64_t g = threadIdx.x / 32;
  const uint64_t kh = s.interleaved_heads ? h % s.kv_heads : h / (s.heads / s.kv_heads);
  const float* pr = p + (h * s.tokens + t) * s.ctx;  // [ctx]
  float acc = 0.0f;
  if (d < s.head_dim) {
    const float* vc = v + kh * s.head_dim + d;  // column d of KV head kh, rows of v_stride
    for (uint64_t j = g; j < s.ctx; j += kSumGroups) {
      const uint64_t slot = s.lagged_slots && j > 0 ? j - 1 : j;
      acc = fmaf(pr[j], vc[slot * v_stride], acc);
    }
  }
  partial[g][threadIdx.x % 32] = acc;
  __syncthreads();
  if (g == 0 && d < s.head_dim) {
    float sum = partial[0][threadIdx.x];
    for (int i = 1; i < kSumGroups; ++i) sum += partial[i][threadIdx.x];
    y[t * s.heads * s.head_dim + h * s.head_dim + d] = sum;
  }
}

}  // namespace

void rope(const float* x, uint64_t x_stride, uint64_t offset, float* y, uint64_t tokens,
          uint64_t width, uint64_t head_dim, uint64_t rope_dims, bool neox, const double* inv_freq,
          uint64_t pos, cudaStream_t stream, const uint32_t* dev_pos) {
  if (tokens * width == 0) return;
  pdl::launch(rope_kernel, blocks_for(tokens * width), kThreads, 0, stream, x, x_stride, offset, y,
              tokens, width, head_dim, rope_dims, neox, inv_freq, pos, dev_pos);
}

void kv_append(const float* src, uint64_t src_stride, uint64_t tokens, uint64_t width, float* cache,
               uint64_t pos, cudaStream_t stream, const uint32_t* dev_pos) {
  if (tokens * width == 0) return;
  pdl::launch(kv_append_kernel, blocks_for(tokens * width), kThreads, 0, stream, src, src_stride,
              tokens, width, cache, pos, dev_pos);
}

void attn_scores(const float* q, const float* k, uint64_t k_stride, const AttnShape& s, float scale,
                 float* y, cudaStream_t stream) {
  const uint64_t n = s.heads * s.tokens * s.ctx;
  if (n == 0) return;
  pdl::launch(scores_kernel, blocks_for(32 * n), kThreads, 0, stream, q, k, k_stride, s, scale, y);
}

void softmax(const float* x, float* y, uint64_t rows, uint64_t width, cudaStream_t stream,
             const uint32_t* dev_width) {
  if (rows == 0) return;
  pdl::launch(softmax_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, y, width,
              dev_width);
}

void softmax_fp16_no_max(const float* x, float* y, uint64_t rows, uint64_t width,
                         cudaStream_t stream, const uint32_t* dev_width) {
  if (rows == 0) return;
  pdl::launch(softmax_fp16_no_max_kernel, blocks_for(rows), kThreads, 0, stream, x, y, rows, width,
              dev_width);
}

void attn_weighted_sum(const float* p, const float* v, uint64_t v_stride, const AttnShape& s,
                       float* y, cudaStream_t stream) {
  const uint64_t blocks = s.tokens * s.heads * ((s.head_dim + 31) / 32);
  if (blocks == 0 || s.ctx == 0) return;
  pdl::launch(weighted_sum_kernel, static_cast<unsigned>(blocks), 32 * kSumGroups, 0, stream, p, v,
              v_stride, s, y);
}

}  // namespace lockstep::cuda::kernels
