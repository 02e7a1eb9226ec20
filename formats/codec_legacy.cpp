// The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//
// Every block holds 32 weights. In the 4- and 5-bit types byte j of qs holds weight j in its low
// nibble and weight j + 16 in its high nibble; the 5-bit types keep the fifth bit of weight j in
// bit j of a little-endian u32 qh. "_0" types are symmetric (w = d * (q - offset)); "_1" types
// add a per-block minimum (w = d * q + m).
//
// Dequantization does ggml's arithmetic in ggml's order: int q -> float, times d, plus m.
// Quantization rounds to nearest against the scale as stored (fp16), not the unrounded one.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "formats/codec_internal.h"

namespace lockstep::formats::codec_detail {
namespace {

constexpr int kQk = 32;

// The value of largest magnitude, with its sign (ties keep the first).
float signed_absmax(const float* x) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kQk; ++j) {
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void min_max(const float* x, float& lo, float& hi) {
  lo = x[0];
  hi = x[0];
  for (int j = 1; j < kQk; ++j) {
    lo = std::min(lo, x[j]);
    hi = std::max(hi, x[j]);
  }
}

uint32_t load_u32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Q8_0, 34 bytes: d (f16) @0, qs[32] (int8) @2.  w = qs[j] * d.
constexpr size_t kQ8_0Bytes = 34;

void dequantize_q8_0(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ8_0Bytes, dst += kQk) {
    const float d = load_fp16(src);
    for (int j = 0; j < kQk; ++j) dst[j] = static_cast<float>(static_cast<int8_t>(src[2 + j])) * d;
  }
}

void quantize_q8_0(const float* src, std::byte* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQk, dst += kQ8_0Bytes) {
    float amax = 0.0f;
    for (int j = 0; j < kQk; ++j) amax = std::max(amax, std::fabs(src[j]));
    const float d = store_scale(dst, amax / 127.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQk; ++j) {
      const int q = std::clamp(round_nearest(src[j] * id), -127, 127);
      dst[2 + j] = static_cast<std::byte>(static_cast<int8_t>(q));
    }
  }
}

// Q4_0, 18 bytes: d (f16) @0, qs[16] @2.  w = (q - 8) * d, q in [0, 15].
constexpr size_t kQ4_0Bytes = 18;

void dequantize_q4_0(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ4_0Bytes, dst += kQk) {
    const float d = load_fp16(src);
    const std::byte* qs = src + 2;
    for (int j = 0; j < kQk / 2; ++j) {
      const int lo = (byte_at(qs, j) & 0x0F) - 8;
      const int hi = (byte_at(qs, j) >> 4) - 8;
      dst[j] = static_cast<float>(lo) * d;
      dst[j + kQk / 2] = static_cast<float>(hi) * d;
    }
  }
}

// The symmetric types map the value of largest magnitude to the most negative level (-8 or
// -16), which has no positive twin, so the extreme keeps the finest step.
void quantize_q4_0(const float* src, std::byte* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQk, dst += kQ4_0Bytes) {
    const float d = store_scale(dst, signed_absmax(src) / -8.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQk / 2; ++j) {
      const int lo = std::clamp(round_nearest(src[j] * id) + 8, 0, 15);
      const int hi = std::clamp(round_nearest(src[j + kQk / 2] * id) + 8, 0, 15);
      dst[2 + j] = static_cast<std::byte>(lo | (hi << 4));
    }
  }
}

// Q4_1, 20 bytes: d (f16) @0, m (f16) @2, qs[16] @4.  w = q * d + m, q in [0, 15].
constexpr size_t kQ4_1Bytes = 20;

void dequantize_q4_1(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ4_1Bytes, dst += kQk) {
    const float d = load_fp16(src);
    const float m = load_fp16(src + 2);
    const std::byte* qs = src + 4;
    for (int j = 0; j < kQk / 2; ++j) {
      // Product and sum as two statements so that no compiler fuses them into an FMA.
      const float lo = static_cast<float>(byte_at(qs, j) & 0x0F) * d;
      const float hi = static_cast<float>(byte_at(qs, j) >> 4) * d;
      dst[j] = lo + m;
      dst[j + kQk / 2] = hi + m;
    }
  }
}

void quantize_q4_1(const float* src, std::byte* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQk, dst += kQ4_1Bytes) {
    float lo, hi;
    min_max(src, lo, hi);
    const float d = store_scale(dst, (hi - lo) / 15.0f);
    const float m = store_scale(dst + 2, lo);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQk / 2; ++j) {
      const int q0 = std::clamp(round_nearest((src[j] - m) * id), 0, 15);
      const int q1 = std::clamp(round_nearest((src[j + kQk / 2] - m) * id), 0, 15);
      dst[4 + j] = static_cast<std::byte>(q0 | (q1 << 4));
    }
  }
}

// Q5_0, 22 bytes: d (f16) @0, qh (u32) @2, qs[16] @6.  w = (q - 16) * d, q in [0, 31], the
// fifth bit of weight j in qh bit j.
constexpr size_t kQ5_0Bytes = 22;

void dequantize_q5_0(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ5_0Bytes, dst += kQk) {
    const float d = load_fp16(src);
    const uint32_t qh = load_u32(src + 2);
    const std::byte* qs = src + 6;
    for (int j = 0; j < kQk / 2; ++j) {
      const int lo = ((byte_at(qs, j) & 0x0F) | (((qh >> j) & 1u) << 4)) - 16;
      const int hi = ((byte_at(qs, j) >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16;
      dst[j] = static_cast<float>(lo) * d;
      dst[j + kQk / 2] = static_cast<float>(hi) * d;
    }
  }
}

void quantize_q5_0(const float* src, std::byte* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQk, dst += kQ5_0Bytes) {
    const float d = store_scale(dst, signed_absmax(src) / -16.0f);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    for (int j = 0; j < kQk / 2; ++j) {
      const int lo = std::clamp(round_nearest(src[j] * id) + 16, 0, 31);
      const int hi = std::clamp(round_nearest(src[j + kQk / 2] * id) + 16, 0, 31);
      dst[6 + j] = static_cast<std::byte>((lo & 0x0F) | ((hi & 0x0F) << 4));
      qh |= uint32_t(lo >> 4) << j;
      qh |= uint32_t(hi >> 4) << (j + 16);
    }
    std::memcpy(dst + 2, &qh, sizeof qh);
  }
}

// Q5_1, 24 bytes: d (f16) @0, m (f16) @2, qh (u32) @4, qs[16] @8.  w = q * d + m.
constexpr size_t kQ5_1Bytes = 24;

void dequantize_q5_1(const std::byte* src, float* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQ5_1Bytes, dst += kQk) {
    const float d = load_fp16(src);
    const float m = load_fp16(src + 2);
    const uint32_t qh = load_u32(src + 4);
    const std::byte* qs = src + 8;
    for (int j = 0; j < kQk / 2; ++j) {
      const int q0 = (byte_at(qs, j) & 0x0F) | (((qh >> j) & 1u) << 4);
      const int q1 = (byte_at(qs, j) >> 4) | (((qh >> (j + 16)) & 1u) << 4);
      const float lo = static_cast<float>(q0) * d;
      const float hi = static_cast<float>(q1) * d;
      dst[j] = lo + m;
      dst[j + kQk / 2] = hi + m;
    }
  }
}

void quantize_q5_1(const float* src, std::byte* dst, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b, src += kQk, dst += kQ5_1Bytes) {
    float lo, hi;
    min_max(src, lo, hi);
    const float d = store_scale(dst, (hi - lo) / 31.0f);
    const float m = store_scale(dst + 2, lo);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    uint32_t qh = 0;
    for (int j = 0; j < kQk / 2; ++j) {
      const int q0 = std::clamp(round_nearest((src[j] - m) * id), 0, 31);
      const int q1 = std::clamp(round_nearest((src[j + kQk / 2] - m) * id), 0, 31);
      dst[8 + j] = static_cast<std::byte>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= uint32_t(q0 >> 4) << j;
      qh |= uint32_t(q1 >> 4) << (j + 16);
    }
    std::memcpy(dst + 4, &qh, sizeof qh);
  }
}

constexpr std::array<GgmlCodec, 5> kLegacyCodecs{{
    {GgmlType::Q4_0, dequantize_q4_0, quantize_q4_0},
    {GgmlType::Q4_1, dequantize_q4_1, quantize_q4_1},
    {GgmlType::Q5_0, dequantize_q5_0, quantize_q5_0},
    {GgmlType::Q5_1, dequantize_q5_1, quantize_q5_1},
    {GgmlType::Q8_0, dequantize_q8_0, quantize_q8_0},
}};

}  // namespace

std::span<const GgmlCodec> legacy_codecs() {
  return kLegacyCodecs;
}

}  // namespace lockstep::formats::codec_detail
