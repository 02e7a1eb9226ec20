// The K-quants: super-blocks of 256 weights split into sub-blocks that each carry a small
// integer scale (and, for Q2_K/Q4_K/Q5_K, a min), themselves scaled by fp16 super-scales.
//
//   Q2_K  84 bytes  16 x 16 weights, 2-bit q, 4-bit scale and min   w = (d*sc)*q - (dmin*mn)
//   Q3_K 110 bytes  16 x 16 weights, 3-bit q, 6-bit signed scale    w = (d*(sc-32)) * (q-4)
//   Q4_K 144 bytes   8 x 32 weights, 4-bit q, 6-bit scale and min   w = (d*sc)*q - (dmin*mn)
//   Q5_K 176 bytes   8 x 32 weights, 5-bit q, 6-bit scale and min   w = (d*sc)*q - (dmin*mn)
//   Q6_K 210 bytes  16 x 16 weights, 6-bit q, 8-bit signed scale    w = (d*sc) * (q-32)
//
// Dequantization forms the products in ggml's order (the sub-block factors first, then one
// multiply and one subtraction per weight), in separate statements so no compiler fuses them
// into an FMA, which would change the last bit.
//
// Quantization: each sub-block gets a least-squares scale (and min) from a small search over
// grids slightly finer and coarser than the plain max/nmax one; the sub-block factors are then
// rounded to their stored integer form, and every weight is re-rounded against the factors as
// the decoder will see them.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "formats/codec_internal.h"

namespace lockstep::formats::codec_detail {
namespace {

constexpr int kQkK = 256;

// ---- Bit layouts shared by several types.

// 2-bit planes (Q2_K qs, Q3_K low bits): 64 bytes; weight e lives in byte 32*(e/128) + e%32 at
// bits 2*((e%128)/32).
inline int get_2bit(const std::byte* qs, int e) {
  return (byte_at(qs, 32 * (e / 128) + e % 32) >> (2 * ((e % 128) / 32))) & 3;
}
void put_2bit(const uint8_t* levels, std::byte* qs) {  // levels[256] in 0..3
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t* q = levels + 128 * half + l;
      qs[32 * half + l] = static_cast<std::byte>(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
    }
  }
}

// 8 scales and 8 mins of 6 bits in 12 bytes (Q4_K, Q5_K):
//   bytes 0-3   scale j (j < 4) in bits 0-5, bits 4-5 of scale j+4 in bits 6-7
//   bytes 4-7   min j (j < 4) in bits 0-5, bits 4-5 of min j+4 in bits 6-7
//   bytes 8-11  low 4 bits of scale j+4 in bits 0-3, low 4 bits of min j+4 in bits 4-7
void unpack_scale_min_6bit(const std::byte* p, uint8_t* scale, uint8_t* min) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = byte_at(p, j) & 63;
    min[j] = byte_at(p, j + 4) & 63;
    scale[j + 4] = (byte_at(p, j + 8) & 0x0F) | ((byte_at(p, j) >> 6) << 4);
    min[j + 4] = (byte_at(p, j + 8) >> 4) | ((byte_at(p, j + 4) >> 6) << 4);
  }
}
void pack_scale_min_6bit(const uint8_t* scale, const uint8_t* min, std::byte* p) {
  for (int j = 0; j < 4; ++j) {
    p[j] = static_cast<std::byte>(scale[j] | ((scale[j + 4] >> 4) << 6));
    p[j + 4] = static_cast<std::byte>(min[j] | ((min[j + 4] >> 4) << 6));
    p[j + 8] = static_cast<std::byte>((scale[j + 4] & 0x0F) | ((min[j + 4] & 0x0F) << 4));
  }
}

// 16 signed scales of 6 bits, stored biased by 32, in 12 bytes (Q3_K):
//   bytes 0-7   low 4 bits of scale j in the low nibble of byte j, of scale j+8 in the high one
//   bytes 8-11  bits 4-5 of scale j in byte 8 + j%4, at bits 2*(j/4)
void unpack_scales_q3(const std::byte* p, int* scale) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? byte_at(p, j) & 0x0F : byte_at(p, j - 8) >> 4;
    const int high = (byte_at(p, 8 + j % 4) >> (2 * (j / 4))) & 3;
    scale[j] = (low | (high << 4)) - 32;
  }
}
void pack_scales_q3(const int* scale, std::byte* p) {  // scale[16] in -32..31
  uint8_t bytes[12] = {};
  for (int j = 0; j < 16; ++j) {
    const int biased = scale[j] + 32;
    bytes[j % 8] |= static_cast<uint8_t>((biased & 0x0F) << (j < 8 ? 0 : 4));
    bytes[8 + j % 4] |= static_cast<uint8_t>((biased >> 4) << (2 * (j / 4)));
  }
  std::memcpy(p, bytes, sizeof bytes);
}

// ---- Fitting one sub-block.

// A family of quantization grids: step = extreme / (nmax + first + k * delta), k < count.
struct GridSearch {
  float first;
  float delta;
  int count;
};

// x[i] ~ scale * l[i] - min with l in [0, nmax] and min >= 0 (the stored min is subtracted).
struct AffineFit {
  float scale;
  float min;
};

// Tries each grid anchored at min(x, 0), refits scale and offset to its rounding by least
// squares (offset kept <= 0), and keeps the pair with the least squared error.
AffineFit fit_affine(const float* x, int n, int nmax, GridSearch grid) {
  float lo = x[0], hi = x[0], sum_x = 0.0f, sum_x2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_x += x[i];
    sum_x2 += x[i] * x[i];
  }
  lo = std::min(lo, 0.0f);
  if (hi <= lo) return {0.0f, -lo};  // all weights equal and <= 0

  AffineFit best{(hi - lo) / static_cast<float>(nmax), -lo};
  double best_error = INFINITY;
  for (int k = 0; k < grid.count; ++k) {
    const float iscale = (static_cast<float>(nmax) + grid.first + grid.delta * k) / (hi - lo);
    int sum_l = 0, sum_l2 = 0;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(round_nearest((x[i] - lo) * iscale), 0, nmax);
      sum_l += l;
      sum_l2 += l * l;
      sum_xl += x[i] * static_cast<float>(l);
    }
    if (sum_l2 == 0) continue;
    // Normal equations of x ~ a*l + b.
    const double det = double(n) * sum_l2 - double(sum_l) * sum_l;
    double a = 0.0, b = 0.0;
    if (det > 0.0) {
      a = (double(n) * sum_xl - double(sum_x) * sum_l) / det;
      b = (double(sum_l2) * sum_x - double(sum_l) * sum_xl) / det;
    }
    if (det <= 0.0 || b > 0.0) {
      a = double(sum_xl) / sum_l2;
      b = 0.0;
    }
    const double error = sum_x2 - 2.0 * a * sum_xl - 2.0 * b * sum_x + a * a * sum_l2 +
                         2.0 * a * b * sum_l + double(n) * b * b;
    if (error < best_error) {
      best_error = error;
      best = {static_cast<float>(a), static_cast<float>(-b)};
    }
  }
  return best;
}

// x[i] ~ scale * l[i] with l in [-(nmax+1), nmax]. The weight of largest magnitude goes to the
// lone negative level -(nmax+1) (the scale takes its sign), so it gets the finest step. Each
// grid's rounding gets its least-squares scale; the best explained energy sum_xl^2 / sum_l2
// wins.
float fit_symmetric(const float* x, int n, int nmax, GridSearch grid) {
  float amax = 0.0f, extreme = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      extreme = x[i];
    }
  }
  if (amax == 0.0f) return 0.0f;
  float best_scale = extreme / static_cast<float>(-(nmax + 1));
  float best_energy = -1.0f;
  for (int k = 0; k < grid.count; ++k) {
    const float iscale = -(static_cast<float>(nmax + 1) + grid.first + grid.delta * k) / extreme;
    int sum_l2 = 0;
    float sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(round_nearest(x[i] * iscale), -(nmax + 1), nmax);
      sum_l2 += l * l;
      sum_xl += x[i] * static_cast<float>(l);
    }
    if (sum_l2 == 0) continue;
    const float energy = sum_xl * sum_xl / static_cast<float>(sum_l2);
    if (energy > best_energy) {
      best_energy = energy;
      best_scale = sum_xl / static_cast<float>(sum_l2);
    }
  }
  return best_scale;
}

// The largest value of v[0..n), or of |v| with its sign when `signed_extreme`.
float extreme_of(const float* v, int n, bool signed_extreme) {
  float best = 0.0f, amax = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float a = signed_extreme ? std::fabs(v[i]) : v[i];
    if (a > amax) {
      amax = a;
      best = v[i];
    }
  }
  return best;
}

// Sub-block factors (scales or mins, all >= 0) as integers in [0, qmax] under one fp16
// super-scale stored at `at`. Returns the decoded super-scale.
float quantize_factors(const float* factor, int n, int qmax, std::byte* at, uint8_t* q) {
  const float d = store_scale(at, extreme_of(factor, n, false) / static_cast<float>(qmax));
  const float id = d > 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < n; ++j)
    q[j] = static_cast<uint8_t>(std::clamp(round_nearest(factor[j] * id), 0, qmax));
  return d;
}

// Re-rounds sub-block weights against the factors as decoded: l = round((x + m) / d).
void requantize_affine(const float* x, int n, float d, float m, int nmax, uint8_t* levels) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < n; ++i)
    levels[i] = static_cast<uint8_t>(std::clamp(round_nearest((x[i] + m) * id), 0, nmax));
}
// Same for the symmetric types; levels are stored biased by nmax + 1.
void requantize_symmetric(const float* x, int n, float d, int nmax, uint8_t* levels) {
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(round_nearest(x[i] * id), -(nmax + 1), nmax);
    levels[i] = static_cast<uint8_t>(l + nmax + 1);
  }
}

// The common part of Q2_K, Q4_K and Q5_K: fits every sub-block, stores d and dmin at
// `d_at`/`d_at + 2`, and fills levels[256] (in 0..nmax) against the decoded factors.
template <int kSub, int kNmax, int kFactorMax>
void quantize_affine_superblock(const float* x, GridSearch grid, std::byte* d_at, uint8_t* scale_q,
                                uint8_t* min_q, uint8_t* levels) {
  constexpr int kSubBlocks = kQkK / kSub;
  std::array<float, kSubBlocks> scale, min;
  for (int j = 0; j < kSubBlocks; ++j) {
    const AffineFit fit = fit_affine(x + kSub * j, kSub, kNmax, grid);
    scale[j] = fit.scale;
    min[j] = fit.min;
  }
  const float d = quantize_factors(scale.data(), kSubBlocks, kFactorMax, d_at, scale_q);
  const float dmin = quantize_factors(min.data(), kSubBlocks, kFactorMax, d_at + 2, min_q);
  for (int j = 0; j < kSubBlocks; ++j) {
    // The same products the decoder forms.
    const float d1 = d * static_cast<float>(scale_q[j]);
    const float m1 = dmin * static_cast<float>(min_q[j]);
    requantize_affine(x + kSub * j, kSub, d1, m1, kNmax, levels + kSub * j);
  }
}

// ---- Q2_K, 84 bytes: scales[16] @0 (sub-block j: scale in bits 0-3, min in bits 4-7),
// qs[64] @16 (2-bit plane), d (f16) @80, dmin (f16) @82. Sub-block of weight e: e/16.
constexpr size_t kQ2KBytes = 84;

void dequantize_q2_k(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ2KBytes, dst += kQkK) {
    const float d = load_fp16(src + 80);
    const float dmin = load_fp16(src + 82);
    const std::byte* qs = src + 16;
    for (int j = 0; j < 16; ++j) {
      const uint8_t sc = byte_at(src, j);
      const float d1 = d * static_cast<float>(sc & 0x0F);
      const float m1 = dmin * static_cast<float>(sc >> 4);
      for (int e = 16 * j; e < 16 * j + 16; ++e) {
        const float scaled = d1 * static_cast<float>(get_2bit(qs, e));
        dst[e] = scaled - m1;
      }
    }
  }
}

void quantize_q2_k(const float* src, std::byte* dst, size_t blocks) {
  constexpr GridSearch kGrid{-0.5f, 0.1f, 16};
  for (size_t b = 0; b < blocks; ++b, src += kQkK, dst += kQ2KBytes) {
    uint8_t scale_q[16], min_q[16], levels[kQkK];
    quantize_affine_superblock<16, 3, 15>(src, kGrid, dst + 80, scale_q, min_q, levels);
    for (int j = 0; j < 16; ++j) dst[j] = static_cast<std::byte>(scale_q[j] | (min_q[j] << 4));
    put_2bit(levels, dst + 16);
  }
}

// ---- Q3_K, 110 bytes: hmask[32] @0, qs[64] @32 (2-bit plane), scales[12] @96 (6-bit signed),
// d (f16) @108. Weight e: low bits from the plane, high bit in hmask[e%32] bit e/32; the stored
// 3-bit value u gives q = u - 4 (ggml: low bits minus 4 when the high bit is clear).
constexpr size_t kQ3KBytes = 110;

void dequantize_q3_k(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ3KBytes, dst += kQkK) {
    const float d = load_fp16(src + 108);
    const std::byte* hmask = src;
    const std::byte* qs = src + 32;
    int scale[16];
    unpack_scales_q3(src + 96, scale);
    for (int j = 0; j < 16; ++j) {
      const float d1 = d * static_cast<float>(scale[j]);
      for (int e = 16 * j; e < 16 * j + 16; ++e) {
        const bool high = (byte_at(hmask, e % 32) >> (e / 32)) & 1;
        const int q = get_2bit(qs, e) - (high ? 0 : 4);
        dst[e] = d1 * static_cast<float>(q);
      }
    }
  }
}

void quantize_q3_k(const float* src, std::byte* dst, size_t blocks) {
  constexpr GridSearch kGrid{-1.0f, 0.25f, 9};
  for (size_t b = 0; b < blocks; ++b, src += kQkK, dst += kQ3KBytes) {
    float scale[16];
    for (int j = 0; j < 16; ++j) scale[j] = fit_symmetric(src + 16 * j, 16, 3, kGrid);
    // Like the weights, the scale of largest magnitude maps to -32.
    const float d = store_scale(dst + 108, extreme_of(scale, 16, true) / -32.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    int scale_q[16];
    uint8_t levels[kQkK];
    for (int j = 0; j < 16; ++j) {
      scale_q[j] = std::clamp(round_nearest(scale[j] * id), -32, 31);
      requantize_symmetric(src + 16 * j, 16, d * static_cast<float>(scale_q[j]), 3,
                           levels + 16 * j);
    }
    pack_scales_q3(scale_q, dst + 96);
    uint8_t low[kQkK];
    uint8_t hmask[32] = {};
    for (int e = 0; e < kQkK; ++e) {
      low[e] = levels[e] & 3;
      hmask[e % 32] |= static_cast<uint8_t>((levels[e] >> 2) << (e / 32));
    }
    std::memcpy(dst, hmask, sizeof hmask);
    put_2bit(low, dst + 32);
  }
}

// ---- Q4_K, 144 bytes: d (f16) @0, dmin (f16) @2, scales[12] @4 (6-bit scale/min pairs),
// qs[128] @16. Weight e: chunk c = e/64 uses qs[32c .. 32c+32), low nibbles for e%64 < 32, high
// nibbles for the rest; sub-block e/32.
constexpr size_t kQ4KBytes = 144;

void dequantize_q4_k(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ4KBytes, dst += kQkK) {
    const float d = load_fp16(src);
    const float dmin = load_fp16(src + 2);
    uint8_t scale[8], min[8];
    unpack_scale_min_6bit(src + 4, scale, min);
    const std::byte* qs = src + 16;
    for (int c = 0; c < 4; ++c) {
      const float d1 = d * static_cast<float>(scale[2 * c]);
      const float m1 = dmin * static_cast<float>(min[2 * c]);
      const float d2 = d * static_cast<float>(scale[2 * c + 1]);
      const float m2 = dmin * static_cast<float>(min[2 * c + 1]);
      float* y = dst + 64 * c;
      for (int l = 0; l < 32; ++l) {
        const float lo = d1 * static_cast<float>(byte_at(qs, 32 * c + l) & 0x0F);
        const float hi = d2 * static_cast<float>(byte_at(qs, 32 * c + l) >> 4);
        y[l] = lo - m1;
        y[l + 32] = hi - m2;
      }
    }
  }
}

void quantize_q4_k(const float* src, std::byte* dst, size_t blocks) {
  constexpr GridSearch kGrid{-1.0f, 0.125f, 17};
  for (size_t b = 0; b < blocks; ++b, src += kQkK, dst += kQ4KBytes) {
    uint8_t scale_q[8], min_q[8], levels[kQkK];
    quantize_affine_superblock<32, 15, 63>(src, kGrid, dst, scale_q, min_q, levels);
    pack_scale_min_6bit(scale_q, min_q, dst + 4);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* q = levels + 64 * c + l;
        dst[16 + 32 * c + l] = static_cast<std::byte>(q[0] | (q[32] << 4));
      }
    }
  }
}

// ---- Q5_K, 176 bytes: d (f16) @0, dmin (f16) @2, scales[12] @4, qh[32] @16, qs[128] @48.
// Low 4 bits as in Q4_K; the fifth bit of weight e in qh[e%32] bit e/32.
constexpr size_t kQ5KBytes = 176;

void dequantize_q5_k(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ5KBytes, dst += kQkK) {
    const float d = load_fp16(src);
    const float dmin = load_fp16(src + 2);
    uint8_t scale[8], min[8];
    unpack_scale_min_6bit(src + 4, scale, min);
    const std::byte* qh = src + 16;
    const std::byte* qs = src + 48;
    for (int c = 0; c < 4; ++c) {
      const float d1 = d * static_cast<float>(scale[2 * c]);
      const float m1 = dmin * static_cast<float>(min[2 * c]);
      const float d2 = d * static_cast<float>(scale[2 * c + 1]);
      const float m2 = dmin * static_cast<float>(min[2 * c + 1]);
      float* y = dst + 64 * c;
      for (int l = 0; l < 32; ++l) {
        const int q_lo =
            (byte_at(qs, 32 * c + l) & 0x0F) | (((byte_at(qh, l) >> (2 * c)) & 1) << 4);
        const int q_hi =
            (byte_at(qs, 32 * c + l) >> 4) | (((byte_at(qh, l) >> (2 * c + 1)) & 1) << 4);
        const float lo = d1 * static_cast<float>(q_lo);
        const float hi = d2 * static_cast<float>(q_hi);
        y[l] = lo - m1;
        y[l + 32] = hi - m2;
      }
    }
  }
}

void quantize_q5_k(const float* src, std::byte* dst, size_t blocks) {
  constexpr GridSearch kGrid{-2.0f, 0.25f, 17};
  for (size_t b = 0; b < blocks; ++b, src += kQkK, dst += kQ5KBytes) {
    uint8_t scale_q[8], min_q[8], levels[kQkK];
    quantize_affine_superblock<32, 31, 63>(src, kGrid, dst, scale_q, min_q, levels);
    pack_scale_min_6bit(scale_q, min_q, dst + 4);
    uint8_t qh[32] = {};
    for (int e = 0; e < kQkK; ++e) qh[e % 32] |= static_cast<uint8_t>((levels[e] >> 4) << (e / 32));
    std::memcpy(dst + 16, qh, sizeof qh);
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t* q = levels + 64 * c + l;
        dst[48 + 32 * c + l] = static_cast<std::byte>((q[0] & 0x0F) | ((q[32] & 0x0F) << 4));
      }
    }
  }
}

// ---- Q6_K, 210 bytes: ql[128] @0, qh[64] @128, scales[16] (int8) @192, d (f16) @208.
// Weight e: half h = e/128, group g = (e%128)/32, l = e%32. Low 4 bits in ql[64h + 32*(g%2) + l]
// (low nibble for g < 2, high nibble otherwise), bits 4-5 in qh[32h + l] at bits 2g; the stored
// 6-bit value u gives q = u - 32. Sub-block e/16.
constexpr size_t kQ6KBytes = 210;

void dequantize_q6_k(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ6KBytes, dst += kQkK) {
    const float d = load_fp16(src + 208);
    for (int half = 0; half < 2; ++half) {
      const std::byte* ql = src + 64 * half;
      const std::byte* qh = src + 128 + 32 * half;
      for (int g = 0; g < 4; ++g) {
        const int shift = g < 2 ? 0 : 4;
        for (int s = 0; s < 2; ++s) {
          const int sub = 8 * half + 2 * g + s;
          const float d1 = d * static_cast<float>(static_cast<int8_t>(src[192 + sub]));
          for (int l = 16 * s; l < 16 * s + 16; ++l) {
            const int u = ((byte_at(ql, 32 * (g % 2) + l) >> shift) & 0x0F) |
                          (((byte_at(qh, l) >> (2 * g)) & 3) << 4);
            dst[128 * half + 32 * g + l] = d1 * static_cast<float>(u - 32);
          }
        }
      }
    }
  }
}

void quantize_q6_k(const float* src, std::byte* dst, size_t blocks) {
  constexpr GridSearch kGrid{-4.0f, 0.5f, 17};
  for (size_t b = 0; b < blocks; ++b, src += kQkK, dst += kQ6KBytes) {
    float scale[16];
    for (int j = 0; j < 16; ++j) scale[j] = fit_symmetric(src + 16 * j, 16, 31, kGrid);
    const float d = store_scale(dst + 208, extreme_of(scale, 16, true) / -128.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint8_t levels[kQkK];
    for (int j = 0; j < 16; ++j) {
      const int q = std::clamp(round_nearest(scale[j] * id), -128, 127);
      dst[192 + j] = static_cast<std::byte>(static_cast<int8_t>(q));
      requantize_symmetric(src + 16 * j, 16, d * static_cast<float>(q), 31, levels + 16 * j);
    }
    uint8_t ql[128] = {}, qh[64] = {};
    for (int e = 0; e < kQkK; ++e) {
      const int half = e / 128, g = (e % 128) / 32, l = e % 32;
      ql[64 * half + 32 * (g % 2) + l] |=
          static_cast<uint8_t>((levels[e] & 0x0F) << (g < 2 ? 0 : 4));
      qh[32 * half + l] |= static_cast<uint8_t>((levels[e] >> 4) << (2 * g));
    }
    std::memcpy(dst, ql, sizeof ql);
    std::memcpy(dst + 128, qh, sizeof qh);
  }
}

constexpr std::array<GgmlCodec, 5> kKQuantCodecs{{
    {GgmlType::Q2_K, dequantize_q2_k, quantize_q2_k},
    {GgmlType::Q3_K, dequantize_q3_k, quantize_q3_k},
    {GgmlType::Q4_K, dequantize_q4_k, quantize_q4_k},
    {GgmlType::Q5_K, dequantize_q5_k, quantize_q5_k},
    {GgmlType::Q6_K, dequantize_q6_k, quantize_q6_k},
}};

}  // namespace

std::span<const GgmlCodec> kquant_codecs() {
  return kKQuantCodecs;
}

}  // namespace lockstep::formats::codec_detail
