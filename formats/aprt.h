#pragma once
// APRT tensor dumps, byte for byte as aprender's `save_tensor.rs` writes them:
//
//   offset 0   "APRT"
//   offset 4   u32 LE layer (kAprtWholeModelLayer for whole-model stages)
//   offset 8   u32 LE element count
//   offset 12  count × f32 LE
//
// A file must hold exactly 12 + 4·count bytes. The body is copied bit for bit: NaN (with
// its payload), ±Inf and -0 are valid values and round-trip unchanged.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace lockstep::formats {

inline constexpr char kAprtMagic[4] = {'A', 'P', 'R', 'T'};
inline constexpr uint32_t kAprtWholeModelLayer = 0xFFFFFFFFu;
inline constexpr uint64_t kAprtHeaderBytes = 12;

struct AprtHeader {
  uint32_t layer = kAprtWholeModelLayer;
  uint32_t count = 0;  // f32 elements in the body
  bool whole_model() const { return layer == kAprtWholeModelLayer; }
  uint64_t file_bytes() const { return kAprtHeaderBytes + uint64_t{count} * 4; }
};

struct AprtTensor {
  uint32_t layer = kAprtWholeModelLayer;
  std::vector<float> values;
  bool whole_model() const { return layer == kAprtWholeModelLayer; }
};

// Checks the magic and that `bytes` is exactly header + body; reads nothing past the header.
// Throws lockstep::Error naming `name`, the offset and what was expected.
AprtHeader parse_aprt_header(std::span<const std::byte> bytes, const std::string& name);
// The header checks, then a copy of the body. Allocates only after the size check.
AprtTensor parse_aprt(std::span<const std::byte> bytes, std::string name);

// The same over a file (memory-mapped; the header read touches only the first page).
AprtHeader read_aprt_header(const std::filesystem::path& path);
AprtTensor read_aprt(const std::filesystem::path& path);

// The file's bytes. Throws lockstep::Error if `values` holds more than 2^32-1 elements.
std::vector<std::byte> encode_aprt(uint32_t layer, std::span<const float> values);
// Writes through a temporary sibling renamed into place.
void write_aprt(const std::filesystem::path& path, uint32_t layer, std::span<const float> values);

}  // namespace lockstep::formats
