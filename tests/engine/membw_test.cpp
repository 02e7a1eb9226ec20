#include "engine/membw.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

TEST(MemoryBandwidth, MeasuresEveryRepetitionOverWholeLines) {
  const uint64_t bytes = uint64_t{16} << 20;
  BandwidthResult r = measure_read_bandwidth(2, bytes, 3);
  EXPECT_EQ(r.threads, 2u);
  EXPECT_EQ(r.bytes % (2 * 64), 0u);
  EXPECT_LE(r.bytes, bytes);
  EXPECT_GT(r.bytes, bytes - 2 * 64);
  ASSERT_EQ(r.bytes_per_s.size(), 3u);
  EXPECT_EQ(r.best, *std::max_element(r.bytes_per_s.begin(), r.bytes_per_s.end()));
  EXPECT_LE(r.median, r.best);
  EXPECT_GE(r.median, *std::min_element(r.bytes_per_s.begin(), r.bytes_per_s.end()));
  // Any real machine reads between 100 MB/s and 10 TB/s.
  for (double v : r.bytes_per_s) {
    EXPECT_GT(v, 1e8);
    EXPECT_LT(v, 1e13);
  }
}

TEST(MemoryBandwidth, ZeroThreadsMeansOnePerHardwareThreadAndTinyBuffersStillWork) {
  BandwidthResult r = measure_read_bandwidth(0, 100, 1);
  EXPECT_EQ(r.threads, std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(r.bytes, 64u * r.threads);  // at least one line each
  EXPECT_GT(r.best, 0.0);
}

TEST(MemoryBandwidth, RefusesNoRepetitions) {
  test::expect_error([] { measure_read_bandwidth(1, 1 << 20, 0); });
}

}  // namespace
}  // namespace lockstep::engine
