#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include "cuda/cuda_check.h"
#include "cuda/device.h"
#include "cuda/device_buffer.cuh"
#include "cuda/launch.cuh"
#include "formats/error.h"

namespace lockstep::cuda {

bool pdl::enabled() {
  static const bool on = [] {
    if (const char* e = std::getenv("LOCKSTEP_CUDA_PDL"); e && std::string_view(e) == "0")
      return false;
    int device = 0, major = 0;
    return cudaGetDevice(&device) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) ==
               cudaSuccess &&
           major >= 9;
  }();
  return on;
}

DeviceReport probe_devices() {
  DeviceReport r;
  cudaRuntimeGetVersion(&r.runtime_version);
  if (cudaDriverGetVersion(&r.driver_version) != cudaSuccess || r.driver_version == 0) {
    r.problem = "no CUDA driver is installed";
    return r;
  }
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    r.problem = std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return r;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.total_memory = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      d.free_memory = free_b;
    r.devices.push_back(std::move(d));
  }
  if (r.devices.empty()) r.problem = "no CUDA device found";
  return r;
}

namespace {

// An event pair and a stream that are released however the measurement ends.
struct Timing {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  Timing() {
    LOCKSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    LOCKSTEP_CUDA_CHECK(cudaEventCreate(&start));
    LOCKSTEP_CUDA_CHECK(cudaEventCreate(&stop));
  }
  ~Timing() {
    if (stream) cudaStreamSynchronize(stream);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    if (stream) cudaStreamDestroy(stream);
  }
};

}  // namespace

CopyBandwidth measure_copy_bandwidth(int device, uint64_t bytes, int repetitions) {
  if (repetitions < 1 || bytes == 0)
    throw Error("copy bandwidth: needs at least one repetition of at least one byte");
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer src(bytes), dst(bytes);
  Timing t;
  LOCKSTEP_CUDA_CHECK(cudaMemsetAsync(src.get(), 0x5A, bytes, t.stream));
  CopyBandwidth r;
  r.bytes = bytes;
  for (int i = 0; i <= repetitions; ++i) {
    LOCKSTEP_CUDA_CHECK(cudaEventRecord(t.start, t.stream));
    LOCKSTEP_CUDA_CHECK(
        cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, t.stream));
    LOCKSTEP_CUDA_CHECK(cudaEventRecord(t.stop, t.stream));
    LOCKSTEP_CUDA_CHECK(cudaEventSynchronize(t.stop));
    float ms = 0.0f;
    LOCKSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms, t.start, t.stop));
    if (i > 0 && ms > 0.0f) r.bytes_per_s.push_back(2.0 * static_cast<double>(bytes) / (ms * 1e-3));
  }
  if (r.bytes_per_s.empty()) throw Error("copy bandwidth: the copies took no measurable time");
  std::vector<double> sorted = r.bytes_per_s;
  std::sort(sorted.begin(), sorted.end());
  r.best = sorted.back();
  const size_t n = sorted.size();
  r.median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  return r;
}

}  // namespace lockstep::cuda
