#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "app/commands.h"
#include "app/lanes.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "cuda/device.h"
#endif
#include "engine/family.h"
#include "engine/lanes.h"
#include "engine/membw.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

struct BenchArgs {
  std::string model;
  std::string lane = "cpu";
  unsigned threads = 0;
  int64_t prefill = 128;
  int64_t decode = 32;
  int64_t capture_tokens = -1;  // -1: 128, or the model's context when shorter
  int repeat = 3;
  uint64_t bandwidth_mib = 1024;
  bool json = false;
};

struct RunTimes {
  double prefill_s = 0.0;
  double decode_s = 0.0;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One generation's timings: the prompt's forward (last logits only, as generation does), then
// `decode` one-token forwards each fed the argmax of the previous logits. Only the forwards are
// timed; picking the argmax is not.
RunTimes time_run(engine::Lane& lane, std::span<const int32_t> prompt, int64_t decode) {
  engine::Trace trace;
  const engine::CapturePlan none = engine::CapturePlan::none();
  lane.reset();
  lane.set_last_logits_only(true);
  RunTimes t;
  auto t0 = std::chrono::steady_clock::now();
  engine::Logits logits = lane.forward(prompt, 0, none, trace);
  t.prefill_s = seconds_since(t0);
  auto pos = static_cast<uint32_t>(prompt.size());
  for (int64_t i = 0; i < decode; ++i) {
    int32_t next = engine::argmax(logits.last());
    if (next < 0) throw Error("bench: lane " + lane.name() + " produced no finite logit");
    t0 = std::chrono::steady_clock::now();
    logits = lane.forward(std::span(&next, 1), pos++, none, trace);
    t.decode_s += seconds_since(t0);
  }
  return t;
}

// Capture overhead: one forward of the first `tokens` prompt tokens with every cell captured
// (into a fresh trace, as bisect does) against the same forward capturing nothing; medians of
// `repeat` each, after one warm-up of each (the first full capture page-locks its buffers).
struct CaptureTimes {
  int64_t tokens = 0;
  double none_s = 0.0, all_s = 0.0;
  uint64_t cells = 0, captured_bytes = 0;
};

double median(std::vector<double> v);

CaptureTimes time_capture(engine::Lane& lane, std::span<const int32_t> prompt, int repeat) {
  CaptureTimes c;
  c.tokens = static_cast<int64_t>(prompt.size());
  lane.set_last_logits_only(false);
  auto once = [&](const engine::CapturePlan& plan) {
    engine::Trace trace;
    lane.reset();
    auto t0 = std::chrono::steady_clock::now();
    lane.forward(prompt, 0, plan, trace);
    const double s = seconds_since(t0);
    c.cells = trace.size();
    c.captured_bytes = 0;
    for (const auto& [cell, tensor] : trace.cells()) c.captured_bytes += tensor.data.size() * 4;
    return s;
  };
  std::vector<double> none, all;
  once(engine::CapturePlan::none());
  once(engine::CapturePlan::all());
  for (int r = 0; r < repeat; ++r) {
    none.push_back(once(engine::CapturePlan::none()));
    all.push_back(once(engine::CapturePlan::all()));
  }
  c.none_s = median(none);
  c.all_s = median(all);
  return c;
}

// Bytes of weights one decode step must read: every distinct tensor the plan references, each
// once (a tensor two nodes share, such as a tied lm_head/embedding, counts once), and, for the
// embedding lookup, one row of token_embd, unless the lm_head already reads all of it (tied
// embeddings). KV-cache and activation traffic are not included, so this is a lower bound on
// the bytes a step moves.
uint64_t weight_bytes_per_token(const engine::Model& model) {
  std::map<const std::byte*, uint64_t> read;  // tensor data → bytes
  std::vector<const engine::TensorRef*> embeddings;
  for (const engine::Node& node : model.plan.nodes) {
    for (const auto* refs : {&node.weights, &node.biases})
      for (const engine::WeightRef& ref : *refs) {
        const engine::TensorRef* t = model.weights.find(ref);
        if (!t) continue;
        if (node.op == engine::Op::Embed)
          embeddings.push_back(t);
        else
          read[t->data.data()] = t->data.size();
      }
  }
  uint64_t bytes = 0;
  for (const auto& [data, size] : read) bytes += size;
  for (const engine::TensorRef* t : embeddings) {
    if (read.count(t->data.data())) continue;
    uint64_t rows = t->dims.size() > 1 ? t->elements() / t->dims[0] : 1;
    bytes += t->data.size() / rows;
  }
  return bytes;
}

// 0 when the C library does not know.
uint64_t l3_cache_bytes() {
  long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? uint64_t(l3) : 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Deterministic prompt: BOS (when the vocab has one), then ids spread over the whole vocab by a
// prime stride, so that embedding rows come from everywhere rather than one cached block.
std::vector<int32_t> bench_tokens(const engine::Model& model, int64_t n) {
  int32_t bos = engine::Tokenizer::kNoToken;
  try {
    if (model.gguf) bos = engine::Tokenizer::from_gguf(*model.gguf).bos();
  } catch (const Error&) {
    // A file without complete tokenizer metadata (a synthetic model) can still be timed; its
    // prompt just starts without BOS.
  }
  std::vector<int32_t> ids;
  const uint64_t vocab = model.config.vocab;
  for (int64_t i = 0; i < n; ++i)
    ids.push_back(i == 0 && bos != engine::Tokenizer::kNoToken
                      ? bos
                      : static_cast<int32_t>((uint64_t(i) * 7919u + 13u) % vocab));
  return ids;
}

int cmd_bench(const BenchArgs& a) {
  if (a.prefill < 1) throw Error("bench: --prefill must be at least 1");
  if (a.decode < 1) throw Error("bench: --decode must be at least 1");
  if (a.repeat < 1) throw Error("bench: --repeat must be at least 1");
  if (a.bandwidth_mib < 1) throw Error("bench: --bandwidth-mib must be at least 1");
  if (a.capture_tokens < -1) throw Error("bench: --capture-tokens must be 0 or more");
  std::unique_ptr<engine::Lane> lane = make_lane(a.lane, {.threads = a.threads});
  // GPU lanes are measured against the device's memory, CPU lanes against the host's.
  const bool gpu = a.lane.starts_with("cuda");
  engine::Model model = engine::open_model(a.model, engine::FamilyRegistry::load());
  if (model.config.context > 0 && uint64_t(a.prefill + a.decode) > model.config.context)
    throw Error("bench: --prefill " + std::to_string(a.prefill) + " + --decode " +
                std::to_string(a.decode) + " exceed the model's context of " +
                std::to_string(model.config.context) + " tokens");
  const int64_t capture_tokens = a.capture_tokens >= 0 ? a.capture_tokens
                                 : model.config.context > 0
                                     ? std::min<int64_t>(128, int64_t(model.config.context))
                                     : 128;
  if (model.config.context > 0 && uint64_t(capture_tokens) > model.config.context)
    throw Error("bench: --capture-tokens " + std::to_string(a.capture_tokens) +
                " exceeds the model's context of " + std::to_string(model.config.context) +
                " tokens");

  const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  // The ref lane runs on one thread, so its bandwidth is compared with one thread's.
  const bool single = lane->name() == "ref";
  const unsigned threads = single ? 1 : (a.threads ? a.threads : hardware);

  engine::BandwidthResult bw;
  std::string bw_what;
  if (gpu) {
#ifdef LOCKSTEP_HAVE_CUDA
    cuda::CopyBandwidth copy = cuda::measure_copy_bandwidth(0, a.bandwidth_mib << 20);
    bw.bytes = copy.bytes;
    bw.bytes_per_s = copy.bytes_per_s;
    bw.best = copy.best;
    bw.median = copy.median;
    bw_what = "device copy";
#endif
  } else {
    bw = engine::measure_read_bandwidth(threads, a.bandwidth_mib << 20, /*repetitions=*/5);
    bw_what = "host read";
  }

  lane->load(model);
  std::vector<int32_t> prompt = bench_tokens(model, a.prefill);
  time_run(*lane, prompt, a.decode);  // warm-up: page in weights, start thread teams
  std::vector<double> prefill_tps, decode_tps;
  for (int r = 0; r < a.repeat; ++r) {
    RunTimes t = time_run(*lane, prompt, a.decode);
    prefill_tps.push_back(t.prefill_s > 0 ? double(a.prefill) / t.prefill_s : 0.0);
    decode_tps.push_back(t.decode_s > 0 ? double(a.decode) / t.decode_s : 0.0);
  }
  const double prefill = median(prefill_tps), decode = median(decode_tps);
  const double ttft = prefill > 0 ? double(a.prefill) / prefill : 0.0;  // the prompt's forward
  CaptureTimes cap;
  if (capture_tokens > 0) cap = time_capture(*lane, bench_tokens(model, capture_tokens), a.repeat);
  const double cap_ratio = cap.none_s > 0 ? cap.all_s / cap.none_s : 0.0;
  const uint64_t weight_bytes = weight_bytes_per_token(model);
  const double effective = double(weight_bytes) * decode;  // bytes/s of weights at decode
  const double fraction = bw.best > 0 ? effective / bw.best : 0.0;

  if (a.json) {
    nlohmann::json j = {
        {"model", a.model},
        {"lane", lane->name()},
        {"threads", threads},
        {"hardware_threads", hardware},
        {"repeat", a.repeat},
        {"warmup_runs", 1},
        {"bandwidth",
         {{"kind", bw_what},
          {"bytes", bw.bytes},
          {"threads", bw.threads},
          {"best_bytes_per_s", bw.best},
          {"median_bytes_per_s", bw.median},
          {"runs_bytes_per_s", bw.bytes_per_s}}},
        {"prefill",
         {{"tokens", a.prefill},
          {"tokens_per_s", prefill},
          {"runs_tokens_per_s", prefill_tps},
          {"time_to_first_token_s", ttft}}},
        {"decode",
         {{"tokens", a.decode}, {"tokens_per_s", decode}, {"runs_tokens_per_s", decode_tps}}},
        {"weight_bytes_per_token", weight_bytes},
        {"l3_cache_bytes", l3_cache_bytes()},
        {"effective_bytes_per_s", effective},
        {"bandwidth_fraction", fraction},
    };
    if (cap.tokens > 0)
      j["capture"] = {{"tokens", cap.tokens}, {"none_s", cap.none_s},
                      {"all_s", cap.all_s},   {"ratio", cap_ratio},
                      {"cells", cap.cells},   {"captured_bytes", cap.captured_bytes}};
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }

  const engine::ModelConfig& c = model.config;
  std::printf("model   %s (%s, %llu layers, hidden %llu, vocab %llu)\n", a.model.c_str(),
              c.family.c_str(), static_cast<unsigned long long>(c.layers),
              static_cast<unsigned long long>(c.hidden), static_cast<unsigned long long>(c.vocab));
  if (gpu)
    std::printf("lane    %s\n", lane->name().c_str());
  else
    std::printf("lane    %s, %u %s (%u hardware threads)\n", lane->name().c_str(), threads,
                single ? "thread: the ref lane is single-threaded" : "threads", hardware);
  std::printf("runs    1 warm-up + %d timed; medians (min..max)\n\n", a.repeat);
  auto [pmin, pmax] = std::minmax_element(prefill_tps.begin(), prefill_tps.end());
  auto [dmin, dmax] = std::minmax_element(decode_tps.begin(), decode_tps.end());
  if (gpu)
    std::printf("%-26s %10.2f GB/s   best of %zu copies of %llu MiB, read + written\n",
                "device copy bandwidth", bw.best / 1e9, bw.bytes_per_s.size(),
                static_cast<unsigned long long>(bw.bytes >> 20));
  else
    std::printf("%-26s %10.2f GB/s   best of %zu passes over %llu MiB, %u thread%s\n",
                "memory read bandwidth", bw.best / 1e9, bw.bytes_per_s.size(),
                static_cast<unsigned long long>(bw.bytes >> 20), bw.threads,
                bw.threads == 1 ? "" : "s");
  std::printf("%-26s %10.1f tok/s  (%.1f..%.1f)\n",
              ("prefill " + std::to_string(a.prefill) + " tokens").c_str(), prefill, *pmin, *pmax);
  std::printf("%-26s %10.1f ms\n", "time to first token", 1e3 * ttft);
  std::printf("%-26s %10.1f tok/s  (%.1f..%.1f)\n",
              ("decode " + std::to_string(a.decode) + " tokens").c_str(), decode, *dmin, *dmax);
  std::printf("%-26s %10.3f MB\n", "weights read per token", double(weight_bytes) / 1e6);
  std::printf("%-26s %10.2f GB/s   %.1f%% of measured bandwidth\n", "decode weight traffic",
              effective / 1e9, 100.0 * fraction);
  if (cap.tokens > 0)
    std::printf(
        "%-26s %10.2fx  %.1f ms with all %llu cells (%.1f MB) vs %.1f ms with none, "
        "%lld tokens\n",
        "capture overhead", cap_ratio, 1e3 * cap.all_s, static_cast<unsigned long long>(cap.cells),
        double(cap.captured_bytes) / 1e6, 1e3 * cap.none_s, static_cast<long long>(cap.tokens));
  if (uint64_t l3 = l3_cache_bytes(); !gpu && l3 > 0 && weight_bytes <= l3)
    std::printf(
        "note: %.1f MB of weights fit in the %.1f MB L3 cache, so decode is not bound by "
        "memory bandwidth here; the fraction says little\n",
        double(weight_bytes) / 1e6, double(l3) / 1e6);
  return kExitOk;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand(
      "bench",
      "Measure prefill and decode speed, time to first token and capture overhead of a lane, "
      "against the memory bandwidth it reads weights from (host read for CPU lanes, device "
      "copy for GPU lanes)");
  sub->add_option("model", args->model, "A .gguf file or a HF model folder")->required();
  sub->add_option("--lane", args->lane, "Lane to measure: " + lane_list())->capture_default_str();
  sub->add_option("--threads", args->threads,
                  "Threads for the lane and the bandwidth measurement; 0 = one per hardware "
                  "thread")
      ->capture_default_str();
  sub->add_option("--prefill", args->prefill, "Prompt tokens in the timed prefill")
      ->capture_default_str();
  sub->add_option("--decode", args->decode, "One-token decode steps timed after the prefill")
      ->capture_default_str();
  sub->add_option(
      "--capture-tokens", args->capture_tokens,
      "Prompt tokens of the capture-overhead measurement (every cell captured vs none); "
      "default 128, or the model's context when shorter; 0 skips it");
  sub->add_option("--repeat", args->repeat, "Timed runs after one warm-up; medians are reported")
      ->capture_default_str();
  sub->add_option("--bandwidth-mib", args->bandwidth_mib,
                  "Buffer read (CPU) or copied (GPU) by the bandwidth measurement, MiB (keep it "
                  "well above the caches)")
      ->capture_default_str();
  sub->add_flag("--json", args->json, "Print the numbers as JSON");
  return {sub, [args] { return cmd_bench(*args); }};
}

}  // namespace lockstep::app
