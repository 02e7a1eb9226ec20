// NPY parser under libFuzzer: any bytes parse or throw lockstep::Error; a parsed array
// re-encodes and parses back to the same shape and bits.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "formats/error.h"
#include "formats/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    NpyArray a = parse_npy(bytes, "fuzz.npy");
    auto encoded = encode_npy(a.values, a.shape);
    NpyArray b = parse_npy(encoded, "fuzz-again.npy");
    if (b.shape != a.shape || b.values.size() != a.values.size() ||
        (!a.values.empty() &&
         std::memcmp(b.values.data(), a.values.data(), a.values.size() * sizeof(float)) != 0))
      __builtin_trap();
  } catch (const lockstep::Error&) {
  }
  return 0;
}
