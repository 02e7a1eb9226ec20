// safetensors parser under libFuzzer: any bytes parse or throw lockstep::Error; tensor spans
// stay inside the input, and widening supported tensors to f32 stays in bounds.
#include <cstddef>
#include <cstdint>
#include <span>

#include "formats/error.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    SafetensorsFile f = SafetensorsFile::parse(bytes, "fuzz.safetensors");
    for (const auto& t : f.tensors()) {
      auto span = f.data(t);
      if (span.data() < bytes.data() || span.data() + span.size() > bytes.data() + size)
        __builtin_trap();
      if (t.supported() && t.elements <= (1u << 16)) (void)f.to_f32(t);
    }
  } catch (const lockstep::Error&) {
  }
  return 0;
}
