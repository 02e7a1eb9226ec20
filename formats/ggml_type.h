#pragma once
// The GGML tensor types: one table with each type's id (as stored in GGUF), name, block
// geometry and whether Lockstep has a codec for it. Types the table lacks are unknown and
// are reported as such, never guessed.

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace lockstep::formats {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct GgmlTypeInfo {
  GgmlType type;
  std::string_view name;
  uint32_t block_elems;  // elements per block (1 for plain types)
  uint32_t block_bytes;  // bytes per block
  bool has_codec;        // Lockstep can dequantize and quantize it
};

// Every type GGUF files may hold, in id order.
std::span<const GgmlTypeInfo> ggml_types();
// nullptr when the id or name is not a GGML type.
const GgmlTypeInfo* find_ggml_type(uint32_t id);
const GgmlTypeInfo* find_ggml_type(std::string_view name);
const GgmlTypeInfo& ggml_type_info(GgmlType type);
inline std::string_view ggml_type_name(GgmlType type) { return ggml_type_info(type).name; }

// Bytes of `elems` elements of `type`, or nullopt when elems is not a whole number of
// blocks or the size would overflow.
std::optional<uint64_t> ggml_bytes(GgmlType type, uint64_t elems);

}  // namespace lockstep::formats
