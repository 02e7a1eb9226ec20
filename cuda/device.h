#pragma once
// What CUDA devices this process can use. No CUDA types leak from this header.

#include <cstdint>
#include <string>
#include <vector>

namespace lockstep::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  uint64_t total_memory = 0;
  uint64_t free_memory = 0;
  int multiprocessors = 0;
};

struct DeviceReport {
  int driver_version = 0;   // 0 when no driver is installed
  int runtime_version = 0;
  std::string problem;      // why no device is usable, empty when one is
  std::vector<DeviceInfo> devices;
};

// Never throws: a machine without a driver or GPU yields an empty list and a reason.
DeviceReport probe_devices();

}  // namespace lockstep::cuda
