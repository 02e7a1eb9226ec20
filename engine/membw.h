#pragma once
// Memory read bandwidth, measured the way a decode step reads weights: several threads each
// stream through their own slice of one large buffer, summing it. bench reports a lane's
// effective weight traffic as a fraction of this number.

#include <cstdint>
#include <vector>

namespace lockstep::engine {

struct BandwidthResult {
  unsigned threads = 0;
  uint64_t bytes = 0;               // buffer size actually read per repetition
  std::vector<double> bytes_per_s;  // one per repetition, in order
  double best = 0.0;                // the fastest repetition (as STREAM reports)
  double median = 0.0;
};

// Allocates `bytes` (rounded down to whole 64-byte lines per thread; at least one line each),
// touches it from the threads that will read it (first touch places the pages near them),
// then times `repetitions` passes in which every thread sums its slice. Threads line up at a
// barrier before each pass and stamp their own start and end; a pass lasts from the first
// start to the last end, so it is as long as its slowest thread. threads 0 = one per hardware
// thread. The default 1 GiB × 5 passes takes well under 2 s at ≥ 5 GB/s, and is large enough
// that caches hold none of it. Throws lockstep::Error for repetitions < 1 or an allocation
// that fails.
BandwidthResult measure_read_bandwidth(unsigned threads, uint64_t bytes = uint64_t{1} << 30,
                                       int repetitions = 5);

}  // namespace lockstep::engine
