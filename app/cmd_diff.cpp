#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "app/bisect_output.h"
#include "app/commands.h"
#include "engine/family.h"
#include "engine/trace_io.h"
#include "engine/weights.h"
#include "formats/error.h"

namespace lockstep::app {
namespace {

struct DiffArgs {
  std::string dir_a, dir_b;
  std::string model;
  BisectArgs bisect;
};

// The head layout a Lockstep manifest records, for the per-head breakdown and the diagnosis
// of a diff without --model. Only whole, positive numbers are taken.
std::optional<engine::ModelConfig> config_from_manifest(const formats::Manifest& m,
                                                        const std::string& dir) {
  const nlohmann::json& c = m.config;
  engine::ModelConfig config;
  config.source = dir + "/manifest.json";
  config.family = m.family;
  for (auto [key, field] :
       {std::pair{"hidden", &config.hidden}, std::pair{"layers", &config.layers},
        std::pair{"heads", &config.heads}, std::pair{"kv_heads", &config.kv_heads},
        std::pair{"head_dim", &config.head_dim}, std::pair{"ffn", &config.ffn},
        std::pair{"vocab", &config.vocab}}) {
    auto it = c.find(key);
    if (it == c.end() || !it->is_number_unsigned() || it->get<uint64_t>() == 0) return std::nullopt;
    *field = it->get<uint64_t>();
  }
  return config;
}

engine::LoadedDump load(const std::string& dir, const engine::ModelConfig* config) {
  engine::LoadedDump d = engine::load_dump(dir, config);
  for (const formats::DumpIssue& issue : d.issues)
    std::fprintf(stderr, "diff: %s: %s: %s\n", dir.c_str(),
                 std::string(formats::dump_issue_kind_name(issue.kind)).c_str(),
                 issue.message.c_str());
  if (d.trace.size() == 0) throw Error("diff: " + dir + " holds no readable cell");
  return d;
}

int cmd_diff(const DiffArgs& a) {
  engine::BisectOptions options = bisect_options("diff", a.bisect);
  std::optional<engine::Model> model;
  if (!a.model.empty()) model = engine::open_model(a.model, engine::FamilyRegistry::load());
  const engine::ModelConfig* config = model ? &model->config : nullptr;
  engine::LoadedDump da = load(a.dir_a, config);
  engine::LoadedDump db = load(a.dir_b, config);

  std::optional<engine::ModelConfig> from_manifest;
  if (!config && da.manifest) {
    from_manifest = config_from_manifest(*da.manifest, a.dir_a);
    config = from_manifest ? &*from_manifest : nullptr;
  }
  const std::vector<int32_t>& ta = da.trace.tokens;
  const std::vector<int32_t>& tb = db.trace.tokens;
  if (!ta.empty() && !tb.empty() && ta != tb)
    throw Error("diff: " + a.dir_a + " and " + a.dir_b +
                " ran different token ids (their manifests disagree): a comparison would be "
                "meaningless");
  if (ta.empty() && !tb.empty()) da.trace.tokens = tb;

  // The floor needs the model and the tokens the dumps ran.
  std::optional<engine::NoiseFloor> floor;
  std::string floor_note;
  if (options.floor == engine::FloorSource::CpuVsRef) {
    if (!model)
      floor_note = "none: measuring it needs --model (or pass --floor none)";
    else if (da.trace.tokens.empty())
      floor_note = "none: neither dump's manifest records the token ids it ran";
    else
      floor = engine::measure_noise_floor(*model, da.trace.tokens, options.mode, options.threads);
  }
  engine::BisectResult r =
      engine::diff_traces(da.trace, db.trace, config, floor ? &*floor : nullptr, options);
  if (!floor_note.empty()) r.floor_note = floor_note;

  engine::ReportContext context;
  context.kind = "diff";
  context.tool_version = LOCKSTEP_VERSION;
  context.model = a.model;
  context.source_a = a.dir_a;
  context.source_b = a.dir_b;
  return present(r, context, a.bisect);
}

}  // namespace

Command add_diff_command(CLI::App& app) {
  auto args = std::make_shared<DiffArgs>();
  CLI::App* sub = app.add_subcommand(
      "diff",
      "Compare two dump directories (Lockstep's, or aprender's apr trace --save-tensor and "
      "APR_GPU_STAGE_DUMP output) cell by cell and find the first divergence");
  sub->add_option("dir_a", args->dir_a, "The reference dump directory (lane A)")->required();
  sub->add_option("dir_b", args->dir_b, "The dump directory under test (lane B)")->required();
  sub->add_option("--model", args->model,
                  "The model the dumps ran: shapes for dumps without a manifest, the head layout "
                  "for the diagnosis, and the noise floor (cpu against ref on the dump's tokens)");
  sub->add_option("--floor", args->bisect.floor,
                  "cpu-ref (needs --model and token ids in a manifest) or none")
      ->capture_default_str();
  add_bisect_options(*sub, args->bisect, false);
  sub->footer(
      "Exit codes: 0 no divergence (or one without --fail-on-divergence), 1 divergence with "
      "--fail-on-divergence, 2 usage or input error.");
  return {sub, [args] { return cmd_diff(*args); }};
}

}  // namespace lockstep::app
