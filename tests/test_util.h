#pragma once
// Helpers shared by the test binaries: paths to shared models and scratch directories.

#include <filesystem>
#include <string>

namespace lockstep::test {

// ../shared/models (from CMake's LOCKSTEP_SHARED_DIR); empty when the folder is absent.
std::filesystem::path shared_models();
// A fresh, empty directory under the build tree, unique per test; removed at exit if empty.
std::filesystem::path scratch_dir(const std::string& tag);
std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::string& bytes);

}  // namespace lockstep::test

// Skips the current test when ../shared/models is absent (CI always has it).
#define LOCKSTEP_REQUIRE_SHARED_MODELS()                                                  \
  do {                                                                                     \
    if (::lockstep::test::shared_models().empty())                                         \
      GTEST_SKIP() << "../shared/models is absent (set -DLOCKSTEP_SHARED_DIR)";           \
  } while (0)
