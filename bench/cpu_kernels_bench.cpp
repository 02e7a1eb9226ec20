// cpu lane matmul kernels, one thread, per weight type × shape × ISA:
//   decode/<type>/<rows>x<cols>/<isa>   one token; bytes_per_second counts weight bytes. Several
//                                       copies of the matrix (≥ 64 MiB in all) are cycled so that
//                                       weights come from DRAM, as in a real decode step.
//   prefill/<type>/<rows>x<cols>/<isa>  128 tokens against one matrix; MAC/s counter.
//   prepare/<format>/<tokens>x<cols>    prepare_acts alone.
// Shapes are Qwen2-0.5B's FFN: 896×4864 (ffn_down: 896 outputs of 4864 inputs) and 4864×896
// (ffn_gate/up). The K-quants need inputs in multiples of 256, so they only run the first; in
// that model's Q4_K_M file the 896-input matrices are Q5_0 (and Q8_0), hence Q5_0 here too.

#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "engine/cpu_kernels.h"
#include "formats/ggml_codec.h"

namespace lockstep::engine::cpu {
namespace {

using formats::GgmlType;

constexpr uint64_t kPrefillTokens = 128;
constexpr size_t kDecodeBytes = size_t{64} << 20;

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  return x;
}

std::vector<std::byte> quantized_matrix(GgmlType type, uint64_t rows, uint64_t cols) {
  std::vector<std::byte> q(*formats::ggml_bytes(type, rows * cols));
  formats::quantize(type, gaussian(rows * cols, 1, 0.02f), q);
  return q;
}

void bm_decode(benchmark::State& state, Isa isa, GgmlType type, uint64_t rows, uint64_t cols) {
  const std::vector<std::byte> one = quantized_matrix(type, rows, cols);
  const size_t copies = (kDecodeBytes + one.size() - 1) / one.size();
  std::vector<std::byte> all(copies * one.size());
  for (size_t c = 0; c < copies; ++c) std::copy(one.begin(), one.end(), all.begin() + c * one.size());
  const std::vector<float> x = gaussian(cols, 2, 1.0f);
  PreparedActs acts;
  prepare_acts(isa, act_format(type), x.data(), 1, cols, cols, acts);
  std::vector<float> y(rows);
  const size_t row_bytes = one.size() / rows;
  size_t c = 0;
  for (auto _ : state) {
    const WeightMatrix w{type, all.data() + c * one.size(), rows, cols, row_bytes};
    matmul(isa, w, acts, 0, rows, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
    c = c + 1 == copies ? 0 : c + 1;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(one.size()));
}

void bm_prefill(benchmark::State& state, Isa isa, GgmlType type, uint64_t rows, uint64_t cols) {
  const std::vector<std::byte> w_bytes = quantized_matrix(type, rows, cols);
  const WeightMatrix w{type, w_bytes.data(), rows, cols, w_bytes.size() / rows};
  const std::vector<float> x = gaussian(kPrefillTokens * cols, 3, 1.0f);
  PreparedActs acts;
  prepare_acts(isa, act_format(type), x.data(), kPrefillTokens, cols, cols, acts);
  std::vector<float> y(kPrefillTokens * rows);
  for (auto _ : state) {
    matmul(isa, w, acts, 0, rows, y.data(), rows);
    benchmark::DoNotOptimize(y.data());
  }
  const double macs = double(rows) * double(cols) * double(kPrefillTokens);
  state.counters["MAC/s"] = benchmark::Counter(macs * double(state.iterations()),
                                               benchmark::Counter::kIsRate,
                                               benchmark::Counter::OneK::kIs1000);
}

void bm_prepare(benchmark::State& state, ActFormat format, uint64_t tokens, uint64_t cols) {
  const std::vector<float> x = gaussian(tokens * cols, 4, 1.0f);
  PreparedActs acts;
  for (auto _ : state) {
    prepare_acts(Isa::Scalar, format, x.data(), tokens, cols, cols, acts);
    benchmark::DoNotOptimize(acts.data.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * tokens * cols));
}

void register_all() {
  const std::vector<Isa> isas = supported_isas();
  const GgmlType types[] = {GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_0,
                            GgmlType::Q8_0, GgmlType::F32,  GgmlType::F16};
  const std::pair<uint64_t, uint64_t> shapes[] = {{896, 4864}, {4864, 896}};
  for (GgmlType type : types) {
    for (auto [rows, cols] : shapes) {
      if (!formats::ggml_bytes(type, cols)) continue;
      for (Isa isa : isas) {
        const std::string tail = std::string(formats::ggml_type_name(type)) + "/" +
                                 std::to_string(rows) + "x" + std::to_string(cols) + "/" +
                                 std::string(isa_name(isa));
        benchmark::RegisterBenchmark(("decode/" + tail).c_str(), bm_decode, isa, type, rows, cols)
            ->Unit(benchmark::kMicrosecond);
        benchmark::RegisterBenchmark(("prefill/" + tail).c_str(), bm_prefill, isa, type, rows, cols)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  benchmark::RegisterBenchmark("prepare/Q8_32/128x4864", bm_prepare, ActFormat::Q8_32, 128, 4864);
  benchmark::RegisterBenchmark("prepare/Q8_256/128x4864", bm_prepare, ActFormat::Q8_256, 128, 4864);
  benchmark::RegisterBenchmark("prepare/Q8_32/1x896", bm_prepare, ActFormat::Q8_32, 1, 896)
      ->Unit(benchmark::kMicrosecond);
}

}  // namespace
}  // namespace lockstep::engine::cpu

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  lockstep::engine::cpu::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
