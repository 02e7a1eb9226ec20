#pragma once
// SHA-256 (FIPS 180-4), our own, so that formats/ needs no crypto library. Used to fingerprint
// model files and dequantized tensors (the quant-ref data name tensors by sha256).

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace lockstep::formats {

class Sha256 {
 public:
  Sha256();
  // Feeds bytes; any split of a message into updates gives the same digest.
  void update(std::span<const std::byte> bytes);
  void update(std::string_view text) { update(std::as_bytes(std::span(text.data(), text.size()))); }
  // Pads, returns the digest and resets the object for a new message.
  std::array<uint8_t, 32> finish();

 private:
  void compress(const uint8_t* block);  // one 64-byte block
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;  // bytes waiting in buffer_
  uint64_t total_bytes_ = 0;
};

// Lowercase hex of a digest.
std::string to_hex(std::span<const uint8_t> digest);
std::string sha256_hex(std::span<const std::byte> bytes);

}  // namespace lockstep::formats
