#pragma once
// Shared by the codec sources only (codec_float.cpp, codec_legacy.cpp, codec_kquants.cpp,
// ggml_codec.cpp): the per-family codec tables and the block field helpers.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "formats/ggml_codec.h"

namespace lockstep::formats {

namespace codec_detail {

std::span<const GgmlCodec> float_codecs();
std::span<const GgmlCodec> legacy_codecs();
std::span<const GgmlCodec> kquant_codecs();

// Blocks store little-endian fields at byte offsets that need not be aligned.
inline float load_fp16(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return fp16_to_f32(h);
}
inline void store_fp16(std::byte* p, float f) {
  uint16_t h = f32_to_fp16(f);
  std::memcpy(p, &h, sizeof h);
}
inline uint8_t byte_at(const std::byte* p, size_t i) {
  return static_cast<uint8_t>(p[i]);
}

// Round to nearest, ties to even. Adding 1.5 * 2^23 leaves no fraction bits in the mantissa,
// so the FPU's own rounding does the work (faster than lrintf, no errno); the clamp keeps the
// trick valid (|v| < 2^22) and the int conversion defined for huge quotients.
inline int round_nearest(float v) {
  constexpr float kLimit = 4194303.0f;
  constexpr float kMagic = 12582912.0f;
  v = v < -kLimit ? -kLimit : (v > kLimit ? kLimit : v);
  return static_cast<int>((v + kMagic) - kMagic);
}

// A block scale as it will be stored: fp16, saturated to the largest finite half so that huge
// inputs clip instead of turning a block into Inf. Returns the decoded value.
inline float store_scale(std::byte* p, float scale) {
  constexpr float kMaxHalf = 65504.0f;
  if (scale > kMaxHalf) scale = kMaxHalf;
  if (scale < -kMaxHalf) scale = -kMaxHalf;
  store_fp16(p, scale);
  return load_fp16(p);
}

}  // namespace codec_detail

}  // namespace lockstep::formats
