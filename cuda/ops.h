#pragma once
// Single kernels on host data, for the kernel tests and benchmarks: each call uploads its
// inputs, runs one kernel of the cuda lane on `device`, and returns the output. The output
// buffer is filled with NaN beforehand and followed by a NaN guard, so an element the kernel
// fails to write comes back NaN and a write past the end throws. No CUDA types here.
// Every function throws lockstep::Error on a CUDA failure or a type without a kernel.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "formats/ggml_type.h"

namespace lockstep::cuda::ops {

// Whether the cuda lane has matmul, embedding and dequantize kernels for weights of `type`.
bool has_weight_kernels(formats::GgmlType type);

// [rows, cols]: the rows of `w` (stored as `type`) as f32, decoded on the device.
std::vector<float> dequantize(int device, formats::GgmlType type, std::span<const std::byte> w,
                              uint64_t rows, uint64_t cols);

// [tokens, rows]: x [tokens, cols] times the transpose of w [rows, cols] (stored as `type`).
std::vector<float> matmul(int device, formats::GgmlType type, std::span<const std::byte> w,
                          uint64_t rows, uint64_t cols, std::span<const float> x, uint64_t tokens);

// One token through several matrices of one type at once (kernels::matvec): [Σ rows], part p's
// rows after part p − 1's, each finished as (s + bias) · scale when `epilogue` (without the bias
// where a part has none), else s.
struct MatvecPart {
  std::span<const std::byte> w;  // [rows, cols]
  uint64_t rows = 0;
  std::span<const float> bias;  // [rows] or empty
};
std::vector<float> matvec(int device, formats::GgmlType type, std::span<const MatvecPart> parts,
                          uint64_t cols, std::span<const float> x, bool epilogue, float scale);

// [ids.size(), cols]: rows ids of w [rows, cols] times scale (the embedding lookup).
std::vector<float> embed(int device, formats::GgmlType type, std::span<const std::byte> w,
                         uint64_t rows, uint64_t cols, std::span<const int32_t> ids, float scale);

}  // namespace lockstep::cuda::ops
