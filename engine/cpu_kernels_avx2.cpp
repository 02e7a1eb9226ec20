// The cpu lane's AVX2 kernels (compiled with -mavx2 -mfma -mf16c): cpu_kernels_x86.h with
// vpmaddubsw/vpmaddwd integer dots and 8-lane f32 vectors.

#if defined(LOCKSTEP_HAVE_X86_KERNELS)

#include <immintrin.h>

#include <cstring>

#include "engine/cpu_kernels_internal.h"

namespace lockstep::engine::cpu::detail {
namespace {

#define LOCKSTEP_X86_VNNI 0

// 2 rows × 4 tokens of running sums, 4 activation vectors and a weight vector: 13 of 16 ymm.
constexpr int kFloatTile = 4;
constexpr int kFloatRows = 2;

struct VF {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_f16(const std::byte* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static V load_bf16(const std::byte* p) {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static float hsum(V v);
};

#include "engine/cpu_kernels_x86.h"

float VF::hsum(V v) {
  return hsum8(v);
}

}  // namespace

bool matmul_avx2(const MatmulArgs& args) {
  return matmul_impl(args);
}
float dot_f32_avx2(const float* a, const float* b, uint64_t n) {
  return dot_f32_impl(a, b, n);
}
void axpy_f32_avx2(float a, const float* x, float* y, uint64_t n) {
  axpy_f32_impl(a, x, y, n);
}

}  // namespace lockstep::engine::cpu::detail

#endif  // LOCKSTEP_HAVE_X86_KERNELS
