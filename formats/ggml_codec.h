#pragma once
// GGML block codecs: dequantize, quantize and dot products for the types marked has_codec in
// formats/ggml_type.h (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K).
//
// Dequantization reproduces ggml's to_float bit for bit: the same products in the same order
// (e.g. K-quants form d*scale and dmin*min first, then d1*q - m1), so a sha256 over our output
// equals one over ggml's. Quantization is our own (round to nearest, least-squares scales);
// it produces valid blocks that any GGML reader decodes, not byte-identical llama.cpp output.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "formats/ggml_type.h"

namespace lockstep::formats {

// IEEE half <-> float. fp16 -> f32 is exact (NaN payloads kept, quieted); f32 -> fp16 rounds to
// nearest even, overflows to ±Inf, keeps subnormals, and turns every NaN into ±0x7E00 as ggml's
// portable conversion does.
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
// bfloat16 is the top half of an f32: widening is a shift; narrowing rounds to nearest even and
// keeps NaN quiet (ggml's conversion; subnormals are kept, not flushed).
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
uint16_t f32_to_bf16(float f);

// Block loops of one type: `blocks` whole blocks, src and dst laid out back to back.
using DequantizeBlocksFn = void (*)(const std::byte* src, float* dst, size_t blocks);
using QuantizeBlocksFn = void (*)(const float* src, std::byte* dst, size_t blocks);

struct GgmlCodec {
  GgmlType type;
  DequantizeBlocksFn dequantize_blocks;  // blocks * block_bytes -> blocks * block_elems
  QuantizeBlocksFn quantize_blocks;      // input must be finite; quantize() checks that
};

// nullptr for a type without a codec.
const GgmlCodec* find_codec(GgmlType type);
inline bool has_codec(GgmlType type) {
  return find_codec(type) != nullptr;
}

// src must hold exactly ggml_bytes(type, dst.size()) bytes; dst.size() a multiple of the block
// size. Throws lockstep::Error for a type without codec or a size mismatch.
void dequantize(GgmlType type, std::span<const std::byte> src, std::span<float> dst);
// Same size rules; also throws when src holds NaN or Inf (no block format can keep them,
// except the float types, which store them as they are).
void quantize(GgmlType type, std::span<const float> src, std::span<std::byte> dst);

// One row of n = x.size() elements stored as `type`, dotted with an f32 vector.
// dot_row: the "simple engine" version: weights dequantized per block, products summed in f32
// within a block (32 elements for the float types), block sums added in f32.
float dot_row(GgmlType type, std::span<const std::byte> row, std::span<const float> x);
// The oracle: exactly the dequantized weights, products and sum in float64, in element order.
double dot_row_ref(GgmlType type, std::span<const std::byte> row, std::span<const float> x);

}  // namespace lockstep::formats
