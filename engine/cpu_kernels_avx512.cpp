// The cpu lane's AVX-512 kernels (compiled with -mavx512f/bw/vl/dq/vnni plus the AVX2 flags):
// cpu_kernels_x86.h with vpdpbusd integer dots and 16-lane f32 vectors.

#if defined(LOCKSTEP_HAVE_X86_KERNELS)

// GCC 12's avx512fintrin.h sets its _mm512_undefined_* values from themselves, and
// -Wuninitialized flags every inlined use (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cstring>

#include "engine/cpu_kernels_internal.h"

namespace lockstep::engine::cpu::detail {
namespace {

#define LOCKSTEP_X86_VNNI 1

// 4 rows × 4 tokens of running sums, 4 activation vectors and a weight vector: 21 of 32 zmm.
constexpr int kFloatTile = 4;
constexpr int kFloatRows = 4;

struct VF {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_f16(const std::byte* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V load_bf16(const std::byte* p) {
    const __m512i h =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static float hsum(V v);
};

#include "engine/cpu_kernels_x86.h"

float VF::hsum(V v) {
  return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

}  // namespace

bool matmul_avx512(const MatmulArgs& args) {
  return matmul_impl(args);
}
float dot_f32_avx512(const float* a, const float* b, uint64_t n) {
  return dot_f32_impl(a, b, n);
}
void axpy_f32_avx512(float a, const float* x, float* y, uint64_t n) {
  axpy_f32_impl(a, x, y, n);
}

}  // namespace lockstep::engine::cpu::detail

#endif  // LOCKSTEP_HAVE_X86_KERNELS
