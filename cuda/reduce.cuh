#pragma once
// Block-wide reductions in a fixed order (warp butterflies, then warp 0 over the warp results),
// so a row's result never depends on timing. Every thread of the block must call them.

#include <cuda_runtime.h>

namespace lockstep::cuda::reduce {

constexpr int kMaxWarps = 32;

template <typename Op>
__device__ __forceinline__ float warp_all(float v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

// `scratch`: kMaxWarps floats of shared memory, reused across calls (barriers guard it).
template <typename Op>
__device__ __forceinline__ float block_all(float v, Op op, float identity, float* scratch) {
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int warps = static_cast<int>((blockDim.x + 31) / 32);
  v = warp_all(v, op);
  __syncthreads();  // an earlier call's readers are done with scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : identity;
  return warp_all(v, op);
}

struct Sum {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

}  // namespace lockstep::cuda::reduce
