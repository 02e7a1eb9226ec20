// HF config.json and safetensors index parsers under libFuzzer: any text parses or throws
// lockstep::Error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "formats/error.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    (void)parse_hf_config(text, "fuzz/config.json");
  } catch (const lockstep::Error&) {
  }
  try {
    (void)parse_safetensors_index(text, "fuzz/model.safetensors.index.json");
  } catch (const lockstep::Error&) {
  }
  return 0;
}
