#pragma once
// Element counts of shapes read from untrusted files, computed without overflow.

#include <cstdint>
#include <optional>
#include <span>

namespace lockstep::formats {

// The product of the dimensions; nullopt when it overflows (a zero dimension never does).
inline std::optional<uint64_t> shape_product(std::span<const uint64_t> shape) {
  for (uint64_t d : shape)
    if (d == 0) return 0;
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (n > UINT64_MAX / d) return std::nullopt;
    n *= d;
  }
  return n;
}

}  // namespace lockstep::formats
