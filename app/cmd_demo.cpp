#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "app/bisect_output.h"
#include "app/commands.h"
#include "app/demo_model.h"
#include "app/interrupt.h"
#include "app/lanes.h"
#include "app/model_input.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

namespace fs = std::filesystem;

struct DemoArgs {
  std::string fault = kDemoFault;
  std::string family = "llama";
  std::string prompt = kDemoPrompt;
  std::string keep_model;
  BisectArgs bisect;
};

// A directory removed with everything in it when the demo ends, however it ends.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("lockstep-demo-" + std::to_string(getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

int cmd_demo(const DemoArgs& a) {
  engine::BisectOptions options = bisect_options("demo", a.bisect);
  const engine::FaultSpec fault = engine::FaultSpec::parse(a.fault);
  const auto start = std::chrono::steady_clock::now();

  // The demo model (app/demo_model.h), written fresh each time.
  std::optional<TempDir> temp;
  fs::path path;
  if (a.keep_model.empty()) {
    temp.emplace();
    path = temp->path() / "demo.gguf";
  } else {
    path = a.keep_model;
  }
  write_demo_model(path, a.family, a.bisect.threads);
  const engine::FamilyRegistry families = engine::FamilyRegistry::load();
  engine::Model model = engine::open_model(path, families);
  engine::resolve_fault(fault, model.plan, model.config);  // refuses one this family cannot show
  const std::vector<int32_t> tokens =
      resolve_tokens("demo", model, path.string(), TokenArgs{.prompt = a.prompt});

  std::unique_ptr<engine::Lane> ref = make_lane("ref", {.threads = a.bisect.threads, .fault = {}});
  std::unique_ptr<engine::Lane> cpu =
      make_lane("cpu", {.threads = a.bisect.threads, .fault = fault});
  ref->load(model);
  cpu->load(model);
  std::printf(
      "Demo: a synthetic %s model (hidden %llu, %llu layers, %llu heads over %llu KV heads, F32 "
      "weights) runs \"%s\" (%zu tokens) through the float64 oracle (lane ref) and the fast CPU "
      "engine (lane cpu) with the bug %s planted in it. Lockstep bisects them:\n\n",
      model.family.name.c_str(), (unsigned long long)model.config.hidden,
      (unsigned long long)model.config.layers, (unsigned long long)model.config.heads,
      (unsigned long long)model.config.kv_heads, a.prompt.c_str(), tokens.size(),
      fault.str().c_str());

  InterruptGuard guard;
  engine::BisectResult r = engine::bisect(*ref, *cpu, model, tokens, options, {}, &interrupted());
  engine::ReportContext context;
  context.kind = "bisect";
  context.tool_version = LOCKSTEP_VERSION;
  context.model = a.keep_model.empty() ? "synthetic demo model (" + a.family + ")" : a.keep_model;
  context.fault = fault.str();
  context.fault_lane = "cpu";
  const int code = present(r, context, a.bisect);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\nDone in %.2f s. Try another bug: lockstep demo --fault NAME (--list-faults), "
              "or bisect a model of your own: lockstep bisect MODEL.gguf --prompt TEXT "
              "--lanes ref,cpu.\n",
              seconds);
  return r.cancelled ? kExitInterrupted : code;
}

}  // namespace

Command add_demo_command(CLI::App& app) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* sub = app.add_subcommand(
      "demo",
      "Write a small synthetic model, plant a known bug in the fast CPU lane, and bisect it "
      "against the float64 oracle: the whole workflow in seconds");
  add_fault_options(*sub, args->fault);
  sub->get_option("--fault")
      ->description("The bug to plant in lane cpu: NAME[@stage[,layer]] (see --list-faults)")
      ->capture_default_str();
  sub->add_option("--family", args->family,
                  "Family of the synthetic model: llama, qwen2, qwen3, mistral, granite or "
                  "starcoder2")
      ->capture_default_str();
  sub->add_option("--prompt,-p", args->prompt, "Text to run")->capture_default_str();
  sub->add_option("--keep-model", args->keep_model,
                  "Write the synthetic model to this path and keep it (default: a temporary "
                  "file, removed at the end)");
  add_bisect_options(*sub, args->bisect, true);
  return {sub, [args] { return cmd_demo(*args); }};
}

}  // namespace lockstep::app
