// Dequantization on the device: whole rows (tests, and any op that wants plain f32 weights) and
// the embedding lookup, both through quant::load_chunk, so they decode exactly as the matmuls.

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/quant.cuh"
#include "formats/error.h"

namespace lockstep::cuda::kernels {
namespace {

using formats::GgmlType;

constexpr int kThreads = 128;

// One thread per chunk of 32 elements: y[r, 32c + k] = scale · w[row(r), 32c + k].
template <GgmlType T>
__global__ void rows_kernel(const uint8_t* w, uint64_t row_bytes, uint64_t cols, const int32_t* ids,
                            uint64_t rows, float scale, bool scaled, float* y) {
  pdl::begin();
  const uint64_t chunks = (cols + 31) / 32;
  const uint64_t i = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= rows * chunks) return;
  const uint64_t r = i / chunks, c = i % chunks;
  const uint64_t src = ids ? static_cast<uint64_t>(ids[r]) : r;
  float v[32];
  quant::load_chunk<T>(w + src * row_bytes, static_cast<int64_t>(c), static_cast<int64_t>(cols), v);
  float* out = y + r * cols + 32 * c;
#pragma unroll
  for (int k = 0; k < 32; ++k)
    if (32 * c + k < cols) out[k] = scaled ? __fmul_rn(v[k], scale) : v[k];
}

struct Nothing {
  template <GgmlType>
  void operator()() const {}
};

void launch_rows(GgmlType type, const void* w, uint64_t cols, const int32_t* ids, uint64_t rows,
                 float scale, bool scaled, float* y, cudaStream_t stream) {
  const uint64_t total = rows * ((cols + 31) / 32);
  if (total == 0) return;
  const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  const uint64_t rb = row_bytes(type, cols);
  const bool known = quant::dispatch(type, [&]<GgmlType T>() {
    pdl::launch(rows_kernel<T>, blocks, kThreads, 0, stream, static_cast<const uint8_t*>(w), rb,
                cols, ids, rows, scale, scaled, y);
  });
  if (!known)
    throw Error("cuda: no kernel for weights of type " +
                std::string(formats::ggml_type_name(type)));
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool has_weight_kernels(GgmlType type) {
  return quant::dispatch(type, Nothing{});
}

uint64_t row_bytes(GgmlType type, uint64_t cols) {
  const formats::GgmlTypeInfo& info = formats::ggml_type_info(type);
  if (cols % info.block_elems != 0)
    throw Error("cuda: a row of " + std::to_string(cols) + " elements is not a whole number of " +
                std::string(info.name) + " blocks");
  return cols / info.block_elems * info.block_bytes;
}

void dequantize(GgmlType type, const void* w, uint64_t rows, uint64_t cols, float* y,
                cudaStream_t stream) {
  launch_rows(type, w, cols, nullptr, rows, 1.0f, false, y, stream);
}

void embed(GgmlType type, const void* w, uint64_t cols, const int32_t* ids, uint64_t tokens,
           float scale, float* y, cudaStream_t stream) {
  launch_rows(type, w, cols, ids, tokens, scale, scale != 1.0f, y, stream);
}

}  // namespace lockstep::cuda::kernels
