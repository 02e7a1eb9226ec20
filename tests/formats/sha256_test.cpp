#include "formats/sha256.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace lockstep::formats {
namespace {

std::string hex_of(std::string_view text) {
  return sha256_hex(std::as_bytes(std::span(text.data(), text.size())));
}

// FIPS 180-4 examples (NIST CSRC "SHA256.pdf", "SHA2_Additional.pdf").
TEST(Sha256, NistVectors) {
  EXPECT_EQ(hex_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),  // 448 bits
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex_of("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnop"
                   "jklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),  // 896 bits
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(hex_of(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, MillionAFedInUnevenPieces) {
  Sha256 hash;
  const std::string piece(997, 'a');  // prime length: pieces straddle every block boundary
  size_t left = 1000000;
  while (left > 0) {
    const size_t n = std::min(left, piece.size());
    hash.update(std::string_view(piece.data(), n));
    left -= n;
  }
  EXPECT_EQ(to_hex(hash.finish()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Random messages split at random points give the one-shot digest, including lengths around
// the padding boundaries (55/56 and 63/64/65 bytes).
TEST(Sha256, IncrementalUpdatesEqualOneShot) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<size_t> lengths = {1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000};
  for (int i = 0; i < 20; ++i) lengths.push_back(rng() % 5000);
  Sha256 reused;  // finish() resets, so one object serves every message
  for (size_t length : lengths) {
    std::vector<std::byte> message(length);
    for (auto& b : message) b = static_cast<std::byte>(rng());
    const std::string one_shot = sha256_hex(message);
    size_t at = 0;
    while (at < length) {
      const size_t n = std::min<size_t>(length - at, rng() % 150);
      reused.update(std::span(message).subspan(at, n));
      at += n;
    }
    EXPECT_EQ(to_hex(reused.finish()), one_shot) << "length " << length;
  }
}

TEST(Sha256, DigestDependsOnEveryByte) {
  std::vector<std::byte> message(200, std::byte{0x5A});
  const std::string base = sha256_hex(message);
  for (size_t i : {0, 63, 64, 199}) {
    message[i] ^= std::byte{1};
    EXPECT_NE(sha256_hex(message), base) << i;
    message[i] ^= std::byte{1};
  }
  EXPECT_EQ(sha256_hex(message), base);
}

}  // namespace
}  // namespace lockstep::formats
