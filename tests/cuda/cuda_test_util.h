#pragma once
// What the CUDA tests share: skipping without a device.

#include <gtest/gtest.h>

#include "cuda/device.h"

namespace lockstep::test {

inline bool have_cuda_device() {
  static const bool have = !cuda::probe_devices().devices.empty();
  return have;
}

}  // namespace lockstep::test

// Skips the current test on a machine without a usable CUDA device (CI).
#define LOCKSTEP_REQUIRE_CUDA_DEVICE()                                               \
  do {                                                                               \
    if (!::lockstep::test::have_cuda_device())                                      \
      GTEST_SKIP() << "no CUDA device: " << ::lockstep::cuda::probe_devices().problem; \
  } while (0)
