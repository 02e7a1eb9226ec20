// Element-wise ops: bias and scale of a projection's columns, the residual add (with Granite's
// multiplier), the MLP activations and the gate product.

#include <cmath>

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"

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
