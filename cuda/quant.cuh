#pragma once
// Device-side GGML block decoding, shared by the dequantize, embedding and matmul kernels.
// A row is read in chunks of 32 consecutive elements (one Q4_0/Q5_x/Q8_0 block, one eighth of a
// K-quant super-block, or 32 plain values), so every kernel walks every type the same way.
//
// Decoding reproduces formats/codec_*.cpp bit for bit: the same products in the same order,
// through the _rn intrinsics, which the compiler never fuses into an FMA.

#include <cuda_runtime.h>

#include <cstdint>

#include "formats/ggml_type.h"

namespace lockstep::cuda::quant {

using formats::GgmlType;

// formats::fp16_to_f32 to the bit: NaN payloads kept and quieted, subnormals exact.
__device__ __forceinline__ float fp16_bits_to_f32(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {
    const uint32_t quiet = mantissa != 0 ? 0x00400000u : 0u;
    return __uint_as_float(sign | 0x7F800000u | (mantissa << 13) | quiet);
  }
  if (exponent == 0) {
    const float magnitude = __fmul_rn(static_cast<float>(mantissa), 0x1p-24f);
    return sign != 0 ? -magnitude : magnitude;
  }
  return __uint_as_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

__device__ __forceinline__ uint32_t u8(const uint8_t* p, int i) { return p[i]; }
// Little-endian fields at any alignment (legacy blocks are 18, 20, 22 bytes long).
__device__ __forceinline__ float half_at(const uint8_t* p) {
  return fp16_bits_to_f32(u8(p, 0) | (u8(p, 1) << 8));
}
__device__ __forceinline__ uint32_t u32_at(const uint8_t* p) {
  return u8(p, 0) | (u8(p, 1) << 8) | (u8(p, 2) << 16) | (u8(p, 3) << 24);
}

// Geometry the kernels need at compile time: elements and bytes per block.
template <GgmlType T> struct Block;
template <> struct Block<GgmlType::F32> { static constexpr int elems = 1, bytes = 4; };
template <> struct Block<GgmlType::F16> { static constexpr int elems = 1, bytes = 2; };
template <> struct Block<GgmlType::BF16> { static constexpr int elems = 1, bytes = 2; };
template <> struct Block<GgmlType::Q4_0> { static constexpr int elems = 32, bytes = 18; };
template <> struct Block<GgmlType::Q4_1> { static constexpr int elems = 32, bytes = 20; };
template <> struct Block<GgmlType::Q5_0> { static constexpr int elems = 32, bytes = 22; };
template <> struct Block<GgmlType::Q5_1> { static constexpr int elems = 32, bytes = 24; };
template <> struct Block<GgmlType::Q8_0> { static constexpr int elems = 32, bytes = 34; };
template <> struct Block<GgmlType::Q2_K> { static constexpr int elems = 256, bytes = 84; };
template <> struct Block<GgmlType::Q3_K> { static constexpr int elems = 256, bytes = 110; };
template <> struct Block<GgmlType::Q4_K> { static constexpr int elems = 256, bytes = 144; };
template <> struct Block<GgmlType::Q5_K> { static constexpr int elems = 256, bytes = 176; };
template <> struct Block<GgmlType::Q6_K> { static constexpr int elems = 256, bytes = 210; };

// Q4_K/Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes at p.
__device__ __forceinline__ void scale_min_6bit(const uint8_t* p, int j, uint32_t& sc,
                                               uint32_t& mn) {
  if (j < 4) {
    sc = u8(p, j) & 63;
    mn = u8(p, j + 4) & 63;
  } else {
    sc = (u8(p, j + 4) & 0x0F) | ((u8(p, j - 4) >> 6) << 4);
    mn = (u8(p, j + 4) >> 4) | ((u8(p, j) >> 6) << 4);
  }
}

// w[k] = element 32·c + k of a row of `cols` elements; plain types zero-fill past `cols`
// (block types always hold whole chunks).
template <GgmlType T>
__device__ __forceinline__ void load_chunk(const uint8_t* row, int64_t c, int64_t cols,
                                           float (&w)[32]) {
  constexpr int kPerBlock = Block<T>::elems >= 32 ? Block<T>::elems / 32 : 1;
  if constexpr (T == GgmlType::F32 || T == GgmlType::F16 || T == GgmlType::BF16) {
    const int64_t first = 32 * c;
#pragma unroll
    for (int k = 0; k < 32; ++k) {
      if (first + k >= cols) {
        w[k] = 0.0f;
      } else if constexpr (T == GgmlType::F32) {
        w[k] = reinterpret_cast<const float*>(row)[first + k];
      } else if constexpr (T == GgmlType::F16) {
        w[k] = fp16_bits_to_f32(reinterpret_cast<const uint16_t*>(row)[first + k]);
      } else {
        w[k] = __uint_as_float(uint32_t{reinterpret_cast<const uint16_t*>(row)[first + k]} << 16);
      }
    }
  } else {
    const uint8_t* b = row + (c / kPerBlock) * Block<T>::bytes;
    const int sub = static_cast<int>(c % kPerBlock);  // which 32 of the block
    if constexpr (T == GgmlType::Q8_0) {
      const float d = half_at(b);
#pragma unroll
      for (int k = 0; k < 32; ++k)
        w[k] = __fmul_rn(static_cast<float>(static_cast<int8_t>(b[2 + k])), d);
    } else if constexpr (T == GgmlType::Q4_0) {
      const float d = half_at(b);
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        w[k] = __fmul_rn(static_cast<float>(static_cast<int>(u8(b, 2 + k) & 0x0F) - 8), d);
        w[k + 16] = __fmul_rn(static_cast<float>(static_cast<int>(u8(b, 2 + k) >> 4) - 8), d);
      }
    } else if constexpr (T == GgmlType::Q4_1) {
      const float d = half_at(b), m = half_at(b + 2);
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        w[k] = __fadd_rn(__fmul_rn(static_cast<float>(u8(b, 4 + k) & 0x0F), d), m);
        w[k + 16] = __fadd_rn(__fmul_rn(static_cast<float>(u8(b, 4 + k) >> 4), d), m);
      }
    } else if constexpr (T == GgmlType::Q5_0) {
      const float d = half_at(b);
      const uint32_t qh = u32_at(b + 2);
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const int lo = static_cast<int>((u8(b, 6 + k) & 0x0F) | (((qh >> k) & 1u) << 4)) - 16;
        const int hi = static_cast<int>((u8(b, 6 + k) >> 4) | (((qh >> (k + 16)) & 1u) << 4)) - 16;
        w[k] = __fmul_rn(static_cast<float>(lo), d);
        w[k + 16] = __fmul_rn(static_cast<float>(hi), d);
      }
    } else if constexpr (T == GgmlType::Q5_1) {
      const float d = half_at(b), m = half_at(b + 2);
      const uint32_t qh = u32_at(b + 4);
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const uint32_t q0 = (u8(b, 8 + k) & 0x0F) | (((qh >> k) & 1u) << 4);
        const uint32_t q1 = (u8(b, 8 + k) >> 4) | (((qh >> (k + 16)) & 1u) << 4);
        w[k] = __fadd_rn(__fmul_rn(static_cast<float>(q0), d), m);
        w[k + 16] = __fadd_rn(__fmul_rn(static_cast<float>(q1), d), m);
      }
    } else if constexpr (T == GgmlType::Q2_K) {
      const float d = half_at(b + 80), dmin = half_at(b + 82);
      const uint8_t* qs = b + 16;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const uint32_t sc = u8(b, 2 * sub + half);
        const float d1 = __fmul_rn(d, static_cast<float>(sc & 0x0F));
        const float m1 = __fmul_rn(dmin, static_cast<float>(sc >> 4));
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          const int e = 32 * sub + 16 * half + k;
          const uint32_t q = (u8(qs, 32 * (e / 128) + e % 32) >> (2 * ((e % 128) / 32))) & 3;
          w[16 * half + k] = __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
        }
      }
    } else if constexpr (T == GgmlType::Q3_K) {
      const float d = half_at(b + 108);
      const uint8_t* hmask = b;
      const uint8_t* qs = b + 32;
      const uint8_t* sp = b + 96;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int j = 2 * sub + half;
        const uint32_t low = j < 8 ? (u8(sp, j) & 0x0F) : (u8(sp, j - 8) >> 4);
        const uint32_t high = (u8(sp, 8 + j % 4) >> (2 * (j / 4))) & 3;
        const int scale = static_cast<int>(low | (high << 4)) - 32;
        const float d1 = __fmul_rn(d, static_cast<float>(scale));
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          const int e = 32 * sub + 16 * half + k;
          const bool hbit = (u8(hmask, e % 32) >> (e / 32)) & 1;
          const int q = static_cast<int>((u8(qs, 32 * (e / 128) + e % 32) >> (2 * ((e % 128) / 32))) & 3) -
                        (hbit ? 0 : 4);
          w[16 * half + k] = __fmul_rn(d1, static_cast<float>(q));
        }
      }
    } else if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {
      const float d = half_at(b), dmin = half_at(b + 2);
      uint32_t sc, mn;
      scale_min_6bit(b + 4, sub, sc, mn);
      const float d1 = __fmul_rn(d, static_cast<float>(sc));
      const float m1 = __fmul_rn(dmin, static_cast<float>(mn));
      const int chunk = sub / 2, shift = 4 * (sub % 2);
      const uint8_t* qs = b + (T == GgmlType::Q4_K ? 16 : 48) + 32 * chunk;
#pragma unroll
      for (int k = 0; k < 32; ++k) {
        uint32_t q = (u8(qs, k) >> shift) & 0x0F;
        if constexpr (T == GgmlType::Q5_K) q |= ((u8(b + 16, k) >> sub) & 1) << 4;
        w[k] = __fsub_rn(__fmul_rn(d1, static_cast<float>(q)), m1);
      }
    } else if constexpr (T == GgmlType::Q6_K) {
      const float d = half_at(b + 208);
      const int half = sub / 4, g = sub % 4, shift = g < 2 ? 0 : 4;
      const uint8_t* ql = b + 64 * half + 32 * (g % 2);
      const uint8_t* qh = b + 128 + 32 * half;
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const float d1 = __fmul_rn(d, static_cast<float>(static_cast<int8_t>(b[192 + 2 * sub + s])));
#pragma unroll
        for (int k = 16 * s; k < 16 * s + 16; ++k) {
          const int u = static_cast<int>(((u8(ql, k) >> shift) & 0x0F) | (((u8(qh, k) >> (2 * g)) & 3) << 4));
          w[k] = __fmul_rn(d1, static_cast<float>(u - 32));
        }
      }
    }
  }
}

// Calls f.template operator()<T>() for a runtime type; false when no kernel exists for it.
template <typename F>
bool dispatch(GgmlType type, F&& f) {
  switch (type) {
    case GgmlType::F32: f.template operator()<GgmlType::F32>(); return true;
    case GgmlType::F16: f.template operator()<GgmlType::F16>(); return true;
    case GgmlType::BF16: f.template operator()<GgmlType::BF16>(); return true;
    case GgmlType::Q4_0: f.template operator()<GgmlType::Q4_0>(); return true;
    case GgmlType::Q4_1: f.template operator()<GgmlType::Q4_1>(); return true;
    case GgmlType::Q5_0: f.template operator()<GgmlType::Q5_0>(); return true;
    case GgmlType::Q5_1: f.template operator()<GgmlType::Q5_1>(); return true;
    case GgmlType::Q8_0: f.template operator()<GgmlType::Q8_0>(); return true;
    case GgmlType::Q2_K: f.template operator()<GgmlType::Q2_K>(); return true;
    case GgmlType::Q3_K: f.template operator()<GgmlType::Q3_K>(); return true;
    case GgmlType::Q4_K: f.template operator()<GgmlType::Q4_K>(); return true;
    case GgmlType::Q5_K: f.template operator()<GgmlType::Q5_K>(); return true;
    case GgmlType::Q6_K: f.template operator()<GgmlType::Q6_K>(); return true;
    default: return false;
  }
}

}  // namespace lockstep::cuda::quant
