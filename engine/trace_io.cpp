#include "engine/trace_io.h"

#include <cmath>
#include <map>
#include <string>

#include "formats/aprt.h"
#include "formats/error.h"

namespace lockstep::engine {
namespace fs = std::filesystem;
namespace {

// Per-token width of a stage under `c`; 0 when the config does not say (MoE experts).
uint64_t config_width(const ModelConfig& c, StageWidth w) {
  switch (w) {
    case StageWidth::Hidden:
      return c.hidden;
    case StageWidth::Qkv:
      return c.qkv_dim();
    case StageWidth::QDim:
      return c.q_dim();
    case StageWidth::KvDim:
      return c.kv_dim();
    case StageWidth::HeadsTimesCtx:
      return c.heads;
    case StageWidth::Ffn:
      return c.ffn;
    case StageWidth::Vocab:
      return c.vocab;
    case StageWidth::Experts:
      return 0;
  }
  return 0;
}

std::optional<uint64_t> exact_sqrt(uint64_t n) {
  auto r = static_cast<uint64_t>(std::sqrt(static_cast<double>(n)));
  while (r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  if (r * r != n) return std::nullopt;
  return r;
}

formats::DumpIssue shape_issue(const formats::DumpCell& c, const std::string& why) {
  return {formats::DumpIssueKind::ShapeMismatch, formats::IssueSeverity::Warning, c.rel_path,
          c.rel_path + ": " + why + "; loaded flat [" + std::to_string(c.elements) + "]", true};
}

}  // namespace

bool LoadedDump::has_errors() const {
  for (const auto& i : issues)
    if (i.severity == formats::IssueSeverity::Error) return true;
  return false;
}

formats::StageLookup stage_lookup() {
  std::vector<std::pair<std::string, formats::StageScope>> names;
  for (const auto& s : kStages)
    names.emplace_back(std::string(s.name), s.per_layer ? formats::StageScope::PerLayer
                                                        : formats::StageScope::WholeModel);
  return formats::make_stage_lookup(std::move(names));
}

LoadedDump load_dump(const fs::path& dir, const ModelConfig* config) {
  formats::DumpScanOptions options;
  options.known_stages = stage_lookup();
  formats::DumpScan scan = formats::scan_dump_dir(dir, options);
  LoadedDump out;
  out.issues = scan.issues;
  out.manifest = scan.manifest;
  out.trace.lane =
      scan.manifest && !scan.manifest->lane.empty() ? scan.manifest->lane : "dump:" + dir.string();
  if (scan.manifest) out.trace.tokens = scan.manifest->token_ids;

  // Tokens per cell: the most common count among cells of a plain [tokens, width] stage (ties:
  // the smaller), from the manifest's shape or else the config; attention cells go by it.
  std::map<uint64_t, size_t> token_votes;
  for (const auto& c : scan.cells) {
    auto stage = find_stage(c.stage);
    if (!stage || attention_matrix(*stage)) continue;
    if (c.shape) {
      if (c.shape->size() == 2 && (*c.shape)[0]) ++token_votes[(*c.shape)[0]];
      continue;
    }
    if (!config) continue;
    uint64_t w = config_width(*config, stage_info(*stage).width);
    if (w && c.elements && c.elements % w == 0) ++token_votes[c.elements / w];
  }
  std::optional<uint64_t> dump_tokens;
  size_t best = 0;
  for (auto [t, n] : token_votes)
    if (n > best) dump_tokens = t, best = n;

  for (const auto& c : scan.cells) {
    auto stage = find_stage(c.stage);
    if (!stage) {
      out.issues.push_back({formats::DumpIssueKind::UnknownStage, formats::IssueSeverity::Warning,
                            c.rel_path,
                            c.rel_path + ": stage \"" + c.stage +
                                "\" is not one of Lockstep's stages; not loaded into the trace",
                            false});
      continue;
    }
    Cell cell{*stage, stage_info(*stage).per_layer ? c.layer : std::nullopt};
    Tensor t;
    if (c.shape) {
      t.shape = *c.shape;
    } else if (config) {
      const uint64_t w = config_width(*config, stage_info(*stage).width);
      const std::string stage_text = "stage " + c.stage;
      if (w == 0) {
        out.issues.push_back(shape_issue(c, "the model config gives no width for " + stage_text));
      } else if (c.elements == 0 || c.elements % w != 0) {
        out.issues.push_back(shape_issue(c, std::to_string(c.elements) +
                                                " elements are not a multiple of the width " +
                                                std::to_string(w) + " of " + stage_text));
      } else if (!attention_matrix(*stage)) {
        t.shape = {c.elements / w, w};
      } else if (dump_tokens) {
        const uint64_t per_head = c.elements / w, tokens = *dump_tokens;
        if (per_head % tokens == 0 && per_head / tokens >= tokens)
          t.shape = {w, tokens, per_head / tokens};
        else
          out.issues.push_back(shape_issue(
              c, std::to_string(c.elements) + " elements do not fit [heads " + std::to_string(w) +
                     ", tokens " + std::to_string(tokens) + ", ctx >= tokens]"));
      } else if (auto tokens = exact_sqrt(c.elements / w)) {
        t.shape = {w, *tokens, *tokens};
      } else {
        out.issues.push_back(shape_issue(
            c, std::to_string(c.elements) + " elements are not heads " + std::to_string(w) +
                   " x tokens² (a prefill from position 0), and no other cell gives the tokens"));
      }
    }
    if (t.shape.empty()) t.shape = {c.elements};
    formats::AprtTensor a = formats::read_aprt(c.path);
    if (a.values.size() != c.elements)
      throw Error(c.path.string(), 8, std::to_string(c.elements) + " elements (as scanned)",
                  std::to_string(a.values.size()) + " (the file changed while loading)");
    t.data = std::move(a.values);
    out.trace.put(cell, std::move(t));
  }
  out.tokens = dump_tokens;
  return out;
}

Trace load_dump_trace(const fs::path& dir, const ModelConfig* config) {
  return load_dump(dir, config).trace;
}

}  // namespace lockstep::engine
