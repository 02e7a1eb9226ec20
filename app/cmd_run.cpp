#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "app/bisect_output.h"
#include "app/commands.h"
#include "app/interrupt.h"
#include "app/lanes.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/generate.h"
#include "engine/lanes.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

struct RunArgs {
  std::string model;
  std::string prompt;
  bool chat = false;
  std::string lane = "cpu";
  int64_t max_tokens = 64;
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  unsigned threads = 0;
  uint64_t gpu_budget_mib = 0;
  std::string fault;
};

int cmd_run(const RunArgs& a) {
  if (a.prompt.empty()) throw Error("run: the prompt is empty (give --prompt TEXT)");
  if (a.max_tokens < 1)
    throw Error("run: -n must be at least 1, got " + std::to_string(a.max_tokens));
  // The lane first: a mistyped name should not cost a model load.
  engine::LaneOptions lane_options{
      .threads = a.threads, .fault = std::nullopt, .gpu_weight_budget = a.gpu_budget_mib << 20};
  if (!a.fault.empty()) lane_options.fault = engine::FaultSpec::parse(a.fault);
  std::unique_ptr<engine::Lane> lane = make_lane(a.lane, lane_options);
  engine::Model model = engine::open_model(a.model, engine::FamilyRegistry::load());
  if (!model.gguf)
    throw Error("run: " + a.model +
                " is a safetensors model; run needs a GGUF file, whose "
                "metadata holds the tokenizer");
  engine::Tokenizer tok = engine::Tokenizer::from_gguf(*model.gguf);
  std::vector<int32_t> prompt = engine::encode_prompt(tok, a.prompt, a.chat);

  engine::GenerateOptions options;
  options.max_tokens = a.max_tokens;
  options.sampler = {a.temperature, a.top_k, a.top_p, a.seed};
  options.context = model.config.context;
  if (a.chat)
    options.extra_stop = tok.find_token("<|im_end|>").value_or(engine::Tokenizer::kNoToken);

  lane->load(model);
  // Ctrl-C stops the generation after the current token, so the summary is still printed.
  InterruptGuard guard;
  options.cancel = &interrupted();
  bool ends_with_newline = true;  // nothing printed yet
  engine::GenerateResult r =
      engine::generate(*lane, tok, prompt, options, [&](int32_t, std::string_view text) {
        if (!text.empty()) {
          std::fwrite(text.data(), 1, text.size(), stdout);
          std::fflush(stdout);
          ends_with_newline = text.back() == '\n';
        }
        return true;
      });
  if (!ends_with_newline) std::fputc('\n', stdout);
  std::fflush(stdout);

  const engine::GenerateStats& s = r.stats;
  // The ref lane is the single-threaded oracle and cuda runs on the GPU; --threads only
  // applies to the cpu lane.
  unsigned threads = a.threads ? a.threads : std::max(1u, std::thread::hardware_concurrency());
  std::string where = a.lane == "ref"    ? "ref lane, single-threaded"
                      : a.lane.starts_with("cuda") ? a.lane + " lane"
                                         : a.lane + " lane, " + std::to_string(threads) +
                                               (threads == 1 ? " thread" : " threads");
  if (lane_options.fault) where += ", fault " + lane_options.fault->str();
  char line[256];
  std::snprintf(line, sizeof line,
                "prompt %llu tokens, prefill %.1f tok/s; generated %llu tokens, %.1f tok/s%s (%s)",
                static_cast<unsigned long long>(s.prompt_tokens), s.prefill_tokens_per_second(),
                static_cast<unsigned long long>(s.generated_tokens), s.decode_tokens_per_second(),
                r.stop == engine::StopReason::EndOfGeneration ? ", stopped at end of generation"
                : r.stop == engine::StopReason::Cancelled     ? ", interrupted"
                                                              : "",
                where.c_str());
  std::cerr << line << "\n";
  return r.stop == engine::StopReason::Cancelled ? kExitInterrupted : kExitOk;
}

}  // namespace

std::string cpu_lane_list() {
  std::string s;
  for (const std::string& n : engine::cpu_lane_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

// --fault and --list-faults (run and dump).
void add_fault_options(CLI::App& sub, std::string& fault) {
  sub.add_option("--fault", fault,
                 "Plant a bug in the cpu or cuda lane: NAME[@stage[,layer]], e.g. gemv_transposed@lm_head "
                 "or rms_eps_wrong@attn_norm,3 (no layer: every layer); see --list-faults");
  sub.add_flag_callback(
      "--list-faults",
      [] {
        std::cout << engine::fault_list_text();
        throw CLI::Success();
      },
      "List the faults --fault can plant, with what each does, and exit");
}

Command add_run_command(CLI::App& app) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* sub = app.add_subcommand(
      "run", "Generate text from a prompt on one lane, streaming it to stdout; speed on stderr");
  sub->add_option("model", args->model, "A .gguf model file")->required();
  sub->add_option("--prompt,-p", args->prompt, "The prompt text")->required();
  sub->add_flag("--chat", args->chat,
                "Wrap the prompt as one ChatML user turn and stop at <|im_end|>");
  sub->add_option("--lane", args->lane, std::string("Lane to run on: ") + lane_list())
      ->capture_default_str();
  sub->add_option("-n,--max-tokens", args->max_tokens, "Generate at most this many tokens")
      ->capture_default_str();
  sub->add_option("--temperature", args->temperature, "Sampling temperature; 0 = greedy (argmax)")
      ->capture_default_str();
  sub->add_option("--top-k", args->top_k, "Sample among the K most likely tokens; 0 = all")
      ->capture_default_str();
  sub->add_option("--top-p", args->top_p,
                  "Sample within the smallest set of tokens whose probability reaches P; 1 = all")
      ->capture_default_str();
  sub->add_option("--seed", args->seed, "Random seed for sampling (one seed, one sequence)")
      ->capture_default_str();
  sub->add_option("--threads", args->threads,
                  "Threads for the cpu lane; 0 = one per hardware thread")
      ->capture_default_str();
  add_gpu_budget_option(*sub, args->gpu_budget_mib);
  add_fault_options(*sub, args->fault);
  return {sub, [args] { return cmd_run(*args); }};
}

}  // namespace lockstep::app
