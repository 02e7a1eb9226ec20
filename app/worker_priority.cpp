#include "app/worker_priority.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace lockstep::app {

// Why a nice value rather than one hardware thread left free: the frame loop needs a core for
// a few milliseconds per frame, not a whole core all the time, and a run on every core finishes
// sooner. At nice 10 CFS weighs the worker's threads at 110 against the GUI thread's 1024, so
// the GUI thread is scheduled within its frame whenever it wakes, even with every core busy
// (scripts/gui-frame-bench.sh's second phase measures frames during a run).
int lower_worker_priority() {
  int nice = kWorkerNice;
  if (const char* e = std::getenv("LOCKSTEP_WORKER_NICE"); e && *e)
    nice = std::clamp(std::atoi(e), 0, 19);
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  return setpriority(PRIO_PROCESS, tid, nice) == 0 ? nice : -1;
}

}  // namespace lockstep::app
