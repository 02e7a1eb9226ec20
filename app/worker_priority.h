#pragma once
// The worker thread's scheduling priority, so its compute cannot starve the GUI thread.

namespace lockstep::app {

// Lowers the calling thread's priority to nice kWorkerNice (LOCKSTEP_WORKER_NICE=N overrides,
// 0 keeps it). Linux keeps a nice value per thread and new threads inherit their creator's, so
// the OpenMP team and comparison pool the worker starts run at the same priority. Returns the
// nice value set, or -1 when it could not be set (the worker then runs at normal priority).
inline constexpr int kWorkerNice = 10;
int lower_worker_priority();

}  // namespace lockstep::app
