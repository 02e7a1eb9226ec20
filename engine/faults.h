#pragma once
// Faults: deliberately planted bugs, each a copy of a bug real engines shipped, so that a demo
// shows a divergence and the tests prove the bisector finds it. One table describes them (name,
// what real bug it mimics, the lanes that can carry it, the stages it can be planted at, the
// default cell and the diagnosis it should produce); a FaultSpec names one fault and its
// target; resolve_fault() turns a spec into the plan nodes a lane must corrupt.
//
// The text form of a spec is "NAME[@stage[,layer]]": "gemv_transposed@lm_head",
// "rms_eps_wrong@attn_norm,3", "silu_as_gelu" (the default stage, in every layer).

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/plan.h"
#include "engine/trace.h"

namespace lockstep::engine {

// The bug classes DESIGN.md's diagnosis tells apart.
enum class BugClass : uint8_t {
  Layout,        // transposed / mis-strided layout
  Scale,         // missing or extra scale
  Bias,          // bias missing or doubled
  Position,      // RoPE / position / KV cache
  HeadMapping,   // GQA head mapping (or RoPE pairing: error periodic in channel)
  Overflow,      // NaN/Inf: softmax without max subtraction, fp16 accumulation
  PartialWrite,  // zeros past some index
};
std::string_view bug_class_name(BugClass c);   // "layout", "scale", ... (stable, for reports)
std::string_view bug_class_label(BugClass c);  // "transposed/mis-strided layout", ...

enum class FaultKind : uint8_t {
  GemvTransposed,
  GqaHeadMap,
  RopeNeoxSwap,
  DropQkvBias,
  RmsEpsWrong,
  KvCacheOffByOne,
  SoftmaxNoMax,
  SiluAsGelu,
  AttnScaleMissing,
  PartialWrite,
};

struct FaultInfo {
  FaultKind kind;
  std::string_view name;
  std::string_view description;             // what it does and which real bug it mimics
  std::span<const std::string_view> lanes;  // lanes that can carry it
  std::span<const Stage> stages;            // stages it can be planted at
  Stage default_stage;                      // planted in every layer when no target is given
  BugClass diagnosis;
  bool positions_only;  // shows only at positions > 0 (the first token's rows are untouched)
};

std::span<const FaultInfo> fault_registry();  // in FaultKind order
const FaultInfo& fault_info(FaultKind kind);
std::optional<FaultKind> find_fault(std::string_view name);
std::vector<std::string> fault_names();

// The eps rms_eps_wrong normalizes with, in place of the model's (1e-5 / 1e-6): see its
// description for why it is this large.
inline constexpr double kWrongNormEps = 1e-2;
// partial_write: the fraction of each output row written (the rest is left zero).
inline constexpr double kPartialWriteFraction = 0.5;

struct FaultSpec {
  FaultKind kind = FaultKind::GemvTransposed;
  Stage stage = Stage::LmHead;
  std::optional<uint32_t> layer;  // per-layer stage: none = every layer

  // Throws lockstep::Error naming the problem, listing the valid fault names for an unknown
  // name and the fault's valid stages for a stage it cannot be planted at.
  static FaultSpec parse(std::string_view text);
  static FaultSpec defaults(FaultKind kind);  // the default stage, every layer
  std::string str() const;                    // parse(str()) == *this
  // The first cell it corrupts in plan order (layer 0 when every layer is targeted).
  Cell first_cell() const;
  bool operator==(const FaultSpec&) const = default;
};

// Per plan node: whether `spec` corrupts it. Throws lockstep::Error when the spec cannot show
// on this model: no such cell (drop_qkv_bias on a family without QKV bias, a layer past the
// last), an op the fault does not apply to (silu_as_gelu on a GELU MLP), or a model on which the
// bug computes the same thing (gqa_head_map without grouped heads, attn_scale_missing with an
// attention scale of 1, rope_neox_swap with one rotated pair per head).
std::vector<bool> resolve_fault(const FaultSpec& spec, const Plan& plan, const ModelConfig& config);

// One line per fault, for `--list-faults`: name, default target, diagnosis, description.
std::string fault_list_text();

}  // namespace lockstep::engine
