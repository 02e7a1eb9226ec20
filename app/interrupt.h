#pragma once
// Ctrl-C as a cancel: while an InterruptGuard lives, SIGINT sets interrupted() instead of
// ending the process, so a long command stops at its next check and still reports.

#include <atomic>

namespace lockstep::app {

constexpr int kExitInterrupted = 130;  // what shells report for a process ended by SIGINT

// The flag SIGINT sets (cleared when a guard is made).
std::atomic<bool>& interrupted();

class InterruptGuard {
 public:
  InterruptGuard();
  ~InterruptGuard();
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  void (*previous_)(int);
};

}  // namespace lockstep::app
