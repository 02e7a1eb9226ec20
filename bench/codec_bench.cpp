// GGML codec throughput, one thread: dequantize, quantize and the two row dot products for
// every type with a codec. Rates count f32 elements (bytes_per_second = 4 bytes per element),
// so quantize and dequantize of different types compare on the same scale.

#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "formats/ggml_codec.h"

namespace lockstep::formats {
namespace {

// 2^18 weights: 1 MiB of f32, small enough to stay in cache so the codec, not DRAM, is timed.
constexpr size_t kElems = size_t{1} << 18;
// One row for the dot products: a typical hidden size.
constexpr size_t kRowElems = 4096;

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

std::vector<std::byte> quantized(GgmlType type, const std::vector<float>& x) {
  std::vector<std::byte> q(*ggml_bytes(type, x.size()));
  quantize(type, x, q);
  return q;
}

void set_rates(benchmark::State& state, size_t elems) {
  const auto total = static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(elems);
  state.SetItemsProcessed(total);
  state.SetBytesProcessed(total * static_cast<int64_t>(sizeof(float)));
}

void bm_dequantize(benchmark::State& state, GgmlType type) {
  const std::vector<std::byte> q = quantized(type, gaussian(kElems, 1));
  std::vector<float> y(kElems);
  for (auto _ : state) {
    dequantize(type, q, y);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, kElems);
}

void bm_quantize(benchmark::State& state, GgmlType type) {
  const std::vector<float> x = gaussian(kElems, 2);
  std::vector<std::byte> q(*ggml_bytes(type, kElems));
  for (auto _ : state) {
    quantize(type, x, q);
    benchmark::DoNotOptimize(q.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, kElems);
}

template <typename Dot>
void bm_dot(benchmark::State& state, GgmlType type, Dot dot) {
  const std::vector<std::byte> row = quantized(type, gaussian(kRowElems, 3));
  const std::vector<float> x = gaussian(kRowElems, 4);
  for (auto _ : state) benchmark::DoNotOptimize(dot(type, row, x));
  set_rates(state, kRowElems);
}

void register_all() {
  for (const GgmlTypeInfo& info : ggml_types()) {
    if (!info.has_codec) continue;
    const GgmlType type = info.type;
    const std::string name(info.name);
    benchmark::RegisterBenchmark(("dequantize/" + name).c_str(), bm_dequantize, type);
    benchmark::RegisterBenchmark(("quantize/" + name).c_str(), bm_quantize, type);
    benchmark::RegisterBenchmark(("dot_row/" + name).c_str(), [type](benchmark::State& s) {
      bm_dot(s, type, [](GgmlType t, auto row, auto x) { return dot_row(t, row, x); });
    });
    benchmark::RegisterBenchmark(("dot_row_ref/" + name).c_str(), [type](benchmark::State& s) {
      bm_dot(s, type, [](GgmlType t, auto row, auto x) { return dot_row_ref(t, row, x); });
    });
  }
}

}  // namespace
}  // namespace lockstep::formats

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  lockstep::formats::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
