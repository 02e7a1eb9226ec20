#include "cuda/device.h"

#include <gtest/gtest.h>

namespace lockstep::cuda {
namespace {

TEST(CudaDevice, ProbeNeverThrowsAndExplainsAbsence) {
  DeviceReport r = probe_devices();
  EXPECT_GT(r.runtime_version, 0);
  if (r.devices.empty()) {
    EXPECT_FALSE(r.problem.empty());
    GTEST_SKIP() << "no CUDA device: " << r.problem;
  }
  EXPECT_TRUE(r.problem.empty());
  for (const DeviceInfo& d : r.devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.cc_major, 7);
    EXPECT_GT(d.total_memory, d.free_memory);
    EXPECT_GT(d.free_memory, 0u);
    EXPECT_GT(d.multiprocessors, 0);
  }
}

}  // namespace
}  // namespace lockstep::cuda
