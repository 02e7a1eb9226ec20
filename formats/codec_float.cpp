// The float types: F32 (stored as is), F16 (IEEE half) and BF16 (top half of an f32), and the
// scalar conversions every block codec uses for its fp16 scales.

#include <array>
#include <bit>
#include <cstring>

#include "formats/codec_internal.h"

namespace lockstep::formats {

float fp16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1F) {
    // Inf, or NaN with its payload moved up and the quiet bit set (as F16C and ggml do).
    const uint32_t quiet = mantissa != 0 ? 0x00400000u : 0u;
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13) | quiet);
  }
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in f32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign != 0 ? -magnitude : magnitude;
  }
  // Normal: rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

uint16_t f32_to_fp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return sign | 0x7E00u;  // NaN
  // 65520 is halfway between the largest half (65504) and 65536; ties go to even, i.e. Inf.
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;
  if (magnitude < 0x38800000u) {
    // Below 2^-14 the result is subnormal (or rounds up to the smallest normal, 0x0400).
    // Adding 0.5 puts the value in [0.5, 1), where one ulp is 2^-24, the half's subnormal step,
    // so the FPU rounds it to nearest even for us.
    const float shifted = std::bit_cast<float>(magnitude) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(shifted) - 0x3F000000u);
  }
  // Normal: round the 13 dropped mantissa bits to nearest even (a carry may bump the
  // exponent, which is right), then rebias the exponent from 127 to 15.
  magnitude += 0x0FFFu + ((magnitude >> 13) & 1u);
  magnitude -= 112u << 23;
  return sign | static_cast<uint16_t>(magnitude >> 13);
}

uint16_t f32_to_bf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

namespace codec_detail {
namespace {

// F32: 4 bytes per element, little-endian like the host.
void dequantize_f32(const std::byte* src, float* dst, size_t blocks) {
  std::memcpy(dst, src, blocks * sizeof(float));
}
void quantize_f32(const float* src, std::byte* dst, size_t blocks) {
  std::memcpy(dst, src, blocks * sizeof(float));
}

// F16: 2 bytes per element.
void dequantize_f16(const std::byte* src, float* dst, size_t blocks) {
  for (size_t i = 0; i < blocks; ++i) dst[i] = load_fp16(src + 2 * i);
}
void quantize_f16(const float* src, std::byte* dst, size_t blocks) {
  for (size_t i = 0; i < blocks; ++i) store_fp16(dst + 2 * i, src[i]);
}

// BF16: 2 bytes per element.
void dequantize_bf16(const std::byte* src, float* dst, size_t blocks) {
  for (size_t i = 0; i < blocks; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof h);
    dst[i] = bf16_to_f32(h);
  }
}
void quantize_bf16(const float* src, std::byte* dst, size_t blocks) {
  for (size_t i = 0; i < blocks; ++i) {
    const uint16_t h = f32_to_bf16(src[i]);
    std::memcpy(dst + 2 * i, &h, sizeof h);
  }
}

constexpr std::array<GgmlCodec, 3> kFloatCodecs{{
    {GgmlType::F32, dequantize_f32, quantize_f32},
    {GgmlType::F16, dequantize_f16, quantize_f16},
    {GgmlType::BF16, dequantize_bf16, quantize_bf16},
}};

}  // namespace

std::span<const GgmlCodec> float_codecs() {
  return kFloatCodecs;
}

}  // namespace codec_detail
}  // namespace lockstep::formats
