#include <cmath>
#include <cstring>
#include <vector>

#include "cuda/device_buffer.cuh"
#include "cuda/kernels.cuh"
#include "cuda/ops.h"
#include "formats/error.h"

namespace lockstep::cuda::ops {
namespace {

constexpr size_t kGuard = 64;  // NaN floats after every output

using formats::GgmlType;

void check_weights(GgmlType type, std::span<const std::byte> w, uint64_t rows, uint64_t cols) {
  if (!kernels::has_weight_kernels(type))
    throw Error("cuda: no kernel for weights of type " + std::string(formats::ggml_type_name(type)));
  if (w.size() != rows * kernels::row_bytes(type, cols))
    throw Error("cuda: " + std::to_string(w.size()) + " bytes are not " + std::to_string(rows) +
                " rows of " + std::to_string(cols) + " " +
                std::string(formats::ggml_type_name(type)) + " elements");
}

// A poisoned output of n floats plus the guard.
DeviceBuffer poisoned_output(size_t n) {
  DeviceBuffer y((n + kGuard) * sizeof(float));
  LOCKSTEP_CUDA_CHECK(cudaMemset(y.get(), 0xFF, y.bytes()));  // 0xFFFFFFFF is a NaN
  return y;
}

std::vector<float> download(const DeviceBuffer& y, size_t n) {
  LOCKSTEP_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> all(n + kGuard);
  LOCKSTEP_CUDA_CHECK(cudaMemcpy(all.data(), y.get(), y.bytes(), cudaMemcpyDeviceToHost));
  for (size_t i = n; i < all.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &all[i], sizeof bits);
    if (bits != 0xFFFFFFFFu)
      throw Error("cuda: a kernel wrote past its output (element " + std::to_string(i) + " of " +
                  std::to_string(n) + ")");
  }
  all.resize(n);
  return all;
}

}  // namespace

bool has_weight_kernels(GgmlType type) {
  return kernels::has_weight_kernels(type);
}

std::vector<float> dequantize(int device, GgmlType type, std::span<const std::byte> w,
                              uint64_t rows, uint64_t cols) {
  check_weights(type, w, rows, cols);
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer dw = DeviceBuffer::upload(w);
  DeviceBuffer y = poisoned_output(rows * cols);
  kernels::dequantize(type, dw.get(), rows, cols, y.as<float>(), nullptr);
  return download(y, rows * cols);
}

std::vector<float> matmul(int device, GgmlType type, std::span<const std::byte> w, uint64_t rows,
                          uint64_t cols, std::span<const float> x, uint64_t tokens) {
  check_weights(type, w, rows, cols);
  if (x.size() != tokens * cols) throw Error("cuda: x must be [tokens, cols]");
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer dw = DeviceBuffer::upload(w);
  DeviceBuffer dx = DeviceBuffer::upload(x);
  DeviceBuffer y = poisoned_output(tokens * rows);
  kernels::matmul(type, dw.get(), rows, cols, dx.as<float>(), tokens, y.as<float>(), rows, 0,
                  nullptr);
  return download(y, tokens * rows);
}

std::vector<float> matvec(int device, GgmlType type, std::span<const MatvecPart> parts,
                          uint64_t cols, std::span<const float> x, bool epilogue, float scale) {
  if (x.size() != cols) throw Error("cuda: x must be [1, cols]");
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer dx = DeviceBuffer::upload(x);
  std::vector<DeviceBuffer> held;  // the parts' weights and biases on the device
  std::vector<kernels::MatvecPart> dev;
  uint64_t rows = 0;
  for (const MatvecPart& p : parts) {
    check_weights(type, p.w, p.rows, cols);
    if (!p.bias.empty() && p.bias.size() != p.rows)
      throw Error("cuda: a part's bias must have one value a row");
    held.push_back(DeviceBuffer::upload(p.w));
    kernels::MatvecPart d{held.back().get(), p.rows, nullptr};
    if (!p.bias.empty()) {
      held.push_back(DeviceBuffer::upload(p.bias));
      d.bias = held.back().as<float>();
    }
    dev.push_back(d);
    rows += p.rows;
  }
  DeviceBuffer y = poisoned_output(rows);
  if (!kernels::matvec(type, dev, cols, dx.as<float>(), y.as<float>(), epilogue, scale, nullptr))
    throw Error("cuda: no decode kernel takes rows of " + std::to_string(cols) + " elements");
  return download(y, rows);
}

std::vector<float> embed(int device, GgmlType type, std::span<const std::byte> w, uint64_t rows,
                         uint64_t cols, std::span<const int32_t> ids, float scale) {
  check_weights(type, w, rows, cols);
  for (int32_t id : ids)
    if (id < 0 || static_cast<uint64_t>(id) >= rows)
      throw Error("cuda: token id " + std::to_string(id) + " is outside [0, " +
                  std::to_string(rows) + ")");
  LOCKSTEP_CUDA_CHECK(cudaSetDevice(device));
  DeviceBuffer dw = DeviceBuffer::upload(w);
  DeviceBuffer di = DeviceBuffer::upload(ids);
  DeviceBuffer y = poisoned_output(ids.size() * cols);
  kernels::embed(type, dw.get(), cols, di.as<int32_t>(), ids.size(), scale, y.as<float>(),
                 nullptr);
  return download(y, ids.size() * cols);
}

}  // namespace lockstep::cuda::ops
