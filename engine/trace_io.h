#pragma once
// A dump directory read back as a Trace, so a dump is a lane like any other for compare and
// bisect: Lockstep's own dumps (with manifest.json) and aprender's (`apr trace --save-tensor`,
// APR_GPU_STAGE_DUMP: no manifest).
//
// Shapes, in order of preference:
//   1. the manifest's shape for the file;
//   2. from a model config: the stage's per-token width (stages.h StageWidth); tokens =
//      elements / width. Attention cells (attn_scores, attn_softmax) are [heads, tokens, ctx]
//      with tokens taken from the dump's other cells (ctx = elements / (heads·tokens), so a
//      decode step's ctx > tokens fits), or, when no other cell tells, a prefill from position
//      0 (ctx = tokens, elements = heads·tokens²);
//   3. flat [elements].
// A cell whose element count does not fit the config is loaded flat with a ShapeMismatch
// issue saying why; so is a cell whose token count disagrees with the dump's other cells.

#include <filesystem>
#include <optional>
#include <vector>

#include "engine/model_config.h"
#include "engine/trace.h"
#include "formats/dump_dir.h"

namespace lockstep::engine {

struct LoadedDump {
  Trace trace;  // lane: the manifest's lane, else "dump:<dir>"; tokens: the manifest's ids
  // Everything irregular, by path: scan_dump_dir's issues (stray files, unknown stages, bad
  // names, malformed files, ...), then the shape problems found while loading. Files with an
  // unknown stage name are listed by the scan but cannot be cells of a Trace; each gets an
  // UnknownStage issue with listed = false.
  std::vector<formats::DumpIssue> issues;
  std::optional<formats::Manifest> manifest;
  std::optional<uint64_t> tokens;  // tokens per cell, when the shapes say
  bool has_errors() const;
};

// Throws lockstep::Error when `dir` is missing or not a directory, or a file cannot be read
// (the error names the file); everything else is an issue in the result. `config`, when
// given, must outlive the call only.
LoadedDump load_dump(const std::filesystem::path& dir, const ModelConfig* config = nullptr);

// load_dump(...).trace, for callers that do not show issues.
Trace load_dump_trace(const std::filesystem::path& dir, const ModelConfig* config = nullptr);

// The scanner's lookup for the stage names of stages.h (MoE names included).
formats::StageLookup stage_lookup();

}  // namespace lockstep::engine
