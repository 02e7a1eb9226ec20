#include "tests/test_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace lockstep::test {

std::filesystem::path shared_models() {
  std::filesystem::path p = std::filesystem::path(LOCKSTEP_SHARED_DIR) / "models";
  return std::filesystem::is_directory(p) ? p : std::filesystem::path{};
}

std::filesystem::path scratch_dir(const std::string& tag) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = tag;
  if (info != nullptr) name += std::string("-") + info->test_suite_name() + "-" + info->name();
  for (char& c : name)
    if (c == '/' || c == ' ') c = '_';
  std::filesystem::path p = std::filesystem::path(LOCKSTEP_BINARY_DIR) / "test-scratch" /
                            (name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

std::vector<float> random_nonzero(size_t n, std::mt19937& rng, float range) {
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<float> v(n);
  for (float& x : v) {
    do x = dist(rng);
    while (x == 0.0f);
  }
  return v;
}

std::vector<float> random_nonzero(size_t n, uint32_t seed, float range) {
  std::mt19937 rng(seed);
  return random_nonzero(n, rng, range);
}

}  // namespace lockstep::test
