#pragma once
// Capture: which cells a forward pass should copy out (CapturePlan), and the copies
// themselves (Trace: cell → f32 tensor with its shape).

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/stages.h"

namespace lockstep::engine {

// One (stage, layer) pair; whole-model stages have no layer.
struct Cell {
  Stage stage = Stage::Embedding;
  std::optional<uint32_t> layer;
  bool operator==(const Cell&) const = default;
  // Plan order: layer by layer, stages in table order within a layer, whole-model stages last.
  bool operator<(const Cell& o) const;
};
std::string cell_name(const Cell& c);  // "attn_norm@3", "lm_head"
// cell_name's inverse: a per-layer stage needs "@layer", a whole-model stage takes none.
// Throws lockstep::Error naming what is wrong.
Cell parse_cell(std::string_view name);

// A dense f32 tensor, row-major, innermost dimension last.
struct Tensor {
  std::vector<uint64_t> shape;
  std::vector<float> data;
  uint64_t elements() const;
};

// Which cells to capture. Text form: groups separated by ';', each a comma-separated list of
// stage names (or "all") with an optional "@N" or "@N-M" (inclusive) restricting the group's
// per-layer stages to those layers; whole-model stages ignore the range:
// "all", "attn_norm,lm_head@0-3" (attn_norm in layers 0..3, and lm_head),
// "attn_scores@2;ffn_out,ffn_up@0-1;final_norm".
class CapturePlan {
 public:
  static CapturePlan none() { return {}; }
  static CapturePlan all();
  // Throws lockstep::Error naming the item for an unknown stage, a reserved (MoE) stage, a
  // layer range on a whole-model stage, or a malformed range.
  static CapturePlan parse(std::string_view spec);

  // Every stage (or one stage) in layers [first, last]; no range: every layer.
  void add_all(std::optional<std::pair<uint32_t, uint32_t>> layers = std::nullopt);
  void add(Stage stage, std::optional<std::pair<uint32_t, uint32_t>> layers = std::nullopt);

  bool wants(Stage stage, std::optional<uint32_t> layer) const;
  bool wants(const Cell& c) const { return wants(c.stage, c.layer); }
  bool empty() const { return rules_.empty(); }

 private:
  struct Rule {
    std::optional<Stage> stage;  // none: every stage
    std::optional<std::pair<uint32_t, uint32_t>> layers;
  };
  std::vector<Rule> rules_;
};

// Every captured tensor of one lane for one run. Shapes: [tokens, width], except
// attn_scores and attn_softmax: [heads, tokens, ctx].
class Trace {
 public:
  std::string lane;  // the lane that produced it
  uint32_t pos = 0;  // position of the first token
  std::vector<int32_t> tokens;

  // Stores a copy, replacing an earlier tensor of the same cell. Throws lockstep::Error
  // when data.size() does not match the shape.
  void put(const Cell& cell, Tensor t);
  const Tensor* find(const Cell& cell) const;
  const std::map<Cell, Tensor>& cells() const { return cells_; }  // plan order
  size_t size() const { return cells_.size(); }
  void clear() { cells_.clear(); }

 private:
  std::map<Cell, Tensor> cells_;
};

// The trace one prefill of every step's tokens would hold, from the traces of consecutive
// forwards (decode steps, or chunks of a prefill) of one lane: [tokens, width] cells joined
// along tokens; [heads, tokens, ctx] cells joined along tokens and widened to the last step's
// context, the keys a step could not see filled as a prefill's causal mask holds them (-inf in
// attn_scores, 0 in attn_softmax). Throws lockstep::Error when the steps are not consecutive
// (each pos = the previous pos + its tokens), hold different cells, or disagree in width.
Trace stitch_steps(std::span<const Trace> steps);

}  // namespace lockstep::engine
