// compare_traces on two synthetic full captures against memcpy of the same bytes:
//   compare/threads:<n>   every cell of both traces; bytes_per_second counts both sides read
//   memcpy                each trace copied into a preallocated one of the same layout; bytes
//                         per second counts the bytes read (both traces)
// The traces: 24 layers × 16 cells of a 2048-hidden model (16 heads of 128, 4 KV heads, ffn
// 5632) at 128 tokens, plus final_norm and lm_head (32000 vocab): ~590 MB each, ~1.2 GB read
// per comparison, so no cache holds a trace. Side b is side a plus small noise, with the causal
// mask in attn_scores. The target: compare ≥ 50% of memcpy's GB/s.

#include <benchmark/benchmark.h>

#include <cstring>
#include <limits>
#include <vector>

#include "engine/compare.h"

namespace lockstep::engine {
namespace {

constexpr uint64_t kTokens = 128, kHidden = 2048, kHeads = 16, kKvDim = 512, kFfn = 5632;
constexpr uint64_t kLayers = 24, kVocab = 32000;

struct Pair {
  Trace a, b;
  uint64_t bytes = 0;  // both sides
};

// Fast enough to fill a gigabyte in a second or two; the values' distribution hardly matters.
struct Rng {
  uint64_t s;
  float next() {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    return static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t{1} << 23)) / (1 << 22);
  }
};

const Pair& pair() {
  static const Pair p = [] {
    Pair out;
    Rng rng{0x9e3779b97f4a7c15ull};
    auto put = [&](Cell c, std::vector<uint64_t> shape) {
      Tensor x;
      x.shape = shape;
      uint64_t n = 1;
      for (uint64_t d : shape) n *= d;
      x.data.resize(n);
      for (float& v : x.data) v = rng.next();
      if (c.stage == Stage::AttnScores)
        for (uint64_t h = 0; h < shape[0]; ++h)
          for (uint64_t q = 0; q < shape[1]; ++q)
            for (uint64_t k = q + 1; k < shape[2]; ++k)
              x.data[(h * shape[1] + q) * shape[2] + k] = -std::numeric_limits<float>::infinity();
      Tensor y = x;
      for (float& v : y.data) v += 1e-4f * rng.next();
      out.bytes += 2 * n * sizeof(float);
      out.a.put(c, std::move(x));
      out.b.put(c, std::move(y));
    };
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (Stage s : {Stage::AttnNorm, Stage::AttnOut, Stage::PostAttnResidual, Stage::FfnNorm,
                      Stage::FfnOut, Stage::PostFfnResidual, Stage::Attention, Stage::QPostRope})
        put({s, l}, {kTokens, kHidden});
      put({Stage::QkvMatmul, l}, {kTokens, kHidden + 2 * kKvDim});
      put({Stage::KPostRope, l}, {kTokens, kKvDim});
      put({Stage::AttnScores, l}, {kHeads, kTokens, kTokens});
      put({Stage::AttnSoftmax, l}, {kHeads, kTokens, kTokens});
      for (Stage s : {Stage::FfnGate, Stage::FfnUp, Stage::FfnSilu, Stage::FfnSwigl})
        put({s, l}, {kTokens, kFfn});
    }
    put({Stage::FinalNorm, std::nullopt}, {kTokens, kHidden});
    put({Stage::LmHead, std::nullopt}, {kTokens, kVocab});
    return out;
  }();
  return p;
}

void bm_compare(benchmark::State& state) {
  const Pair& p = pair();
  CompareOptions o;
  o.threads = static_cast<unsigned>(state.range(0));
  for (auto _ : state) {
    TraceComparison c = compare_traces(p.a, p.b, o);
    benchmark::DoNotOptimize(c.cells.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * p.bytes));
}

void bm_memcpy(benchmark::State& state) {
  const Pair& p = pair();
  std::vector<std::vector<float>> dst;  // one buffer per cell, a's layout (= b's)
  for (const auto& [cell, t] : p.a.cells()) dst.emplace_back(t.data.size(), 1.0f);
  for (auto _ : state) {
    for (const Trace* src : {&p.a, &p.b}) {
      size_t i = 0;
      for (const auto& [cell, t] : src->cells())
        std::memcpy(dst[i++].data(), t.data.data(), t.data.size() * sizeof(float));
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * p.bytes));
}

BENCHMARK(bm_compare)
    ->Name("compare")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->Iterations(5);
BENCHMARK(bm_memcpy)->Name("memcpy")->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(5);

}  // namespace
}  // namespace lockstep::engine

BENCHMARK_MAIN();
