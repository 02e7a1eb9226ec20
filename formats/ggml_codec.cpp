// Dispatch from a GgmlType to its block codec, size checks, and the two row dot products.

#include "formats/ggml_codec.h"

#include <algorithm>
#include <array>
#include <bit>
#include <string>

#include "formats/codec_internal.h"
#include "formats/error.h"

namespace lockstep::formats {
namespace {

// The widest block (256 weights); the float types are walked in chunks of this many too.
constexpr size_t kMaxBlockElems = 256;
// Elements summed in f32 before the running total takes them, for the float types (the
// quantized types use their block).
constexpr size_t kFloatChunk = 32;

std::string type_label(GgmlType type) {
  const GgmlTypeInfo* info = find_ggml_type(static_cast<uint32_t>(type));
  return info != nullptr ? std::string(info->name)
                         : "type id " + std::to_string(static_cast<uint32_t>(type));
}

const GgmlCodec& codec_or_throw(GgmlType type, const char* what) {
  const GgmlCodec* codec = find_codec(type);
  if (codec == nullptr)
    throw Error(std::string(what) + ": no codec for GGML type " + type_label(type));
  return *codec;
}

// Checks that `bytes` is exactly the storage of `elems` elements; returns the block count.
size_t check_sizes(GgmlType type, uint64_t elems, uint64_t bytes, const char* what) {
  const GgmlTypeInfo& info = ggml_type_info(type);
  if (elems % info.block_elems != 0)
    throw Error(std::string(what) + ": " + std::to_string(elems) + " elements of " +
                std::string(info.name) + " are not a whole number of " +
                std::to_string(info.block_elems) + "-element blocks");
  const std::optional<uint64_t> expected = ggml_bytes(type, elems);
  if (!expected || *expected != bytes)
    throw Error(std::string(what) + ": " + std::to_string(elems) + " elements of " +
                std::string(info.name) + " need " +
                (expected ? std::to_string(*expected) : std::string("too many")) +
                " bytes, the buffer has " + std::to_string(bytes));
  return elems / info.block_elems;
}

// Walks a row in chunks of whole blocks (at most kMaxBlockElems weights), dequantizing each
// into `weights` and handing (weights, x) of the chunk to `visit`.
template <typename Visit>
void for_each_chunk(GgmlType type, std::span<const std::byte> row, std::span<const float> x,
                    const char* what, Visit&& visit) {
  const GgmlCodec& codec = codec_or_throw(type, what);
  const size_t blocks = check_sizes(type, x.size(), row.size(), what);
  const GgmlTypeInfo& info = ggml_type_info(type);
  const size_t chunk_blocks = info.block_elems == 1 ? kFloatChunk : 1;
  std::array<float, kMaxBlockElems> weights;  // [chunk_blocks * block_elems]
  for (size_t b = 0; b < blocks; b += chunk_blocks) {
    const size_t n_blocks = std::min(chunk_blocks, blocks - b);
    const size_t n = n_blocks * info.block_elems;
    codec.dequantize_blocks(row.data() + b * info.block_bytes, weights.data(), n_blocks);
    visit(std::span<const float>(weights.data(), n), x.subspan(b * info.block_elems, n));
  }
}

}  // namespace

const GgmlCodec* find_codec(GgmlType type) {
  for (auto table : {codec_detail::float_codecs(), codec_detail::legacy_codecs(),
                     codec_detail::kquant_codecs()}) {
    for (const GgmlCodec& codec : table)
      if (codec.type == type) return &codec;
  }
  return nullptr;
}

void dequantize(GgmlType type, std::span<const std::byte> src, std::span<float> dst) {
  const GgmlCodec& codec = codec_or_throw(type, "dequantize");
  const size_t blocks = check_sizes(type, dst.size(), src.size(), "dequantize");
  if (blocks == 0) return;  // empty spans may carry null pointers; block loops memcpy them
  codec.dequantize_blocks(src.data(), dst.data(), blocks);
}

void quantize(GgmlType type, std::span<const float> src, std::span<std::byte> dst) {
  const GgmlCodec& codec = codec_or_throw(type, "quantize");
  const size_t blocks = check_sizes(type, src.size(), dst.size(), "quantize");
  const bool float_type = ggml_type_info(type).block_elems == 1;
  if (!float_type) {
    for (size_t i = 0; i < src.size(); ++i) {
      if ((std::bit_cast<uint32_t>(src[i]) & 0x7F800000u) == 0x7F800000u)
        throw Error("quantize: element " + std::to_string(i) + " is " + std::to_string(src[i]) +
                    "; " + type_label(type) + " blocks cannot hold NaN or Inf");
    }
  }
  if (blocks == 0) return;
  codec.quantize_blocks(src.data(), dst.data(), blocks);
}

float dot_row(GgmlType type, std::span<const std::byte> row, std::span<const float> x) {
  float total = 0.0f;
  for_each_chunk(type, row, x, "dot_row", [&](std::span<const float> w, std::span<const float> xs) {
    float sum = 0.0f;
    for (size_t i = 0; i < w.size(); ++i) sum += w[i] * xs[i];
    total += sum;
  });
  return total;
}

double dot_row_ref(GgmlType type, std::span<const std::byte> row, std::span<const float> x) {
  double total = 0.0;
  for_each_chunk(type, row, x, "dot_row_ref",
                 [&](std::span<const float> w, std::span<const float> xs) {
                   for (size_t i = 0; i < w.size(); ++i)
                     total += static_cast<double>(w[i]) * static_cast<double>(xs[i]);
                 });
  return total;
}

}  // namespace lockstep::formats
