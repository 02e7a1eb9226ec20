#pragma once
// A bounds-checked little-endian cursor over bytes. Every read checks the remaining size
// first and throws lockstep::Error naming the file, the offset and what was expected.
// Parsers use it so that no count or length is trusted before it is checked.

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "formats/error.h"

namespace lockstep::formats {

class ByteReader {
 public:
  ByteReader(std::span<const std::byte> bytes, std::string file)
      : bytes_(bytes), file_(std::move(file)) {}

  uint64_t offset() const { return pos_; }
  uint64_t size() const { return bytes_.size(); }
  uint64_t remaining() const { return bytes_.size() - pos_; }
  const std::string& file() const { return file_; }
  std::span<const std::byte> bytes() const { return bytes_; }

  // Throws unless `n` more bytes are available; `what` names what they would hold.
  void need(uint64_t n, std::string_view what) const {
    if (n > remaining())
      throw Error(file_, pos_, std::to_string(n) + " bytes of " + std::string(what),
                  std::to_string(remaining()) + " bytes left in the file");
  }

  template <typename T>
  T read(std::string_view what) {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));  // host is little-endian (x86-64)
    pos_ += sizeof(T);
    return v;
  }

  std::span<const std::byte> take(uint64_t n, std::string_view what) {
    need(n, what);
    auto s = bytes_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

  std::string_view take_string(uint64_t n, std::string_view what) {
    auto s = take(n, what);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

  void seek(uint64_t pos, std::string_view what) {
    if (pos > bytes_.size())
      throw Error(file_, pos_, std::string(what) + " within the file's " +
                                   std::to_string(bytes_.size()) + " bytes",
                  "offset " + std::to_string(pos));
    pos_ = pos;
  }

  [[noreturn]] void fail(std::string expected, std::string found = {}) const {
    throw Error(file_, pos_, std::move(expected), std::move(found));
  }
  [[noreturn]] void fail_at(uint64_t at, std::string expected, std::string found = {}) const {
    throw Error(file_, at, std::move(expected), std::move(found));
  }

 private:
  std::span<const std::byte> bytes_;
  std::string file_;
  uint64_t pos_ = 0;
};

}  // namespace lockstep::formats
