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

// Device memory bandwidth as a device-to-device copy of `bytes` moves it: each of
// `repetitions` timed copies (after one untimed) counts the bytes read plus the bytes written,
// 2·bytes, as NVIDIA's bandwidthTest does; timed with CUDA events on one stream. `bytes` should
// be well above the L2 cache (the default 1 GiB is 20× an H100's). Throws lockstep::Error when
// the device cannot be used or the buffers do not fit.
struct CopyBandwidth {
  uint64_t bytes = 0;               // copied per repetition
  std::vector<double> bytes_per_s;  // (read + written) per second, one per repetition
  double best = 0.0;
  double median = 0.0;
};
CopyBandwidth measure_copy_bandwidth(int device, uint64_t bytes = uint64_t{1} << 30,
                                     int repetitions = 10);

}  // namespace lockstep::cuda
