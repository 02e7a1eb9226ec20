#include "formats/error.h"

namespace lockstep {
namespace {

std::string compose(const std::string& file, uint64_t offset, const std::string& expected,
                    const std::string& found) {
  std::string msg = file.empty() ? std::string("<memory>") : file;
  if (offset != Error::kNoOffset) msg += ": at offset " + std::to_string(offset);
  msg += ": expected " + expected;
  if (!found.empty()) msg += ", found " + found;
  return msg;
}

}  // namespace

Error::Error(std::string file, uint64_t offset, std::string expected, std::string found)
    : std::runtime_error(compose(file, offset, expected, found)),
      file_(std::move(file)),
      offset_(offset),
      expected_(std::move(expected)),
      found_(std::move(found)) {}

Error::Error(std::string message) : std::runtime_error(std::move(message)) {}

}  // namespace lockstep
