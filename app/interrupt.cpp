#include "app/interrupt.h"

#include <csignal>

namespace lockstep::app {
namespace {

std::atomic<bool> flag{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");
extern "C" void on_interrupt(int) { flag.store(true); }

}  // namespace

std::atomic<bool>& interrupted() { return flag; }

InterruptGuard::InterruptGuard() {
  flag = false;
  previous_ = std::signal(SIGINT, on_interrupt);
}

InterruptGuard::~InterruptGuard() { std::signal(SIGINT, previous_); }

}  // namespace lockstep::app
