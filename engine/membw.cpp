#include "engine/membw.h"

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "formats/error.h"

namespace lockstep::engine {

namespace {

constexpr uint64_t kLine = 64;
constexpr uint64_t kWordsPerLine = kLine / sizeof(uint64_t);

struct FreeDeleter {
  void operator()(uint64_t* p) const { std::free(p); }
};

// Integer sums with independent accumulators: the compiler vectorises them without
// -ffast-math, so the loop is bound by memory, not by an add chain.
uint64_t sum_words(const uint64_t* p, uint64_t words) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (uint64_t i = 0; i + 4 <= words; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  return a + b + c + d;
}

}  // namespace

BandwidthResult measure_read_bandwidth(unsigned threads, uint64_t bytes, int repetitions) {
  if (repetitions < 1)
    throw Error("memory bandwidth: repetitions must be at least 1, got " +
                std::to_string(repetitions));
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t lines_per_thread = std::max<uint64_t>(1, bytes / kLine / threads);
  const uint64_t words_per_thread = lines_per_thread * kWordsPerLine;
  const uint64_t total = lines_per_thread * kLine * threads;

  std::unique_ptr<uint64_t, FreeDeleter> buffer(
      static_cast<uint64_t*>(std::aligned_alloc(kLine, total)));
  if (!buffer)
    throw Error("memory bandwidth: cannot allocate " + std::to_string(total >> 20) + " MiB");

  // Pass 0 writes the buffer (first touch); passes 1..repetitions are timed reads. Each thread
  // stamps its own start and end: a pass lasts from the first start to the last end, however
  // late the scheduler wakes any one thread (on a loaded machine, the caller's thread too).
  using Clock = std::chrono::steady_clock;
  std::vector<Clock::time_point> starts(size_t(repetitions) * threads);  // [repetitions, threads]
  std::vector<Clock::time_point> ends(starts.size());                    // [repetitions, threads]
  std::barrier sync(static_cast<std::ptrdiff_t>(threads));
  std::atomic<uint64_t> sink{0};  // an atomic add of each sum keeps the reads from being elided
  {
    std::vector<std::jthread> workers;
    workers.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
      workers.emplace_back([&, t] {
        uint64_t* slice = buffer.get() + t * words_per_thread;
        for (uint64_t i = 0; i < words_per_thread; ++i) slice[i] = i * 0x9E3779B97F4A7C15ull + t;
        for (int r = 0; r < repetitions; ++r) {
          sync.arrive_and_wait();  // everyone has finished the previous pass
          size_t k = size_t(r) * threads + t;
          starts[k] = Clock::now();
          sink.fetch_add(sum_words(slice, words_per_thread), std::memory_order_relaxed);
          ends[k] = Clock::now();
        }
      });
  }  // joined

  BandwidthResult result;
  result.threads = threads;
  result.bytes = total;
  for (int r = 0; r < repetitions; ++r) {
    auto first = starts.begin() + ptrdiff_t(r) * threads;
    auto last = ends.begin() + ptrdiff_t(r) * threads;
    double s = std::chrono::duration<double>(*std::max_element(last, last + threads) -
                                             *std::min_element(first, first + threads))
                   .count();
    result.bytes_per_s.push_back(s > 0.0 ? double(total) / s : 0.0);
  }

  std::vector<double> sorted = result.bytes_per_s;
  std::sort(sorted.begin(), sorted.end());
  result.best = sorted.back();
  size_t n = sorted.size();
  result.median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  return result;
}

}  // namespace lockstep::engine
