#pragma once
// Helpers shared by the test binaries: paths to shared models and scratch directories.

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"

namespace lockstep::test {

// ../shared/models (from CMake's LOCKSTEP_SHARED_DIR); empty when the folder is absent.
std::filesystem::path shared_models();
// A fresh, empty directory under the build tree, unique per test; removed at exit if empty.
std::filesystem::path scratch_dir(const std::string& tag);
// A scratch_dir() removed with everything in it at scope exit (for tests that write models).
struct ScratchDir {
  explicit ScratchDir(const std::string& tag) : path(scratch_dir(tag)) {}
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::filesystem::path path;
};

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::string& bytes);

// Fresh uniform values in [-range, range], never exactly zero (zeros hide unwritten outputs).
std::vector<float> random_nonzero(size_t n, std::mt19937& rng, float range = 3.0f);
std::vector<float> random_nonzero(size_t n, uint32_t seed, float range = 3.0f);

// Runs `f`, which must throw lockstep::Error; returns it for further checks.
template <typename F>
Error expect_error(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected lockstep::Error";
  return Error("no error");
}

}  // namespace lockstep::test

// Skips the current test when ../shared/models is absent (CI always has it).
#define LOCKSTEP_REQUIRE_SHARED_MODELS()                                        \
  do {                                                                          \
    if (::lockstep::test::shared_models().empty())                              \
      GTEST_SKIP() << "../shared/models is absent (set -DLOCKSTEP_SHARED_DIR)"; \
  } while (0)
