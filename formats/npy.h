#pragma once
// NumPy .npy files of float32 ('<f4'), C order, any rank, so dumps open in NumPy
// (`np.load`). Writes version 1.0; reads 1.0, 2.0 and 3.0. The header dict must hold exactly
// 'descr', 'fortran_order' and 'shape', as NumPy requires; big-endian, non-f32, structured and
// Fortran-ordered arrays are rejected with a message saying what would be accepted.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace lockstep::formats {

inline constexpr size_t kNpyMaxRank = 64;  // NumPy's NPY_MAXDIMS

struct NpyHeader {
  uint8_t major = 1;
  uint8_t minor = 0;
  std::vector<uint64_t> shape;  // empty: a 0-d array holding one value
  uint64_t data_offset = 0;     // where the values start
  uint64_t elements = 1;
};

struct NpyArray {
  std::vector<uint64_t> shape;
  std::vector<float> values;  // C order, bit for bit as stored
};

// Validates magic, version, header dict and that exactly elements·4 data bytes follow.
NpyHeader parse_npy_header(std::span<const std::byte> bytes, const std::string& name);
NpyArray parse_npy(std::span<const std::byte> bytes, std::string name);
NpyArray read_npy(const std::filesystem::path& path);

// Throws lockstep::Error if the product of `shape` is not values.size().
std::vector<std::byte> encode_npy(std::span<const float> values, std::span<const uint64_t> shape);
// Writes through a temporary sibling renamed into place.
void write_npy(const std::filesystem::path& path, std::span<const float> values,
               std::span<const uint64_t> shape);

}  // namespace lockstep::formats
