// GGUF parser under libFuzzer: any bytes must parse or throw lockstep::Error; every tensor
// span the parser hands out must lie inside the input, and dequantizing it must stay in
// bounds.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "formats/error.h"
#include "formats/ggml_codec.h"
#include "formats/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    GgufFile f = GgufFile::parse(bytes, "fuzz.gguf");
    for (const auto& [k, v] : f.metadata()) (void)v.summary();
    for (const auto& t : f.tensors()) {
      auto span = f.tensor_data(t);
      if (span.data() < bytes.data() || span.data() + span.size() > bytes.data() + size)
        __builtin_trap();
      if (has_codec(t.type) && t.elements <= (1u << 16)) {
        std::vector<float> out(t.elements);
        dequantize(t.type, span, out);
      }
    }
  } catch (const lockstep::Error&) {
  }
  return 0;
}
