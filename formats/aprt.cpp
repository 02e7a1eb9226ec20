#include "formats/aprt.h"

#include <cstring>

#include "formats/atomic_dir.h"
#include "formats/byte_reader.h"
#include "formats/error.h"
#include "formats/mapped_file.h"

namespace lockstep::formats {
namespace {

std::string printable(std::span<const std::byte> b) {
  std::string s = "\"";
  for (std::byte c : b) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && u != '"' && u != '\\') {
      s += static_cast<char>(u);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      s += "\\x";
      s += kHex[u >> 4];
      s += kHex[u & 15];
    }
  }
  return s + "\"";
}

}  // namespace

AprtHeader parse_aprt_header(std::span<const std::byte> bytes, const std::string& name) {
  ByteReader r(bytes, name);
  auto magic = r.take(4, "the APRT magic");
  if (std::memcmp(magic.data(), kAprtMagic, 4) != 0)
    r.fail_at(0, "magic \"APRT\"", printable(magic));
  AprtHeader h;
  h.layer = r.read<uint32_t>("the layer index (u32 LE)");
  h.count = r.read<uint32_t>("the element count (u32 LE)");
  // The count is checked against the size before anything is allocated or read.
  uint64_t body = uint64_t{h.count} * 4;
  if (r.remaining() != body) {
    uint64_t actual = r.remaining();
    std::string expected = std::to_string(body) + " body bytes (" + std::to_string(h.count) +
                           " f32), file size " + std::to_string(h.file_bytes());
    std::string found = std::to_string(actual) + " body bytes (file size " +
                        std::to_string(bytes.size()) + ", " +
                        (actual < body ? "truncated" : "trailing bytes") + ")";
    // Truncation is reported where the data runs out; trailing bytes where they start.
    r.fail_at(actual < body ? bytes.size() : h.file_bytes(), expected, found);
  }
  return h;
}

AprtTensor parse_aprt(std::span<const std::byte> bytes, std::string name) {
  AprtHeader h = parse_aprt_header(bytes, name);
  AprtTensor t;
  t.layer = h.layer;
  t.values.resize(h.count);
  // memcpy, never float arithmetic, so NaN payloads survive.
  if (h.count > 0) std::memcpy(t.values.data(), bytes.data() + kAprtHeaderBytes, h.count * 4);
  return t;
}

AprtHeader read_aprt_header(const std::filesystem::path& path) {
  MappedFile f(path.string());
  return parse_aprt_header(f.bytes(), path.string());
}

AprtTensor read_aprt(const std::filesystem::path& path) {
  MappedFile f(path.string());
  return parse_aprt(f.bytes(), path.string());
}

std::vector<std::byte> encode_aprt(uint32_t layer, std::span<const float> values) {
  if (values.size() > UINT32_MAX)
    throw Error("APRT", Error::kNoOffset, "at most 4294967295 elements",
                std::to_string(values.size()));
  auto count = static_cast<uint32_t>(values.size());
  std::vector<std::byte> out(kAprtHeaderBytes + values.size() * 4);
  std::memcpy(out.data(), kAprtMagic, 4);
  std::memcpy(out.data() + 4, &layer, 4);  // host is little-endian (x86-64)
  std::memcpy(out.data() + 8, &count, 4);
  if (!values.empty()) std::memcpy(out.data() + kAprtHeaderBytes, values.data(), values.size() * 4);
  return out;
}

void write_aprt(const std::filesystem::path& path, uint32_t layer, std::span<const float> values) {
  write_file_atomic(path, encode_aprt(layer, values));
}

}  // namespace lockstep::formats
