// Element-wise ops: bias and scale of a projection's columns, the residual add (with Granite's
// multiplier), the MLP activations and the gate product.

#include <cmath>
#include <span>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "formats/error.h"

namespace lockstep::cuda::kernels {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(uint64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

__global__ void bias_scale_kernel(float* y, uint64_t tokens, uint64_t width, uint64_t col0,
                                  uint64_t seg, const float* b, float scale) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= tokens * seg) return;
  const uint64_t t = i / seg, c = i % seg;
  float& v = y[t * width + col0 + c];
  const float biased = b ? v + b[c] : v;
  v = biased * scale;
}

// kernels::add_biases's segments by value; selected by comparisons (kernel parameters stay in
// constant memory).
struct Segments {
  const float* b[kMaxBiasSegments];
  uint64_t end[kMaxBiasSegments];  // each segment's last column + 1
};
static_assert(kMaxBiasSegments == 3, "Segments selects among three");

__global__ void add_biases_kernel(const float* x, float* y, uint64_t tokens, uint64_t width,
                                  Segments s, float scale) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= tokens * width) return;
  const uint64_t c = i % width;
  const int k = c < s.end[0] ? 0 : (c < s.end[1] ? 1 : 2);
  const float* b = k == 0 ? s.b[0] : (k == 1 ? s.b[1] : s.b[2]);
  const uint64_t start = k == 0 ? 0 : (k == 1 ? s.end[0] : s.end[1]);
  const float v = x[i];
  const float biased = b ? v + b[c - start] : v;
  y[i] = biased * scale;
}

__global__ void add_scaled_kernel(const float* a, const float* b, float scale, float* y,
                                  uint64_t n) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n) y[i] = fmaf(scale, b[i], a[i]);
}

__global__ void silu_kernel(const float* x, float* y, uint64_t n) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] / (1.0f + expf(-x[i]));
}

__global__ void gelu_kernel(const float* x, float* y, uint64_t n) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= n) return;
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  const float v = x[i];
  y[i] = 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
}

__global__ void mul_kernel(const float* a, const float* b, float* y, uint64_t n) {
  pdl::begin();
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a[i] * b[i];
}

}  // namespace

void bias_scale(float* y, uint64_t tokens, uint64_t width, uint64_t col0, uint64_t seg,
                const float* b, float scale, cudaStream_t stream) {
  if (tokens * seg == 0) return;
  pdl::launch(bias_scale_kernel, blocks_for(tokens * seg), kThreads, 0, stream, y, tokens, width,
              col0, seg, b, scale);
}

void add_biases(const float* x, float* y, uint64_t tokens, uint64_t width,
                std::span<const BiasSegment> segments, float scale, cudaStream_t stream) {
  if (segments.empty() || segments.size() > kMaxBiasSegments)
    throw Error("cuda: add_biases takes 1 to " + std::to_string(kMaxBiasSegments) +
                " segments, not " + std::to_string(segments.size()));
  Segments s{};
  uint64_t end = 0;
  for (size_t i = 0; i < kMaxBiasSegments; ++i) {
    if (i < segments.size()) {
      end += segments[i].width;
      s.b[i] = segments[i].b;
    }
    s.end[i] = end;
  }
  if (end != width)
    throw Error("cuda: bias segments cover " + std::to_string(end) + " columns, not " +
                std::to_string(width));
  if (tokens * width == 0) return;
  pdl::launch(add_biases_kernel, blocks_for(tokens * width), kThreads, 0, stream, x, y, tokens,
              width, s, scale);
}

void add_scaled(const float* a, const float* b, float scale, float* y, uint64_t n,
                cudaStream_t stream) {
  if (n == 0) return;
  pdl::launch(add_scaled_kernel, blocks_for(n), kThreads, 0, stream, a, b, scale, y, n);
}

void silu(const float* x, float* y, uint64_t n, cudaStream_t stream) {
  if (n == 0) return;
  pdl::launch(silu_kernel, blocks_for(n), kThreads, 0, stream, x, y, n);
}

void gelu(const float* x, float* y, uint64_t n, cudaStream_t stream) {
  if (n == 0) return;
  pdl::launch(gelu_kernel, blocks_for(n), kThreads, 0, stream, x, y, n);
}

void mul(const float* a, const float* b, float* y, uint64_t n, cudaStream_t stream) {
  if (n == 0) return;
  pdl::launch(mul_kernel, blocks_for(n), kThreads, 0, stream, a, b, y, n);
}

}  // namespace lockstep::cuda::kernels
