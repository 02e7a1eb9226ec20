#pragma once
// Device-side GGML block decoding, shared by the dequantize, embedding and matmul kernels.
// A row is read in chunks of 32 consecutive elements (one Q4_0/Q5_x/Q8_0 block, one eighth of a
// K-quant super-block, or 32 plain values), so every kernel walks every type the same way.
//
// Decoding reproduces formats/codec_*.cpp bit for bit: the same products in the same order,
// through the _rn intrinsics, which the compiler never fuses into an FMA.

#include <cuda_fp16.h>
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

// Exact small integers as floats without the conversion unit (I2F runs at a quarter of the FMA
// rate): 2^23 + q has q in its low mantissa bits, so subtracting 2^23 leaves exactly q.
__device__ __forceinline__ float small_uint_to_float(uint32_t q) {  // q < 2^23
  return __fsub_rn(__uint_as_float(0x4B000000u | q), 8388608.0f);
}
__device__ __forceinline__ float small_int_to_float(int32_t q) {  // |q| < 2^22
  return __fsub_rn(__uint_as_float(0x4B000000u | static_cast<uint32_t>(q + 4194304)),
                   12582912.0f);  // 2^23 + 2^22
}
__device__ __forceinline__ uint32_t u16_at(const uint8_t* p) {  // p 2-byte aligned
  return *reinterpret_cast<const uint16_t*>(p);
}

// w[k] = element 32·c + 16·h + k of the row, k < 16: half h of load_chunk's chunk c, the same
// floats bit for bit. Plain types whose rows are 16-byte aligned and hold whole chunks (`wide`)
// are read with 16-byte loads; everything else is load_chunk's half. (The factored types never
// come here: the matmuls read their integers with chunk_ints_half or Chunk.)
template <GgmlType T>
__device__ __forceinline__ void decode_half(const uint8_t* row, int64_t c, int h, int64_t cols,
                                            bool wide, float (&w)[16]) {
  if constexpr (T == GgmlType::F32 || T == GgmlType::F16 || T == GgmlType::BF16) {
    if (wide) {
      const int64_t first = 32 * c + 16 * h;
      if constexpr (T == GgmlType::F32) {
        const uint4* p = reinterpret_cast<const uint4*>(row + 4 * first);
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const uint4 q = p[v];
          w[4 * v] = __uint_as_float(q.x), w[4 * v + 1] = __uint_as_float(q.y);
          w[4 * v + 2] = __uint_as_float(q.z), w[4 * v + 3] = __uint_as_float(q.w);
        }
      } else {
        const uint4* p = reinterpret_cast<const uint4*>(row + 2 * first);
#pragma unroll
        for (int v = 0; v < 2; ++v) {
          const uint4 q = p[v];
          const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const uint32_t bits = (words[j / 2] >> (16 * (j % 2))) & 0xFFFFu;
            w[8 * v + j] = T == GgmlType::F16 ? fp16_bits_to_f32(bits) : __uint_as_float(bits << 16);
          }
        }
      }
      return;
    }
  }
  float all[32];
  load_chunk<T>(row, c, cols, all);
#pragma unroll
  for (int k = 0; k < 16; ++k) w[k] = all[16 * h + k];
}

// The matmuls' factored form for the types that matter for speed: a chunk's weights are
// scale · integer (− min), so Σ w·x over the chunk is computed as scale · Σ q·x (− min · Σ x):
// one multiply-add per element instead of a decode and a multiply-add. kFactored says which
// types take it; chunk_ints_half gives the integers of half a chunk as exact floats, and
// ChunkScales the chunk's factors, each the codec's own product (so a one-hot x still reads
// back the codec's weight bit for bit).
template <GgmlType T>
constexpr bool kFactored = T == GgmlType::Q4_0 || T == GgmlType::Q8_0 || T == GgmlType::Q4_K ||
                           T == GgmlType::Q5_K || T == GgmlType::Q6_K;
// Whether the chunk has a min term (needs Σ x) and whether its halves have separate scales.
template <GgmlType T>
constexpr bool kHasMin = T == GgmlType::Q4_K || T == GgmlType::Q5_K;
template <GgmlType T>
constexpr bool kHalfScales = T == GgmlType::Q6_K;

// An fp16 field as f32 through the conversion instruction: exact, as fp16_bits_to_f32, for
// every finite value and the infinities; a NaN scale makes a NaN chunk either way.
__device__ __forceinline__ float half_bits(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

struct ChunkScales {
  float a0 = 0.0f, a1 = 0.0f;  // the scale (a1: of the second half, Q6_K)
  float m = 0.0f;              // the min (Q4_K, Q5_K)
};

// ---- Int8 activations (Q4_K, Q6_K): the cpu lane's Q8_256 scheme, dotted with __dp4a.
//
// Activations are quantized per 256 values as llama.cpp's quantize_row_q8_K (and the cpu lane's
// quantize_row_q8_256): the value of largest magnitude (the first of equals) maps to -127,
// q = clamp(nearest_int(iscale·x)), d = 1/iscale; a block with a NaN or an infinity gets d = NaN
// and q = 0, an all-zero block d = 0. A chunk's partial is then, with integer sums over its 32
// elements (exact in any order):
//   Q4_K: (d·xd)·(sc·Σ q·qx) − (dmin·xd)·(mn·Σ qx)
//   Q6_K: (d·xd)·(sc0·Σ_first16 q·qx + sc1·Σ_second16 q·qx)
// each product and difference rounded once (the _rn intrinsics), so the two kernels agree.
template <GgmlType T>
constexpr bool kInt8 = T == GgmlType::Q4_K || T == GgmlType::Q6_K;

// Integer factors of a chunk: Q4_K scale and min (6-bit), Q6_K the two int8 scales.
struct IntScales {
  float d = 0.0f, dmin = 0.0f;  // the super-block's fp16 factors
  int32_t s0 = 0, s1 = 0;       // Q4_K: scale, min; Q6_K: scale of each half
};

template <GgmlType T>
__device__ __forceinline__ ChunkScales chunk_scales(const uint8_t* row, int64_t c) {
  ChunkScales s;
  if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const uint32_t dd = *reinterpret_cast<const uint32_t*>(b);
    uint32_t sc, mn;
    scale_min_6bit(b + 4, static_cast<int>(c % 8), sc, mn);
    s.a0 = __fmul_rn(half_bits(dd & 0xFFFFu), small_uint_to_float(sc));
    s.m = __fmul_rn(half_bits(dd >> 16), small_uint_to_float(mn));
  } else if constexpr (T == GgmlType::Q6_K) {
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const int sub = static_cast<int>(c % 8);
    const float d = half_bits(u16_at(b + 208));
    const uint32_t pair = u16_at(b + 192 + 2 * sub);
    s.a0 = __fmul_rn(d, small_int_to_float(static_cast<int8_t>(pair & 0xFFu)));
    s.a1 = __fmul_rn(d, small_int_to_float(static_cast<int8_t>(pair >> 8)));
  } else if constexpr (T == GgmlType::Q8_0 || T == GgmlType::Q4_0) {
    s.a0 = half_bits(u16_at(row + c * Block<T>::bytes));
  }
  return s;
}

// Four small integers packed one per byte (each < 128), as exact floats: byte k is placed under
// the exponent of 2^23 (one byte permute), and `bias` (2^23 plus any offset folded into the
// bytes) is subtracted: q[k] = byte k + 2^23 − bias.
__device__ __forceinline__ void bytes_to_floats(uint32_t bytes, float bias, float* q) {
#pragma unroll
  for (int k = 0; k < 4; ++k)
    q[k] = __fsub_rn(__uint_as_float(__byte_perm(bytes, 0x4B000000u, 0x7540u | k)), bias);
}

// Q4_K/Q5_K: the 16 integers of half a chunk from its 16 bytes of low bits `v` (nibble
// sub % 2 of each) and, for Q5_K, the 16 bytes of high bits `qh` (bit sub of each).
template <GgmlType T>
__device__ __forceinline__ void k45_ints(const uint4& v, const uint4& qh, uint32_t sub,
                                         float (&q)[16]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w}, high[4] = {qh.x, qh.y, qh.z, qh.w};
  const uint32_t shift = 4 * (sub % 2);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t bytes = (words[i] >> shift) & 0x0F0F0F0Fu;
    if constexpr (T == GgmlType::Q5_K) bytes |= ((high[i] >> sub) & 0x01010101u) << 4;
    bytes_to_floats(bytes, 8388608.0f, q + 4 * i);
  }
}

// Q6_K: four integers (less 32) from four bytes of low bits (nibble at `shift`) and four of
// high bits (2 bits at 2·g).
__device__ __forceinline__ void q6k_floats(uint32_t low, uint32_t high, uint32_t shift,
                                           uint32_t g, float* q) {
  const uint32_t bytes = ((low >> shift) & 0x0F0F0F0Fu) | (((high >> (2 * g)) & 0x03030303u) << 4);
  bytes_to_floats(bytes, 8388640.0f, q);  // 2^23 + 32
}

// q[k], k < 16: the integers of elements 16·h + k of chunk c (Q4_0 less 8, Q6_K less 32).
template <GgmlType T>
__device__ __forceinline__ void chunk_ints_half(const uint8_t* row, int64_t c, int h,
                                                float (&q)[16]) {
  if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const uint32_t sub = static_cast<uint32_t>(c % 8);
    const uint4 v = *reinterpret_cast<const uint4*>(
        b + (T == GgmlType::Q4_K ? 16 : 48) + 32 * (sub / 2) + 16 * h);
    uint4 qh{};
    if constexpr (T == GgmlType::Q5_K) qh = *reinterpret_cast<const uint4*>(b + 16 + 16 * h);
    k45_ints<T>(v, qh, sub, q);
  } else if constexpr (T == GgmlType::Q6_K) {
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const uint32_t sub = static_cast<uint32_t>(c % 8);
    const uint32_t half = sub / 4, g = sub % 4, shift = g < 2 ? 0 : 4;
    const uint8_t* ql = b + 64 * half + 32 * (g % 2) + 16 * h;
    const uint8_t* qh = b + 128 + 32 * half + 16 * h;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      q6k_floats(u16_at(ql + 4 * i) | (u16_at(ql + 4 * i + 2) << 16),
                 u16_at(qh + 4 * i) | (u16_at(qh + 4 * i + 2) << 16), shift, g, q + 4 * i);
  } else if constexpr (T == GgmlType::Q8_0 || T == GgmlType::Q4_0) {
    const uint8_t* qs = row + c * Block<T>::bytes + 2 + (T == GgmlType::Q8_0 ? 16 * h : 0);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t raw = u16_at(qs + 4 * i) | (u16_at(qs + 4 * i + 2) << 16);
      if constexpr (T == GgmlType::Q8_0)
        bytes_to_floats(raw ^ 0x80808080u, 8388736.0f, q + 4 * i);  // int8 + 128; 2^23 + 128
      else
        bytes_to_floats((raw >> (4 * h)) & 0x0F0F0F0Fu, 8388616.0f, q + 4 * i);  // 2^23 + 8
    }
  }
}

// Chunk c of one row as the matmuls read it: `at` reads what it can ahead (for Q4_K and Q5_K,
// all the chunk's bytes into registers, so a kernel can put several chunks' loads in flight
// before it computes), `ints_half` and `scales` give chunk_ints_half's and chunk_scales's
// values bit for bit. Other types read on demand.
// LazyChunk reads on demand (few registers: the prefill tile holds many rows at once).
template <GgmlType T>
struct LazyChunk {
  const uint8_t* row = nullptr;
  int64_t c = 0;
  __device__ __forceinline__ static LazyChunk at(const uint8_t* row, int64_t c) {
    return {row, c};
  }
  __device__ __forceinline__ void ints_half(int h, float (&q)[16]) const {
    chunk_ints_half<T>(row, c, h, q);
  }
  __device__ __forceinline__ ChunkScales scales() const { return chunk_scales<T>(row, c); }
};

template <GgmlType T>
struct Chunk : LazyChunk<T> {
  __device__ __forceinline__ static Chunk at(const uint8_t* row, int64_t c) {
    Chunk k;
    k.row = row;
    k.c = c;
    return k;
  }
};

template <GgmlType T>
  requires(T == GgmlType::Q4_K || T == GgmlType::Q5_K)
struct Chunk<T> {
  const uint8_t* row = nullptr;
  int64_t c = 0;
  uint4 qs[2];      // the chunk's 32 bytes of low bits (nibble 0 or 1 of each)
  uint4 qh[2];      // Q5_K: the super-block's 32 bytes of high bits
  uint32_t dd = 0;  // d, dmin (fp16)
  uint32_t sc[3];   // the 12 bytes of packed 6-bit scales and mins

  __device__ __forceinline__ static Chunk at(const uint8_t* row, int64_t c) {
    Chunk k;
    k.row = row;
    k.c = c;
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const uint32_t sub = static_cast<uint32_t>(c % 8);
    const uint4* q =
        reinterpret_cast<const uint4*>(b + (T == GgmlType::Q4_K ? 16 : 48) + 32 * (sub / 2));
    k.qs[0] = q[0];
    k.qs[1] = q[1];
    if constexpr (T == GgmlType::Q5_K) {
      k.qh[0] = reinterpret_cast<const uint4*>(b + 16)[0];
      k.qh[1] = reinterpret_cast<const uint4*>(b + 16)[1];
    }
    const uint32_t* w = reinterpret_cast<const uint32_t*>(b);
    k.dd = w[0];
    k.sc[0] = w[1];
    k.sc[1] = w[2];
    k.sc[2] = w[3];
    return k;
  }
  __device__ __forceinline__ void ints_half(int h, float (&q)[16]) const {
    k45_ints<T>(qs[h], T == GgmlType::Q5_K ? qh[h] : uint4{}, static_cast<uint32_t>(c % 8), q);
  }
  __device__ __forceinline__ void scale_min(uint32_t& s, uint32_t& m) const {
    const int j = static_cast<int>(c % 8);
    // Selects, not a run-time index: an indexed array would live in local memory.
    auto byte = [&](int i) {
      const uint32_t w = i < 4 ? sc[0] : (i < 8 ? sc[1] : sc[2]);
      return (w >> (8 * (i % 4))) & 0xFFu;
    };
    if (j < 4) {
      s = byte(j) & 63;
      m = byte(j + 4) & 63;
    } else {
      s = (byte(j + 4) & 0x0F) | ((byte(j - 4) >> 6) << 4);
      m = (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4);
    }
  }
  // Q4_K: the chunk's 32 integers (0..15), four a word in element order.
  __device__ __forceinline__ void int_words(uint32_t (&q)[8]) const {
    const uint32_t shift = 4 * static_cast<uint32_t>(c % 2);
    const uint32_t words[8] = {qs[0].x, qs[0].y, qs[0].z, qs[0].w,
                               qs[1].x, qs[1].y, qs[1].z, qs[1].w};
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = (words[i] >> shift) & 0x0F0F0F0Fu;
  }
  __device__ __forceinline__ IntScales int_scales() const {
    uint32_t s, m;
    scale_min(s, m);
    IntScales f;
    f.d = half_bits(dd & 0xFFFFu);
    f.dmin = half_bits(dd >> 16);
    f.s0 = static_cast<int32_t>(s);
    f.s1 = static_cast<int32_t>(m);
    return f;
  }
  __device__ __forceinline__ ChunkScales scales() const {
    uint32_t s, m;
    scale_min(s, m);
    ChunkScales f;
    f.a0 = __fmul_rn(half_bits(dd & 0xFFFFu), small_uint_to_float(s));
    f.m = __fmul_rn(half_bits(dd >> 16), small_uint_to_float(m));
    return f;
  }
};

// Q6_K: blocks are only 2-byte aligned, so the chunk's 32 bytes of low bits and 32 of high
// bits are each read as 9 aligned words from the 4-byte boundary below and shifted into place.
template <>
struct Chunk<GgmlType::Q6_K> {
  static constexpr GgmlType T = GgmlType::Q6_K;
  const uint8_t* row = nullptr;
  int64_t c = 0;
  uint32_t ql[9], qh[9];
  uint32_t ql_shift = 0, qh_shift = 0;  // bits to drop: 8 × the bytes below the boundary
  uint32_t sc = 0, d = 0;               // the two int8 scales; d (fp16)

  __device__ __forceinline__ static void words(const uint8_t* p, uint32_t (&w)[9],
                                               uint32_t& shift) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
    shift = 8 * static_cast<uint32_t>(a & 3);
#pragma unroll
    for (int i = 0; i < 9; ++i) w[i] = base[i];
  }
  __device__ __forceinline__ static Chunk at(const uint8_t* row, int64_t c) {
    Chunk k;
    k.row = row;
    k.c = c;
    const uint8_t* b = row + (c / 8) * Block<T>::bytes;
    const uint32_t sub = static_cast<uint32_t>(c % 8), half = sub / 4, g = sub % 4;
    words(b + 64 * half + 32 * (g % 2), k.ql, k.ql_shift);
    words(b + 128 + 32 * half, k.qh, k.qh_shift);
    k.sc = u16_at(b + 192 + 2 * sub);
    k.d = u16_at(b + 208);
    return k;
  }
  __device__ __forceinline__ void ints_half(int h, float (&q)[16]) const {
    const uint32_t g = static_cast<uint32_t>(c % 8) % 4, shift = g < 2 ? 0 : 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int w = 4 * h + i;
      q6k_floats(__funnelshift_r(ql[w], ql[w + 1], ql_shift),
                 __funnelshift_r(qh[w], qh[w + 1], qh_shift), shift, g, q + 4 * i);
    }
  }
  // The chunk's 32 integers (−32..31) as signed bytes, four a word in element order.
  __device__ __forceinline__ void int_words(uint32_t (&q)[8]) const {
    const uint32_t g = static_cast<uint32_t>(c % 8) % 4, shift = g < 2 ? 0 : 4;
#pragma unroll
    for (int w = 0; w < 8; ++w) {
      const uint32_t low = __funnelshift_r(ql[w], ql[w + 1], ql_shift);
      const uint32_t high = __funnelshift_r(qh[w], qh[w + 1], qh_shift);
      const uint32_t u = ((low >> shift) & 0x0F0F0F0Fu) | (((high >> (2 * g)) & 0x03030303u) << 4);
      q[w] = __vsub4(u, 0x20202020u);  // bytewise u − 32, no borrows (u < 64)
    }
  }
  __device__ __forceinline__ IntScales int_scales() const {
    IntScales f;
    f.d = half_bits(d);
    f.s0 = static_cast<int8_t>(sc & 0xFFu);
    f.s1 = static_cast<int8_t>(sc >> 8);
    return f;
  }
  __device__ __forceinline__ ChunkScales scales() const {
    ChunkScales f;
    const float dv = half_bits(d);
    f.a0 = __fmul_rn(dv, small_int_to_float(static_cast<int8_t>(sc & 0xFFu)));
    f.a1 = __fmul_rn(dv, small_int_to_float(static_cast<int8_t>(sc >> 8)));
    return f;
  }
};

// Σ w·x over the chunk from its factors and the integer sums: s0 over the first half (or the
// whole chunk when the halves share a scale), s1 over the second half (Q6_K), sx = Σ x.
template <GgmlType T>
__device__ __forceinline__ float combine_chunk(const ChunkScales& f, float s0, float s1, float sx) {
  if constexpr (kHasMin<T>) return __fsub_rn(__fmul_rn(f.a0, s0), __fmul_rn(f.m, sx));
  else if constexpr (kHalfScales<T>) return __fadd_rn(__fmul_rn(f.a0, s0), __fmul_rn(f.a1, s1));
  else return __fmul_rn(f.a0, s0);
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
