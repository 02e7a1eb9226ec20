#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "app/bisect_output.h"
#include "app/commands.h"
#include "app/interrupt.h"
#include "app/lanes.h"
#include "app/model_input.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

struct BisectCommandArgs {
  std::string model;
  TokenArgs input;
  std::string lanes = "ref,cpu";
  std::string fault;
  BisectArgs bisect;
};

std::pair<std::string, std::string> parse_lanes(const std::string& text) {
  const size_t comma = text.find(',');
  if (comma == std::string::npos || text.find(',', comma + 1) != std::string::npos ||
      comma == 0 || comma + 1 == text.size())
    throw Error("bisect: --lanes " + text + ": expected two lane names, A,B (A the reference), from " +
                lane_list());
  return {text.substr(0, comma), text.substr(comma + 1)};
}

int cmd_bisect(const BisectCommandArgs& a) {
  check_token_args("bisect", a.input);
  engine::BisectOptions options = bisect_options("bisect", a.bisect);
  const auto [name_a, name_b] = parse_lanes(a.lanes);
  // The lanes first: a mistyped name or a fault lane B cannot carry should not cost a load.
  std::optional<engine::FaultSpec> fault;
  if (!a.fault.empty()) fault = engine::FaultSpec::parse(a.fault);
  const uint64_t budget = a.bisect.gpu_budget_mib << 20;
  std::unique_ptr<engine::Lane> lane_a = make_lane(
      name_a, {.threads = a.bisect.threads, .fault = {}, .gpu_weight_budget = budget});
  std::unique_ptr<engine::Lane> lane_b = make_lane(
      name_b, {.threads = a.bisect.threads, .fault = fault, .gpu_weight_budget = budget});

  engine::Model model = engine::open_model(a.model, engine::FamilyRegistry::load());
  const std::vector<int32_t> tokens = resolve_tokens("bisect", model, a.model, a.input);
  if (fault) engine::resolve_fault(*fault, model.plan, model.config);  // refuses a fault that cannot show
  lane_a->load(model);
  lane_b->load(model);

  InterruptGuard guard;
  const bool tty = isatty(fileno(stderr));
  engine::BisectResult r = engine::bisect(
      *lane_a, *lane_b, model, tokens, options,
      [&](const engine::BisectProgress& p) {
        if (!tty) return;
        std::fprintf(stderr, "\r\033[K[%3.0f%%] %s", 100.0 * p.fraction, p.message.c_str());
        std::fflush(stderr);
      },
      &interrupted());
  if (tty) std::fputs("\r\033[K", stderr);

  engine::ReportContext context;
  context.kind = "bisect";
  context.tool_version = LOCKSTEP_VERSION;
  context.model = a.model;
  if (fault) context.fault = fault->str(), context.fault_lane = name_b;
  const int code = present(r, context, a.bisect);
  return r.cancelled ? kExitInterrupted : code;
}

}  // namespace

Command add_bisect_command(CLI::App& app) {
  auto args = std::make_shared<BisectCommandArgs>();
  CLI::App* sub = app.add_subcommand(
      "bisect",
      "Run two lanes on the same tokens with every stage captured, and find where they part: "
      "the first divergent cell, whether it introduced the error or inherited it, and the "
      "likely bug class");
  sub->add_option("model", args->model, "A .gguf file, or a HF model folder (with --tokens)")
      ->required();
  add_token_options(*sub, args->input);
  sub->add_option("--lanes", args->lanes,
                  "Lane A (the reference) and lane B, from: " + lane_list())
      ->capture_default_str();
  add_fault_options(*sub, args->fault);
  sub->get_option("--fault")->description(
      "Plant a known bug in lane B: NAME[@stage[,layer]] (see --list-faults)");
  add_bisect_options(*sub, args->bisect, true);
  sub->footer(
      "Exit codes: 0 no divergence (or one without --fail-on-divergence), 1 divergence with "
      "--fail-on-divergence, 2 usage or input error, 130 interrupted.");
  return {sub, [args] { return cmd_bisect(*args); }};
}

}  // namespace lockstep::app
