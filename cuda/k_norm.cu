// RMSNorm (also per head, for Q/K norm) and LayerNorm: one block per row, f32 sums reduced in a
// fixed order.

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/reduce.cuh"

namespace lockstep::cuda::kernels {
namespace {

constexpr int kThreads = 256;

// Up to kVec float4s a thread, all loaded before the first is used and kept in registers for
// the scaling pass (one read of x); rows too long or not 16-byte aligned take the loop below.
constexpr int kVec = 4;

__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, float* y, const float* w, uint64_t width, uint64_t per_group,
                    uint64_t group_stride, uint64_t offset, float eps) {
  pdl::allow_next();
  __shared__ float scratch[reduce::kMaxWarps];
  const uint64_t s = blockIdx.x;
  const uint64_t base = (s / per_group) * group_stride + offset + (s % per_group) * width;
  const float* xr = x + base;  // [width]
  float* yr = y + base;        // [width]
  const bool vec = width % 4 == 0 && width <= uint64_t{4} * kVec * kThreads &&
                   reinterpret_cast<uintptr_t>(xr) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(yr) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const uint64_t quads = width / 4;
  float4 g[kVec];  // the weights, read before the wait (pdl): they are immutable
  if (vec) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const uint64_t q = threadIdx.x + uint64_t{kThreads} * k;
      g[k] = q < quads ? reinterpret_cast<const float4*>(w)[q] : make_float4(0, 0, 0, 0);
    }
  }
  pdl::wait_inputs();
  float ss = 0.0f;
  if (vec) {
    float4 v[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const uint64_t q = threadIdx.x + uint64_t{kThreads} * k;
      v[k] = q < quads ? reinterpret_cast<const float4*>(xr)[q] : make_float4(0, 0, 0, 0);
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k)
      ss = fmaf(v[k].w, v[k].w,
                fmaf(v[k].z, v[k].z, fmaf(v[k].y, v[k].y, fmaf(v[k].x, v[k].x, ss))));
    ss = reduce::block_all(ss, reduce::Sum{}, 0.0f, scratch);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(width) + eps);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const uint64_t q = threadIdx.x + uint64_t{kThreads} * k;
      if (q >= quads) continue;
      reinterpret_cast<float4*>(yr)[q] = make_float4(v[k].x * inv * g[k].x, v[k].y * inv * g[k].y,
                                                     v[k].z * inv * g[k].z, v[k].w * inv * g[k].w);
    }
    return;
  }
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = reduce::block_all(ss, reduce::Sum{}, 0.0f, scratch);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(width) + eps);
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

__global__ void layer_norm_kernel(const float* x, float* y, const float* w, const float* b,
                                  uint64_t width, float eps) {
  pdl::begin();
  __shared__ float scratch[reduce::kMaxWarps];
  const float* xr = x + blockIdx.x * width;  // [width]
  float* yr = y + blockIdx.x * width;        // [width]
  float sum = 0.0f;
  for (uint64_t i = threadIdx.x; i < width; i += blockDim.x) sum += xr[i];
  const float mean =
      reduce::block_all(sum, reduce::Sum{}, 0.0f, scratch) / static_cast<float>(width);
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
  pdl::launch(rms_norm_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, y, w, width,
              per_group, group_stride, offset, eps);
}

void layer_norm(const float* x, float* y, const float* w, const float* b, uint64_t rows,
                uint64_t width, float eps, cudaStream_t stream) {
  if (rows == 0) return;
  pdl::launch(layer_norm_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, y, w, b,
              width, eps);
}

}  // namespace lockstep::cuda::kernels
