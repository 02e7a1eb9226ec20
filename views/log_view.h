#pragma once
// Every action, warning and error with its time; an error also opens a modal saying what failed
// (the app keeps running).

#include <cstdint>

#include "views/snapshot.h"

namespace lockstep::views {

// `seen_error`: the last error_seq whose modal was opened (kept by the caller).
void draw_log_view(const Snapshot& snapshot, uint64_t& seen_error);

}  // namespace lockstep::views
