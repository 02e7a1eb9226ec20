// Frame-time recording (app/frame_stats.h): nearest-rank percentiles and the JSON file the
// benchmark reads.
#include "app/frame_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/test_util.h"

namespace lockstep::app {
namespace {

TEST(Percentiles, NearestRankOnOneToHundred) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // unsorted on purpose
  const Percentiles p = percentiles(v);
  EXPECT_EQ(p.count, 100u);
  EXPECT_EQ(p.p50, 50);
  EXPECT_EQ(p.p90, 90);
  EXPECT_EQ(p.p99, 99);
  EXPECT_EQ(p.max, 100);
  EXPECT_DOUBLE_EQ(p.mean, 50.5);
}

TEST(Percentiles, SmallAndEmptySets) {
  const Percentiles none = percentiles({});
  EXPECT_EQ(none.count, 0u);
  EXPECT_EQ(none.p99, 0);
  const Percentiles one = percentiles({7.5});
  EXPECT_EQ(one.p50, 7.5);
  EXPECT_EQ(one.p99, 7.5);
  EXPECT_EQ(one.max, 7.5);
  // Ten samples: p50 is the 5th, p90 the 9th, p99 the 10th.
  const Percentiles ten = percentiles({10, 1, 9, 2, 8, 3, 7, 4, 6, 5});
  EXPECT_EQ(ten.p50, 5);
  EXPECT_EQ(ten.p90, 9);
  EXPECT_EQ(ten.p99, 10);
}

TEST(Percentiles, MatchesASortedReference) {
  std::mt19937 rng(5);
  std::exponential_distribution<double> dist(200.0);
  std::vector<double> v(1001);
  for (double& x : v) x = dist(rng);
  const Percentiles p = percentiles(v);
  std::sort(v.begin(), v.end());
  EXPECT_EQ(p.p50, v[500]);  // ceil(0.50 * 1001) = 501st
  EXPECT_EQ(p.p90, v[900]);  // ceil(0.90 * 1001) = 901st
  EXPECT_EQ(p.p99, v[990]);  // ceil(0.99 * 1001) = 991st
  EXPECT_EQ(p.max, v.back());
}

TEST(FrameStats, RecordsFramesAndIntervalsAndWritesThem) {
  test::ScratchDir scratch("frame-stats");
  const std::filesystem::path file = scratch.path / "frames.json";
  FrameStats s(file);
  double t = 100.0;
  for (int i = 0; i < 20; ++i) {
    s.begin_frame(t);
    s.built(t + 0.002);
    s.end_frame(t + 0.004 + 0.001 * (i % 3), i >= 10, 0.001);
    t += 1.0 / 60 + 0.001;  // the hooks' millisecond stops the frame loop's clock
  }
  ASSERT_EQ(s.frame_seconds().size(), 20u);
  ASSERT_EQ(s.interval_seconds().size(), 19u);
  EXPECT_NEAR(s.frame_seconds()[0], 0.003, 1e-12) << "the excluded hook time does not count";
  EXPECT_NEAR(s.interval_seconds()[0], 1.0 / 60, 1e-12) << "nor in the interval after it";
  ASSERT_TRUE(s.write());
  std::ifstream in(file);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["frames"], 20);
  EXPECT_EQ(j["running"]["frames"], 10);
  EXPECT_NEAR(j["build_ms"]["p99"].get<double>(), 2.0, 1e-6);
  EXPECT_NEAR(j["running"]["interval_ms"]["p50"].get<double>(), 1000.0 / 60, 1e-6);
  EXPECT_NEAR(j["running"]["frame_ms"]["p50"].get<double>(), 4.0, 1e-6)
      << "frames 10..19 take 4 5 3 4 5 3 4 5 3 4 ms";
  EXPECT_NEAR(j["running"]["frame_ms"]["p90"].get<double>(), 5.0, 1e-6);
  EXPECT_NEAR(j["interval_ms"]["p50"].get<double>(), 1000.0 / 60, 1e-6);
  EXPECT_NEAR(j["frame_ms"]["max"].get<double>(), 5.0, 1e-6);
  EXPECT_NEAR(j["frame_ms"]["p50"].get<double>(), 4.0, 1e-6);
  // From the first frame's start to the last one's end, less the 20 excluded milliseconds:
  // frames 0..18 take 19 periods and the last 5 ms (1 of them excluded).
  EXPECT_NEAR(j["seconds"].get<double>(), 19.0 / 60 + 0.004, 1e-9);
  EXPECT_NEAR(j["fps"].get<double>(), 20 / (19.0 / 60 + 0.004), 1e-6);

  // A reset request drops what was recorded.
  std::ofstream(file.string() + ".reset") << "\n";
  s.maybe_write(t);
  EXPECT_TRUE(s.frame_seconds().empty());
  EXPECT_FALSE(std::filesystem::exists(file.string() + ".reset"));
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(file))["frames"], 0);
}

}  // namespace
}  // namespace lockstep::app
