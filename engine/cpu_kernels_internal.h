#pragma once
// Private to the cpu kernel sources: the prepared activation block layouts and the per-ISA
// entry points.
//
// The SIMD translation units are compiled with their own -m flags, so they must not emit any
// function the linker could pick for the scalar build (an inline function or a template of a
// shared header instantiated there). They therefore see only plain structs and raw pointers:
// no std::vector, no PreparedActs::row().

#include <cstddef>
#include <cstdint>

#include "formats/ggml_type.h"

namespace lockstep::engine::cpu::detail {

// Q8_32: activations for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; one block per 32 values, x ≈ d·q with
// d = amax/127, and s = d·Σq for the weight types with a min. A row of nb = cols/32 blocks
// holds three arrays, so that SIMD code loads the scales of 8 blocks at once:
//   int8 q[nb·32] @0, f32 d[nb] @nb·32, f32 s[nb] @nb·36   (nb·40 bytes)
constexpr size_t kQ8_32BlockBytes = 40;
struct Q8_32Row {
  int8_t* q;
  float* d;
  float* s;
};
// Internal linkage on purpose (see above).
static inline Q8_32Row q8_32_row(const std::byte* row, uint64_t nb) {
  std::byte* p = const_cast<std::byte*>(row);
  return {reinterpret_cast<int8_t*>(p), reinterpret_cast<float*>(p + nb * 32),
          reinterpret_cast<float*>(p + nb * 36)};
}

// Q8_256: activations for the K-quants; one block per 256 values (llama.cpp's Q8_K).
// x ≈ d·q; bsums[j] = Σ q[16j .. 16j+15] for the mins and offsets.
struct ActBlockQ8_256 {
  float d;
  int8_t q[256];
  int16_t bsums[16];
};
static_assert(sizeof(ActBlockQ8_256) == 292);

// One matmul call with its checks done: rows [r0, r1) of W against every prepared token.
struct MatmulArgs {
  formats::GgmlType type;
  const std::byte* w;  // [rows] rows of w_row_bytes
  size_t w_row_bytes;
  uint64_t cols;
  const std::byte* x;  // [tokens] prepared rows of x_row_bytes
  size_t x_row_bytes;
  uint64_t tokens;
  uint64_t r0;
  uint64_t r1;
  float* y;  // y[t·ldy + r]
  uint64_t ldy;
};

#if defined(LOCKSTEP_HAVE_X86_KERNELS)
// Return false for a weight type the ISA has no kernel for; the caller then runs the scalar one.
bool matmul_avx2(const MatmulArgs& args);
float dot_f32_avx2(const float* a, const float* b, uint64_t n);
void axpy_f32_avx2(float a, const float* x, float* y, uint64_t n);

bool matmul_avx512(const MatmulArgs& args);
float dot_f32_avx512(const float* a, const float* b, uint64_t n);
void axpy_f32_avx512(float a, const float* x, float* y, uint64_t n);
#endif

}  // namespace lockstep::engine::cpu::detail
