#pragma once
// lockstep::Error: the one exception type for bad input. It names the file, the byte offset
// (when there is one) and what was expected, so a user can open the file at that spot.

#include <cstdint>
#include <stdexcept>
#include <string>

namespace lockstep {

class Error : public std::runtime_error {
 public:
  static constexpr uint64_t kNoOffset = UINT64_MAX;

  // "<file>: at offset <offset>: expected <expected>[, found <found>]"
  Error(std::string file, uint64_t offset, std::string expected, std::string found = {});
  // A message with no file position (usage errors, I/O failures with errno text).
  explicit Error(std::string message);

  const std::string& file() const { return file_; }
  uint64_t offset() const { return offset_; }
  const std::string& expected() const { return expected_; }
  const std::string& found() const { return found_; }

 private:
  std::string file_;
  uint64_t offset_ = kNoOffset;
  std::string expected_;
  std::string found_;
};

}  // namespace lockstep
