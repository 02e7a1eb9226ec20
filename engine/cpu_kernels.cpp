// The cpu lane's kernels: ISA detection and dispatch, activation preparation, and the scalar
// (portable C++) kernels for every weight type. The SIMD kernels live in cpu_kernels_avx2.cpp
// and cpu_kernels_avx512.cpp.
//
// Every kernel computes a block's contribution the same way whatever the tile of tokens it runs
// in: integer dot products within a block, the block's scales applied in f32, block results
// added in f32 in block order. So y[t, r] depends only on W row r and x row t.

#include "engine/cpu_kernels.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>

#include "engine/cpu_kernels_internal.h"
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
#include <cpuid.h>
#endif
#include "formats/error.h"
#include "formats/ggml_codec.h"

namespace lockstep::engine::cpu {
namespace {

using detail::ActBlockQ8_256;
using detail::MatmulArgs;
using formats::GgmlType;

// ---- Activation quantization.

// Round to nearest (ties to even) through the float adder, as llama.cpp's nearest_int does;
// |v| must stay below 2^22 for the result to be right (it is at most 127.x here). Garbage, but
// no undefined behaviour, for NaN: callers mark such blocks non-finite anyway.
inline int32_t nearest_int(float v) {
  const float f = v + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

inline int8_t clamp_q(int32_t q) {
  return static_cast<int8_t>(q < -127 ? -127 : (q > 127 ? 127 : q));
}

// [cols] f32 -> cols/32 blocks: d = amax/127, q = round(x/d) (llama.cpp's quantize_row_q8_1).
void quantize_row_q8_32(const float* x, uint64_t cols, std::byte* row) {
  const uint64_t nb = cols / 32;
  const detail::Q8_32Row out = detail::q8_32_row(row, nb);
  for (uint64_t b = 0; b < nb; ++b, x += 32) {
    float amax = 0.0f;
    bool finite = true;
    for (int j = 0; j < 32; ++j) {
      const float a = std::fabs(x[j]);
      finite = finite && a <= FLT_MAX;
      amax = a > amax ? a : amax;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int8_t* q = out.q + 32 * b;
    int32_t sum = 0;
    for (int j = 0; j < 32; ++j) {
      q[j] = finite ? clamp_q(nearest_int(x[j] * id)) : int8_t{0};
      sum += q[j];
    }
    out.d[b] = finite ? d : std::numeric_limits<float>::quiet_NaN();
    out.s[b] = out.d[b] * static_cast<float>(sum);
  }
}

// [cols] f32 -> cols/256 blocks (llama.cpp's quantize_row_q8_K): the value of largest magnitude
// maps to -127 exactly; d = 1/iscale.
void quantize_row_q8_256(const float* x, uint64_t cols, ActBlockQ8_256* out) {
  for (uint64_t b = 0; b < cols / 256; ++b, x += 256) {
    ActBlockQ8_256& blk = out[b];
    float amax = 0.0f;
    float max = 0.0f;
    bool finite = true;
    for (int j = 0; j < 256; ++j) {
      const float a = std::fabs(x[j]);
      finite = finite && a <= FLT_MAX;
      if (a > amax) {
        amax = a;
        max = x[j];
      }
    }
    if (amax == 0.0f || !finite) {
      blk.d = finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      std::memset(blk.q, 0, sizeof blk.q);
      std::memset(blk.bsums, 0, sizeof blk.bsums);
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < 256; ++j) blk.q[j] = clamp_q(nearest_int(iscale * x[j]));
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int j = 0; j < 16; ++j) sum += blk.q[16 * g + j];
      blk.bsums[g] = static_cast<int16_t>(sum);
    }
    blk.d = 1.0f / iscale;
  }
}

// ---- Weight block fields.

inline uint8_t u8(const std::byte* p, size_t i) {
  return static_cast<uint8_t>(p[i]);
}
inline float f16(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return formats::fp16_to_f32(h);
}
inline uint32_t u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- Tiles: one weight row against NT consecutive tokens, results in res[NT].

constexpr int kTile = 4;
// Tokens per pass over the rows: their prepared rows stay in L2 while every weight row passes.
constexpr uint64_t kTokenChunkBytes = 256 * 1024;

struct Tile {
  void (*n)(const void* kind, const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res);
  void (*one)(const void* kind, const MatmulArgs& a, const std::byte* wrow, uint64_t t0,
              float* res);
};

void drive(const MatmulArgs& a, const void* kind, Tile tile) {
  const uint64_t fit = kTokenChunkBytes / std::max<uint64_t>(a.x_row_bytes, 1);
  const uint64_t chunk = std::max<uint64_t>(kTile, fit / kTile * kTile);
  float res[kTile];
  for (uint64_t c0 = 0; c0 < a.tokens; c0 += chunk) {
    const uint64_t c1 = std::min(a.tokens, c0 + chunk);
    for (uint64_t r = a.r0; r < a.r1; ++r) {
      const std::byte* wrow = a.w + r * a.w_row_bytes;
      uint64_t t = c0;
      for (; t + kTile <= c1; t += kTile) {
        tile.n(kind, a, wrow, t, res);
        for (int i = 0; i < kTile; ++i) a.y[(t + i) * a.ldy + r] = res[i];
      }
      for (; t < c1; ++t) {
        tile.one(kind, a, wrow, t, res);
        a.y[t * a.ldy + r] = res[0];
      }
    }
  }
}

// -- Float weights: widened to f32, eight running sums (element i goes to sum i % 8).

struct FloatKind {
  size_t elem_bytes;
  void (*widen)(const std::byte* src, float* dst, int n);
};

void widen_f32(const std::byte* src, float* dst, int n) {
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
}
void widen_f16(const std::byte* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = f16(src + 2 * i);
}
void widen_bf16(const std::byte* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof h);
    dst[i] = formats::bf16_to_f32(h);
  }
}

constexpr FloatKind kF32{4, widen_f32};
constexpr FloatKind kF16{2, widen_f16};
constexpr FloatKind kBF16{2, widen_bf16};

template <int NT>
void float_tile(const void* kind_ptr, const MatmulArgs& a, const std::byte* wrow, uint64_t t0,
                float* res) {
  const auto& kind = *static_cast<const FloatKind*>(kind_ptr);
  const float* x[NT];
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const float*>(a.x + (t0 + t) * a.x_row_bytes);
  float s[NT][8] = {};
  float w[8];
  for (uint64_t i = 0; i < a.cols; i += 8) {
    const int n = static_cast<int>(std::min<uint64_t>(8, a.cols - i));
    kind.widen(wrow + i * kind.elem_bytes, w, n);
    for (int t = 0; t < NT; ++t) {
      for (int k = 0; k < n; ++k) s[t][k] += w[k] * x[t][i + k];
    }
  }
  for (int t = 0; t < NT; ++t) {
    res[t] = ((s[t][0] + s[t][1]) + (s[t][2] + s[t][3])) + ((s[t][4] + s[t][5]) + (s[t][6] + s[t][7]));
  }
}

// -- 32-element blocks against Q8_32 activations: w = d·q (+ m).

struct LegacyBlock {
  int8_t q[32];
  float d;
  float m;
};

struct LegacyKind {
  size_t bytes;
  bool has_min;
  void (*unpack)(const std::byte* b, LegacyBlock& out);
};

void unpack_q4_0(const std::byte* b, LegacyBlock& o) {
  o.d = f16(b);
  o.m = 0.0f;
  for (int j = 0; j < 16; ++j) {
    o.q[j] = static_cast<int8_t>((u8(b + 2, j) & 0x0F) - 8);
    o.q[j + 16] = static_cast<int8_t>((u8(b + 2, j) >> 4) - 8);
  }
}
void unpack_q4_1(const std::byte* b, LegacyBlock& o) {
  o.d = f16(b);
  o.m = f16(b + 2);
  for (int j = 0; j < 16; ++j) {
    o.q[j] = static_cast<int8_t>(u8(b + 4, j) & 0x0F);
    o.q[j + 16] = static_cast<int8_t>(u8(b + 4, j) >> 4);
  }
}
void unpack_q5_0(const std::byte* b, LegacyBlock& o) {
  o.d = f16(b);
  o.m = 0.0f;
  const uint32_t qh = u32(b + 2);
  for (int j = 0; j < 16; ++j) {
    o.q[j] = static_cast<int8_t>(((u8(b + 6, j) & 0x0F) | (((qh >> j) & 1u) << 4)) - 16);
    o.q[j + 16] = static_cast<int8_t>(((u8(b + 6, j) >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16);
  }
}
void unpack_q5_1(const std::byte* b, LegacyBlock& o) {
  o.d = f16(b);
  o.m = f16(b + 2);
  const uint32_t qh = u32(b + 4);
  for (int j = 0; j < 16; ++j) {
    o.q[j] = static_cast<int8_t>((u8(b + 8, j) & 0x0F) | (((qh >> j) & 1u) << 4));
    o.q[j + 16] = static_cast<int8_t>((u8(b + 8, j) >> 4) | (((qh >> (j + 16)) & 1u) << 4));
  }
}
void unpack_q8_0(const std::byte* b, LegacyBlock& o) {
  o.d = f16(b);
  o.m = 0.0f;
  std::memcpy(o.q, b + 2, 32);
}

constexpr LegacyKind kQ4_0{18, false, unpack_q4_0};
constexpr LegacyKind kQ4_1{20, true, unpack_q4_1};
constexpr LegacyKind kQ5_0{22, false, unpack_q5_0};
constexpr LegacyKind kQ5_1{24, true, unpack_q5_1};
constexpr LegacyKind kQ8_0{34, false, unpack_q8_0};

template <int NT>
void legacy_tile(const void* kind_ptr, const MatmulArgs& a, const std::byte* wrow, uint64_t t0,
                 float* res) {
  const auto& kind = *static_cast<const LegacyKind*>(kind_ptr);
  const uint64_t nb = a.cols / 32;
  detail::Q8_32Row x[NT];
  for (int t = 0; t < NT; ++t) x[t] = detail::q8_32_row(a.x + (t0 + t) * a.x_row_bytes, nb);
  float acc[NT] = {};
  LegacyBlock blk;
  for (uint64_t b = 0; b < nb; ++b) {
    kind.unpack(wrow + b * kind.bytes, blk);
    for (int t = 0; t < NT; ++t) {
      const int8_t* xq = x[t].q + 32 * b;
      int32_t isum = 0;
      for (int j = 0; j < 32; ++j) isum += int32_t{blk.q[j]} * xq[j];
      const float dot = (blk.d * x[t].d[b]) * static_cast<float>(isum);
      acc[t] += kind.has_min ? dot + blk.m * x[t].s[b] : dot;
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = acc[t];
}

// -- K-quants against Q8_256 activations: w = (d·scale_j)·q - (dmin·min_j) per sub-block j.

struct KBlock {
  int8_t q[256];
  int32_t scale[16];
  int32_t min[16];
  float d;
  float dmin;
};

struct KKind {
  size_t bytes;
  int sub;  // elements per sub-block: 16 or 32
  bool has_min;
  void (*unpack)(const std::byte* b, KBlock& out);
};

// 2-bit planes: weight e in byte 32·(e/128) + e%32 at bits 2·((e%128)/32).
inline int get_2bit(const std::byte* qs, int e) {
  return (u8(qs, 32 * (e / 128) + e % 32) >> (2 * ((e % 128) / 32))) & 3;
}

void unpack_scale_min_6bit(const std::byte* p, int32_t* scale, int32_t* min) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = u8(p, j) & 63;
    min[j] = u8(p, j + 4) & 63;
    scale[j + 4] = (u8(p, j + 8) & 0x0F) | ((u8(p, j) >> 6) << 4);
    min[j + 4] = (u8(p, j + 8) >> 4) | ((u8(p, j + 4) >> 6) << 4);
  }
}

void unpack_q2_k(const std::byte* b, KBlock& o) {
  o.d = f16(b + 80);
  o.dmin = f16(b + 82);
  for (int j = 0; j < 16; ++j) {
    o.scale[j] = u8(b, j) & 0x0F;
    o.min[j] = u8(b, j) >> 4;
  }
  for (int e = 0; e < 256; ++e) o.q[e] = static_cast<int8_t>(get_2bit(b + 16, e));
}
void unpack_q3_k(const std::byte* b, KBlock& o) {
  o.d = f16(b + 108);
  o.dmin = 0.0f;
  const std::byte* sc = b + 96;
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? u8(sc, j) & 0x0F : u8(sc, j - 8) >> 4;
    const int high = (u8(sc, 8 + j % 4) >> (2 * (j / 4))) & 3;
    o.scale[j] = (low | (high << 4)) - 32;
    o.min[j] = 0;
  }
  for (int e = 0; e < 256; ++e) {
    const bool high = (u8(b, e % 32) >> (e / 32)) & 1;
    o.q[e] = static_cast<int8_t>(get_2bit(b + 32, e) - (high ? 0 : 4));
  }
}
void unpack_q4_k(const std::byte* b, KBlock& o) {
  o.d = f16(b);
  o.dmin = f16(b + 2);
  unpack_scale_min_6bit(b + 4, o.scale, o.min);
  const std::byte* qs = b + 16;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      o.q[64 * c + l] = static_cast<int8_t>(u8(qs, 32 * c + l) & 0x0F);
      o.q[64 * c + 32 + l] = static_cast<int8_t>(u8(qs, 32 * c + l) >> 4);
    }
  }
}
void unpack_q5_k(const std::byte* b, KBlock& o) {
  o.d = f16(b);
  o.dmin = f16(b + 2);
  unpack_scale_min_6bit(b + 4, o.scale, o.min);
  const std::byte* qh = b + 16;
  const std::byte* qs = b + 48;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      o.q[64 * c + l] = static_cast<int8_t>((u8(qs, 32 * c + l) & 0x0F) |
                                            (((u8(qh, l) >> (2 * c)) & 1) << 4));
      o.q[64 * c + 32 + l] = static_cast<int8_t>((u8(qs, 32 * c + l) >> 4) |
                                                 (((u8(qh, l) >> (2 * c + 1)) & 1) << 4));
    }
  }
}
void unpack_q6_k(const std::byte* b, KBlock& o) {
  o.d = f16(b + 208);
  o.dmin = 0.0f;
  for (int j = 0; j < 16; ++j) {
    o.scale[j] = static_cast<int8_t>(u8(b, 192 + j));
    o.min[j] = 0;
  }
  for (int half = 0; half < 2; ++half) {
    const std::byte* ql = b + 64 * half;
    const std::byte* qh = b + 128 + 32 * half;
    for (int g = 0; g < 4; ++g) {
      const int shift = g < 2 ? 0 : 4;
      for (int l = 0; l < 32; ++l) {
        const int u = ((u8(ql, 32 * (g % 2) + l) >> shift) & 0x0F) | (((u8(qh, l) >> (2 * g)) & 3) << 4);
        o.q[128 * half + 32 * g + l] = static_cast<int8_t>(u - 32);
      }
    }
  }
}

constexpr KKind kQ2_K{84, 16, true, unpack_q2_k};
constexpr KKind kQ3_K{110, 16, false, unpack_q3_k};
constexpr KKind kQ4_K{144, 32, true, unpack_q4_k};
constexpr KKind kQ5_K{176, 32, true, unpack_q5_k};
constexpr KKind kQ6_K{210, 16, false, unpack_q6_k};

template <int NT>
void kquant_tile(const void* kind_ptr, const MatmulArgs& a, const std::byte* wrow, uint64_t t0,
                 float* res) {
  const auto& kind = *static_cast<const KKind*>(kind_ptr);
  const ActBlockQ8_256* x[NT];
  for (int t = 0; t < NT; ++t) {
    x[t] = reinterpret_cast<const ActBlockQ8_256*>(a.x + (t0 + t) * a.x_row_bytes);
  }
  const int nsub = 256 / kind.sub;
  float acc[NT] = {};
  KBlock blk;
  for (uint64_t b = 0; b < a.cols / 256; ++b) {
    kind.unpack(wrow + b * kind.bytes, blk);
    for (int t = 0; t < NT; ++t) {
      const ActBlockQ8_256& xb = x[t][b];
      int32_t isum = 0;
      for (int j = 0; j < nsub; ++j) {
        int32_t s = 0;
        for (int e = kind.sub * j; e < kind.sub * (j + 1); ++e) s += int32_t{blk.q[e]} * xb.q[e];
        isum += blk.scale[j] * s;
      }
      const float dot = (blk.d * xb.d) * static_cast<float>(isum);
      if (kind.has_min) {
        int32_t msum = 0;
        for (int j = 0; j < nsub; ++j) {
          const int32_t bs = kind.sub == 16 ? xb.bsums[j] : xb.bsums[2 * j] + xb.bsums[2 * j + 1];
          msum += blk.min[j] * bs;
        }
        acc[t] += dot - (blk.dmin * xb.d) * static_cast<float>(msum);
      } else {
        acc[t] += dot;
      }
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = acc[t];
}

constexpr Tile kFloatTile{float_tile<kTile>, float_tile<1>};
constexpr Tile kLegacyTile{legacy_tile<kTile>, legacy_tile<1>};
constexpr Tile kKquantTile{kquant_tile<kTile>, kquant_tile<1>};

void matmul_scalar(const MatmulArgs& a) {
  switch (a.type) {
    case GgmlType::F32: return drive(a, &kF32, kFloatTile);
    case GgmlType::F16: return drive(a, &kF16, kFloatTile);
    case GgmlType::BF16: return drive(a, &kBF16, kFloatTile);
    case GgmlType::Q4_0: return drive(a, &kQ4_0, kLegacyTile);
    case GgmlType::Q4_1: return drive(a, &kQ4_1, kLegacyTile);
    case GgmlType::Q5_0: return drive(a, &kQ5_0, kLegacyTile);
    case GgmlType::Q5_1: return drive(a, &kQ5_1, kLegacyTile);
    case GgmlType::Q8_0: return drive(a, &kQ8_0, kLegacyTile);
    case GgmlType::Q2_K: return drive(a, &kQ2_K, kKquantTile);
    case GgmlType::Q3_K: return drive(a, &kQ3_K, kKquantTile);
    case GgmlType::Q4_K: return drive(a, &kQ4_K, kKquantTile);
    case GgmlType::Q5_K: return drive(a, &kQ5_K, kKquantTile);
    case GgmlType::Q6_K: return drive(a, &kQ6_K, kKquantTile);
    default: break;
  }
  throw Error("cpu kernels: no scalar kernel for this weight type");
}

float dot_f32_scalar(const float* a, const float* b, uint64_t n) {
  float s[8] = {};
  for (uint64_t i = 0; i < n; ++i) s[i % 8] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// ---- ISA detection.

struct CpuFeatures {
  bool avx2 = false;
  bool avx512 = false;
};

CpuFeatures detect() {
  CpuFeatures f;
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  // F16C through cpuid (leaf 1, ecx bit 29): clang's __builtin_cpu_supports has no "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
#endif
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

bool runs(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return features().avx2;
    case Isa::Avx512: return features().avx512;
  }
  return false;
}

void check_runs(Isa isa) {
  if (!runs(isa)) {
    throw Error("cpu kernels: ISA " + std::string(isa_name(isa)) + " is not supported here");
  }
}

std::string type_name(GgmlType type) {
  const formats::GgmlTypeInfo* info = formats::find_ggml_type(static_cast<uint32_t>(type));
  return info ? std::string(info->name) : "type id " + std::to_string(static_cast<uint32_t>(type));
}

uint64_t format_block(ActFormat format) {
  switch (format) {
    case ActFormat::F32: return 1;
    case ActFormat::Q8_32: return 32;
    case ActFormat::Q8_256: return 256;
  }
  return 1;
}

size_t format_row_bytes(ActFormat format, uint64_t cols) {
  switch (format) {
    case ActFormat::F32: return cols * sizeof(float);
    case ActFormat::Q8_32: return cols / 32 * detail::kQ8_32BlockBytes;
    case ActFormat::Q8_256: return cols / 256 * sizeof(ActBlockQ8_256);
  }
  return 0;
}

}  // namespace

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "unknown";
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas{Isa::Scalar};
  if (runs(Isa::Avx2)) isas.push_back(Isa::Avx2);
  if (runs(Isa::Avx512)) isas.push_back(Isa::Avx512);
  return isas;
}

Isa best_isa() {
  const std::vector<Isa> isas = supported_isas();
  const char* env = std::getenv("LOCKSTEP_CPU_ISA");
  if (env == nullptr || *env == '\0') return isas.back();
  std::string names;
  for (Isa isa : isas) {
    if (isa_name(isa) == env) return isa;
    names += names.empty() ? "" : ", ";
    names += isa_name(isa);
  }
  throw Error("LOCKSTEP_CPU_ISA=" + std::string(env) + ": this CPU and build support " + names);
}

ActFormat act_format(formats::GgmlType weight_type) {
  switch (weight_type) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16: return ActFormat::F32;
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0: return ActFormat::Q8_32;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return ActFormat::Q8_256;
    default: break;
  }
  throw Error("cpu kernels: no kernel for weight type " + type_name(weight_type));
}

void prepare_acts(Isa isa, ActFormat format, const float* x, uint64_t rows, uint64_t cols,
                  uint64_t ldx, PreparedActs& out) {
  check_runs(isa);
  if (cols % format_block(format) != 0) {
    throw Error("prepare_acts: cols " + std::to_string(cols) + " is not a multiple of " +
                std::to_string(format_block(format)));
  }
  if (rows > 1 && ldx < cols) throw Error("prepare_acts: ldx is smaller than cols");
  out.format = format;
  out.rows = rows;
  out.cols = cols;
  out.row_bytes = format_row_bytes(format, cols);
  const size_t need = rows * out.row_bytes;
  if (out.data.size() < need) out.data.resize(need);
  for (uint64_t t = 0; t < rows; ++t) {
    const float* src = x + t * ldx;
    std::byte* dst = out.data.data() + t * out.row_bytes;
    switch (format) {
      case ActFormat::F32: std::memcpy(dst, src, out.row_bytes); break;
      case ActFormat::Q8_32:
        quantize_row_q8_32(src, cols, dst);
        break;
      case ActFormat::Q8_256:
        quantize_row_q8_256(src, cols, reinterpret_cast<ActBlockQ8_256*>(dst));
        break;
    }
  }
}

void matmul(Isa isa, const WeightMatrix& w, const PreparedActs& x, uint64_t r0, uint64_t r1,
            float* y, uint64_t ldy) {
  check_runs(isa);
  const ActFormat format = act_format(w.type);
  if (x.format != format) throw Error("matmul: activations prepared in the wrong format");
  if (x.cols != w.cols) {
    throw Error("matmul: activations have " + std::to_string(x.cols) + " columns, weights " +
                std::to_string(w.cols));
  }
  if (r0 > r1 || r1 > w.rows) throw Error("matmul: row range outside the matrix");
  const std::optional<uint64_t> need = formats::ggml_bytes(w.type, w.cols);
  if (!need || w.row_bytes < *need) {
    throw Error("matmul: " + type_name(w.type) + " rows of " + std::to_string(w.cols) +
                " columns need more than " + std::to_string(w.row_bytes) + " bytes");
  }
  if (r0 == r1 || x.rows == 0) return;
  if (x.rows > 1 && ldy < r1) throw Error("matmul: ldy is smaller than the row range");
  if (x.data.size() < x.rows * x.row_bytes) throw Error("matmul: activations are not prepared");

  const MatmulArgs args{w.type, w.data, w.row_bytes, w.cols, x.data.data(), x.row_bytes,
                        x.rows, r0,     r1,          y,      ldy};
  switch (isa) {
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
    case Isa::Avx512:
      if (detail::matmul_avx512(args)) return;
      break;
    case Isa::Avx2:
      if (detail::matmul_avx2(args)) return;
      break;
#endif
    default: break;
  }
  matmul_scalar(args);
}

float dot_f32(Isa isa, const float* a, const float* b, uint64_t n) {
  check_runs(isa);
  switch (isa) {
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
    case Isa::Avx512: return detail::dot_f32_avx512(a, b, n);
    case Isa::Avx2: return detail::dot_f32_avx2(a, b, n);
#endif
    default: return dot_f32_scalar(a, b, n);
  }
}

void axpy_f32(Isa isa, float a, const float* x, float* y, uint64_t n) {
  check_runs(isa);
  switch (isa) {
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
    case Isa::Avx512: return detail::axpy_f32_avx512(a, x, y, n);
    case Isa::Avx2: return detail::axpy_f32_avx2(a, x, y, n);
#endif
    default: break;
  }
  for (uint64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace lockstep::engine::cpu
