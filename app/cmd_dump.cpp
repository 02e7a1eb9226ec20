#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/lanes.h"
#include "app/model_input.h"
#include "engine/dump_export.h"
#include "engine/family.h"
#include "engine/faults.h"
#include "engine/lanes.h"
#include "engine/trace.h"
#include "engine/weights.h"
#include "formats/aprt.h"
#include "formats/dump_dir.h"
#include "formats/error.h"
#include "formats/mapped_file.h"
#include "formats/sha256.h"

namespace lockstep::app {
namespace {

namespace fs = std::filesystem;

struct DumpArgs {
  std::string model;
  TokenArgs input;
  std::string lane = "cpu";
  std::string stages = "all";
  unsigned threads = 0;
  std::string out;
  bool force = false;
  std::string fault;
};

std::string human_bytes(uint64_t b) {
  char buf[64];
  if (b < (uint64_t{1} << 20))
    std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / 1048576.0);
  return buf;
}

int cmd_dump(const DumpArgs& a) {
  check_token_args("dump", a.input);
  engine::CapturePlan capture = engine::CapturePlan::parse(a.stages);
  engine::LaneOptions lane_options{.threads = a.threads, .fault = std::nullopt};
  if (!a.fault.empty()) lane_options.fault = engine::FaultSpec::parse(a.fault);
  std::unique_ptr<engine::Lane> lane = make_lane(a.lane, lane_options);
  // Refuses an existing --out (without --force) before any work; with --force the old dump is
  // replaced only on commit, once the new one is complete.
  std::error_code ec;
  if (!a.force && fs::exists(a.out, ec))
    throw Error("dump: " + a.out + " already exists; pass --force to replace it");
  formats::DumpWriter writer(a.out, {.overwrite = a.force});

  engine::Model model = engine::open_model(a.model, engine::FamilyRegistry::load());
  const std::vector<int32_t> tokens = resolve_tokens("dump", model, a.model, a.input);

  lane->load(model);
  lane->reset();
  lane->set_last_logits_only(false);
  engine::Trace trace;
  trace.lane = lane->name();
  trace.tokens = tokens;
  lane->forward(tokens, 0, capture, trace);
  if (trace.size() == 0)
    throw Error("dump: --stages " + a.stages + " selects no cell this model has");

  uint64_t bytes = 0;
  for (const auto& [cell, t] : trace.cells()) {
    writer.write(engine::stage_name(cell.stage), cell.layer, t.data, t.shape);
    bytes += formats::kAprtHeaderBytes + 4 * t.data.size();
  }

  // The same manifest as the workbench's export (engine/dump_export.h).
  formats::Manifest m =
      engine::run_manifest(lane->name(), model, a.model, tokens, LOCKSTEP_VERSION);
  writer.set_manifest(std::move(m));  // files: the shapes given to write()
  writer.commit();

  const std::string fault =
      lane_options.fault ? " with fault " + lane_options.fault->str() : std::string();
  std::printf("wrote %zu cells (%s) of %zu tokens from the %s lane%s to %s\n", trace.size(),
              human_bytes(bytes).c_str(), tokens.size(), lane->name().c_str(), fault.c_str(),
              a.out.c_str());
  return kExitOk;
}

}  // namespace

Command add_dump_command(CLI::App& app) {
  auto args = std::make_shared<DumpArgs>();
  CLI::App* sub = app.add_subcommand(
      "dump", "Run one forward pass and save every captured stage as an APRT dump directory");
  sub->add_option("model", args->model, "A .gguf file, or a HF model folder (with --tokens)")
      ->required();
  add_token_options(*sub, args->input);
  sub->add_option("--lane", args->lane, std::string("Lane to run on: ") + lane_list())
      ->capture_default_str();
  sub->add_option("--stages", args->stages,
                  "Cells to capture: all, or e.g. \"attn_norm,lm_head@0-3;ffn_out@2\" "
                  "(stages with an optional @layer or @first-last range, groups split by ';')")
      ->capture_default_str();
  sub->add_option("--threads", args->threads,
                  "Threads for the cpu lane; 0 = one per hardware thread")
      ->capture_default_str();
  sub->add_option("--out,-o", args->out, "Directory to write (must not exist, unless --force)")
      ->required();
  sub->add_flag("--force", args->force,
                "Replace an existing dump at --out, once the new one is complete");
  add_fault_options(*sub, args->fault);
  return {sub, [args] { return cmd_dump(*args); }};
}

}  // namespace lockstep::app
