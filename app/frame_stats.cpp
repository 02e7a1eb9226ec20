#include "app/frame_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <system_error>

namespace lockstep::app {

Percentiles percentiles(std::vector<double> samples) {
  Percentiles p;
  p.count = samples.size();
  if (samples.empty()) return p;
  std::sort(samples.begin(), samples.end());
  auto rank = [&](double q) {
    const size_t k = static_cast<size_t>(std::ceil(q / 100.0 * double(samples.size())));
    return samples[std::clamp<size_t>(k, 1, samples.size()) - 1];
  };
  p.p50 = rank(50);
  p.p90 = rank(90);
  p.p99 = rank(99);
  p.max = samples.back();
  p.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / double(samples.size());
  return p;
}

std::optional<FrameStats> FrameStats::from_environment() {
  const char* f = std::getenv("LOCKSTEP_FRAME_STATS");
  if (!f || !*f) return std::nullopt;
  return FrameStats(f);
}

void FrameStats::begin_frame(double now) {
  begin_ = now;
  if (first_ < 0) first_ = now;
  // The excluded time of the frame before (the tests' hooks) also stops the frame loop's clock
  // (app/gui_app.cpp), so it is not part of the interval either.
  interval_now_ = previous_begin_ >= 0 ? now - previous_begin_ - previous_excluded_ : -1;
  if (interval_now_ >= 0) interval_.push_back(interval_now_);
  previous_begin_ = now;
}

void FrameStats::built(double now) {
  if (begin_ >= 0) build_.push_back(now - begin_);
  built_at_ = now;
}

void FrameStats::composed(double now, double share) {
  if (begin_ < 0 || built_at_ < begin_) return;
  compose_.push_back(now - built_at_);
  damage_.push_back(share);
}

void FrameStats::end_frame(double now, bool job_running, double excluded) {
  if (begin_ < 0) return;
  frame_.push_back(std::max(now - begin_ - excluded, 0.0));
  previous_excluded_ = excluded;
  excluded_ += excluded;
  if (job_running) {
    running_frame_.push_back(frame_.back());
    if (build_.size() == frame_.size()) running_build_.push_back(build_.back());
    if (compose_.size() == frame_.size()) {
      running_compose_.push_back(compose_.back());
      running_damage_.push_back(damage_.back());
    }
    if (previous_running_ && interval_now_ >= 0) running_interval_.push_back(interval_now_);
  }
  previous_running_ = job_running;
  last_end_ = now;
  begin_ = -1;
}

void FrameStats::maybe_write(double now) {
  std::error_code ec;
  const std::filesystem::path reset = file_.string() + ".reset";
  if (std::filesystem::exists(reset, ec)) {
    std::filesystem::remove(reset, ec);
    frame_.clear();
    interval_.clear();
    build_.clear();
    compose_.clear();
    damage_.clear();
    running_frame_.clear();
    running_interval_.clear();
    running_build_.clear();
    running_compose_.clear();
    running_damage_.clear();
    previous_running_ = false;
    first_ = previous_begin_ = last_end_ = -1;
    previous_excluded_ = excluded_ = 0;
    last_write_ = now;
    write();
    return;
  }
  if (last_write_ >= 0 && now - last_write_ < 1.0) return;
  last_write_ = now;
  write();
}

bool FrameStats::write() const {
  auto ms = [](const Percentiles& p) {
    return nlohmann::json{{"p50", p.p50 * 1e3},
                          {"p90", p.p90 * 1e3},
                          {"p99", p.p99 * 1e3},
                          {"max", p.max * 1e3},
                          {"mean", p.mean * 1e3}};
  };
  auto share = [](const Percentiles& p) {
    return nlohmann::json{
        {"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"max", p.max}, {"mean", p.mean}};
  };
  const double seconds =
      first_ >= 0 && last_end_ - excluded_ > first_ ? last_end_ - first_ - excluded_ : 0.0;
  const nlohmann::json j = {{"frames", frame_.size()},
                            {"running",
                             {{"frames", running_frame_.size()},
                              {"frame_ms", ms(percentiles(running_frame_))},
                              {"interval_ms", ms(percentiles(running_interval_))},
                              {"build_ms", ms(percentiles(running_build_))},
                              {"compose_ms", ms(percentiles(running_compose_))},
                              {"damage", share(percentiles(running_damage_))}}},
                            {"seconds", seconds},
                            {"fps", seconds > 0 ? double(frame_.size()) / seconds : 0.0},
                            {"frame_ms", ms(percentiles(frame_))},
                            {"interval_ms", ms(percentiles(interval_))},
                            {"build_ms", ms(percentiles(build_))},
                            {"compose_ms", ms(percentiles(compose_))},
                            {"damage", share(percentiles(damage_))}};
  const std::filesystem::path tmp = file_.string() + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) return false;
    out << j.dump(1) << "\n";
    if (!out) return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file_, ec);
  return !ec;
}

}  // namespace lockstep::app
