#pragma once
// The workbench's one worker thread (DESIGN.md "Threads and state"): it owns the model, the
// lanes and the traces, runs jobs from a queue (run a bisection, select a cell, replay a cell),
// and publishes what the views show as immutable snapshots. A job reports progress and can be
// cancelled; a newer request of a kind replaces a queued older one. The GUI thread only posts
// commands and reads snapshot(); it never computes.

#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "views/snapshot.h"

namespace lockstep::app {

struct WorkerOptions {
  std::filesystem::path scratch;  // a directory of its own for the demo model (removed at the end)
  unsigned threads = 0;           // lanes and comparison; 0 = one per hardware thread
  std::function<void()> wake;     // called after each publish (wakes the frame loop)
  std::vector<std::string> recent;  // recent models from the settings, most recent first
};

class Worker {
 public:
  explicit Worker(WorkerOptions options);
  ~Worker();  // cancels the job under way and joins
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Run, Select, Replay, LoadModel, ListDir and Drop are queued (replacing a queued one of the
  // same kind); Cancel stops the job under way and drops queued runs and replays; Log adds a
  // line.
  void post(const views::Command& command);
  std::shared_ptr<const views::Snapshot> snapshot() const;

  struct State;  // the worker thread's own: model, lanes, traces, result

 private:
  void loop();
  void execute(const views::Command& command);
  void run_job(const views::RunCommand& run);
  void load_model(const std::string& path);
  void drop(const std::vector<std::string>& paths);
  void publish_recent();
  void update(const std::function<void(views::Snapshot&)>& change);
  void log(views::LogEntry::Level level, const std::string& text);
  void fail(const std::string& what, const std::string& detail);

  WorkerOptions options_;
  mutable std::mutex snapshot_mutex_;  // guards the pointer snapshot_ only
  std::mutex update_mutex_;            // one update() at a time
  std::shared_ptr<const views::Snapshot> snapshot_;
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<views::Command> queue_;
  bool stop_ = false;
  std::atomic<bool> cancel_{false};
  std::unique_ptr<State> state_;
  std::thread thread_;
};

}  // namespace lockstep::app
