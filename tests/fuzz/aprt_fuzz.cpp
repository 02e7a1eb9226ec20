// APRT parser under libFuzzer: any bytes parse or throw lockstep::Error; a parsed tensor
// re-encodes to exactly the input (the format has one encoding per tensor).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "formats/aprt.h"
#include "formats/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    AprtTensor t = parse_aprt(bytes, "fuzz.bin");
    auto again = encode_aprt(t.layer, t.values);
    if (again.size() != size || std::memcmp(again.data(), data, size) != 0) __builtin_trap();
  } catch (const lockstep::Error&) {
  }
  return 0;
}
