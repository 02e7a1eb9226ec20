#pragma once
// LOCKSTEP_CUDA_CHECK(stmt): a failed CUDA call becomes a lockstep::Error naming the
// statement, file and line. The caller's lane fails; the process keeps running.
// Include only from .cu/.cpp files of this folder.

#include <cuda_runtime.h>

#include <string>

#include "formats/error.h"

namespace lockstep::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* stmt, const char* file,
                                          int line) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
              cudaGetErrorString(err) + ") in `" + stmt + "` at " + file + ":" +
              std::to_string(line));
}

}  // namespace lockstep::cuda

#define LOCKSTEP_CUDA_CHECK(stmt)                                                  \
  do {                                                                             \
    cudaError_t lockstep_cuda_err_ = (stmt);                                       \
    if (lockstep_cuda_err_ != cudaSuccess)                                         \
      ::lockstep::cuda::throw_cuda_error(lockstep_cuda_err_, #stmt, __FILE__, __LINE__); \
  } while (0)
