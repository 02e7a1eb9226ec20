// manifest.json parser under libFuzzer: any text parses or throws lockstep::Error; a parsed
// manifest survives format → parse unchanged.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "formats/error.h"
#include "formats/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lockstep::formats;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    Manifest m = parse_manifest(text, "fuzz/manifest.json");
    Manifest again = parse_manifest(format_manifest(m), "fuzz/manifest.json");
    if (!(again == m)) __builtin_trap();
  } catch (const lockstep::Error&) {
  }
  return 0;
}
