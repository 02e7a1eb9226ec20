#pragma once
// Frame-time recording for the workbench's benchmark (scripts/gui-frame-bench.sh). With
// LOCKSTEP_FRAME_STATS=FILE the frame loop records each frame's CPU time (from before
// ImGui::NewFrame to after SwapBuffers) and the interval between frame starts, and writes
//   {"frames", "seconds", "fps", "frame_ms": {p50, p90, p99, max, mean}, "interval_ms": {...},
//    "build_ms": {...} (NewFrame to ImGui::Render: the UI's own share),
//    "compose_ms": {...} (the draw data diffed, drawn and copied to the back buffer),
//    "damage": {...} (the share of the window drawn again, 1 for a full redraw),
//    "running": {"frames", "frame_ms", "interval_ms", "build_ms", "compose_ms", "damage"}}
// where "running" counts only the frames drawn while a job ran (and the intervals between two
// such frames).
// to FILE every second and at exit (through a temporary file and a rename). When FILE.reset
// appears the samples recorded so far are dropped and the request removed: a benchmark phase
// starts there.

#include <filesystem>
#include <optional>
#include <vector>

namespace lockstep::app {

struct Percentiles {
  size_t count = 0;
  double p50 = 0, p90 = 0, p99 = 0, max = 0, mean = 0;  // 0 when count is 0
};
// Nearest-rank percentiles: pN is the smallest sample with at least N % of the samples at or
// below it.
Percentiles percentiles(std::vector<double> samples);

class FrameStats {
 public:
  explicit FrameStats(std::filesystem::path file) : file_(std::move(file)) {}
  static std::optional<FrameStats> from_environment();

  void begin_frame(double now);  // seconds on the steady clock
  // After ImGui::Render: the frame's UI work is done; the rest is the GL driver's (llvmpipe
  // rasterises on the CPU) and the swap.
  void built(double now);
  // After the frame is composed in the back buffer (app/gui_compositor.h), `share` of the
  // window drawn again.
  void composed(double now, double share);
  // After SwapBuffers; `excluded` seconds of the frame (the GUI tests' hooks) do not count, in
  // the frame's time, in the interval to the next frame, nor in "seconds" and "fps".
  void end_frame(double now, bool job_running, double excluded = 0);
  void maybe_write(double now);  // once a second; handles FILE.reset
  bool write() const;            // returns false when FILE cannot be written

  const std::vector<double>& frame_seconds() const { return frame_; }
  const std::vector<double>& interval_seconds() const { return interval_; }

 private:
  std::filesystem::path file_;
  std::vector<double> frame_, interval_, build_, compose_, damage_;
  std::vector<double> running_frame_, running_interval_, running_build_, running_compose_,
      running_damage_;
  double built_at_ = -1;
  bool previous_running_ = false;
  double interval_now_ = -1;
  double begin_ = -1, previous_begin_ = -1, first_ = -1, last_end_ = -1, last_write_ = -1;
  double previous_excluded_ = 0, excluded_ = 0;  // the last frame's excluded seconds, and all
};

}  // namespace lockstep::app
