// Dequantizing matrix products, y = x · Wᵀ with W in its stored GGML type. One warp per weight
// row; lane l takes chunks l, l + 32, ... of 32 elements, decodes each once and dots it with up
// to kTile token rows; the 32 partial sums are reduced with shuffles in a fixed order. An
// output's arithmetic is the same whatever the token count, so a prefill equals the same
// tokens decoded one by one, bit for bit. Correct first: no shared-memory staging of x, no
// integer dot products (see issue 5 for the speed work).

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/quant.cuh"
#include "formats/error.h"

namespace lockstep::cuda::kernels {
namespace {

using formats::GgmlType;

constexpr int kWarpsPerBlock = 4;
constexpr int kTile = 8;  // token rows per decoded chunk

template <GgmlType T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    matmul_kernel(const uint8_t* w, uint64_t row_bytes, uint64_t rows, uint64_t cols,
                  const float* x, uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0) {
  const uint64_t row = uint64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= rows) return;  // whole warps leave together
  const uint8_t* wr = w + row * row_bytes;
  const int64_t chunks = static_cast<int64_t>((cols + 31) / 32);
  for (uint64_t t0 = 0; t0 < tokens; t0 += kTile) {
    float acc[kTile];
#pragma unroll
    for (int j = 0; j < kTile; ++j) acc[j] = 0.0f;
    for (int64_t c = lane; c < chunks; c += 32) {
      float wv[32];
      quant::load_chunk<T>(wr, c, static_cast<int64_t>(cols), wv);
      const int64_t lim = static_cast<int64_t>(cols) - 32 * c;  // < 32 only for a plain tail
#pragma unroll
      for (int j = 0; j < kTile; ++j) {
        if (t0 + j >= tokens) break;
        const float* xt = x + (t0 + j) * cols + 32 * c;  // [32] of token t0 + j
        float s = acc[j];
#pragma unroll
        for (int k = 0; k < 32; ++k)
          if (k < lim) s = fmaf(wv[k], xt[k], s);
        acc[j] = s;
      }
    }
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      float s = acc[j];
#pragma unroll
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
      if (lane == 0 && t0 + j < tokens) y[(t0 + j) * y_stride + col0 + row] = s;
    }
  }
}

}  // namespace

void matmul(GgmlType type, const void* w, uint64_t rows, uint64_t cols, const float* x,
            uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0, cudaStream_t stream) {
  if (rows == 0 || tokens == 0) return;
  const uint64_t rb = row_bytes(type, cols);
  const auto blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const bool known = quant::dispatch(type, [&]<GgmlType T>() {
    matmul_kernel<T><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
        static_cast<const uint8_t*>(w), rb, rows, cols, x, tokens, y, y_stride, col0);
  });
  if (!known)
    throw Error("cuda: no matmul kernel for weights of type " +
                std::string(formats::ggml_type_name(type)));
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
}

}  // namespace lockstep::cuda::kernels
