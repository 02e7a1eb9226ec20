// RMSNorm (also per head, for Q/K norm) and LayerNorm: one block per row, f32 sums reduced in a
// fixed order.

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/reduce.cuh"

namespace lockstep::cuda::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void rms_norm_kernel(const float* x, float* y, const float* w, uint64_t width,
                                uint64_t per_group, uint64_t group_stride, uint64_t offset,
                                float eps) {
  __shared__ float scratch[reduce::kMaxWarps];
  const uint64_t s = blockIdx.x;
  const uint64_t base = (s / per_group) * group_stride + offset + (s % per_group) * width;
  const float* xr = x + base;  // [width]
  float* yr = y + base;        // [width]
  float ss = 0.0f;
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = reduce::block_all(ss, reduce::Sum{}, 0.0f, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(width) + eps);
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

__global__ void layer_norm_kernel(const float* x, float* y, const float* w, const float* b,
                                  uint64_t width, float eps) {
  __shared__ float scratch[reduce::kMaxWarps];
  const float* xr = x + blockIdx.x * width;  // [width]
  float* yr = y + blockIdx.x * width;        // [width]
  float sum = 0.0f;
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) sum += xr[i];
  const float mean = reduce::block_all(sum, reduce::Sum{}, 0.0f, scratch) / static_cast<float>(width);
  float var = 0.0f;
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float d = xr[i] - mean;
    var = fmaf(d, d, var);
  }
  var = reduce::block_all(var, reduce::Sum{}, 0.0f, scratch) / static_cast<float>(width);
  const float inv = 1.0f / sqrtf(var + eps);
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x)
    yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
}

}  // namespace

void rms_norm(const float* x, float* y, const float* w, uint64_t rows, uint64_t width,
              uint64_t per_group, uint64_t group_stride, uint64_t offset, float eps,
              cudaStream_t stream) {
  if (rows == 0) return;
  rms_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, y, w, width, per_group,
                                                                        group_stride, offset, eps);
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
}

void layer_norm(const float* x, float* y, const float* w, const float* b, uint64_t rows,
                uint64_t width, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  layer_norm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, y, w, b, width, eps);
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lockstep::cuda::kernels
