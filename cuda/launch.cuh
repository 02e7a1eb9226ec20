#pragma once
// Kernel launches with programmatic dependent launch (Hopper and later): a kernel may be
// scheduled while the kernel before it on the stream still runs, so a decode step's ~600 small
// launches overlap their launch latency and prologue (a matvec prefetches its first weight
// rows into L2) with their predecessor's tail. It is safe because every kernel of this folder
// starts with pdl::begin(): it lets the next kernel be scheduled, then waits until the grids it
// depends on have completed and their writes are visible, before it touches any activation,
// cache or output. Only immutable weights may be touched (prefetched) before that wait.
// Dependencies other than the previous kernel (events, copies) stay full dependencies.
//
// LOCKSTEP_CUDA_PDL=0 in the environment launches everything the ordinary way (same results:
// the kernels' arithmetic does not change), for comparing the two in one build.

#include <cuda_runtime.h>

#include <utility>

#include "cuda/cuda_check.h"

namespace lockstep::cuda::pdl {

// Lets the next kernel on the stream be scheduled, then waits for the grids this one depends
// on. A no-op before sm_90 and when the kernel was launched without the attribute.
__device__ __forceinline__ void allow_next() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void begin() {
  allow_next();
  wait_inputs();
}

// Whether launches carry the attribute: a device of compute capability 9.0 or later, and
// LOCKSTEP_CUDA_PDL is not "0". Read once per process.
bool enabled();

// kernel<<<grid, block, shared, stream>>>(args...), with the attribute when enabled(); checked.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
            Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = enabled() ? 1 : 0;
  LOCKSTEP_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace lockstep::cuda::pdl
