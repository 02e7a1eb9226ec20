#pragma once
// A lane: one source of stage tensors for a run (ref, cpu, cuda, cuda-graph, dump:<dir>).
// Every lane walks the same Plan, so cells and nodes mean the same thing everywhere.

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/plan.h"
#include "engine/trace.h"
#include "engine/weights.h"

namespace lockstep::engine {

// The logits of the last `tokens` tokens of a forward (every token, unless the lane was told
// set_last_logits_only).
struct Logits {
  uint64_t tokens = 0;
  uint64_t vocab = 0;
  std::vector<float> values;  // [tokens, vocab]
  std::span<const float> row(uint64_t t) const { return {values.data() + t * vocab, vocab}; }
  std::span<const float> last() const { return row(tokens - 1); }
};

class Lane {
 public:
  virtual ~Lane() = default;

  virtual std::string name() const = 0;
  // Uploads or prepares the model's weights; the model outlives the lane's use of it.
  virtual void load(const Model& model) = 0;
  // Clears the KV cache; the next forward starts at position 0.
  virtual void reset() = 0;
  // Runs `tokens` at positions pos.. (a prefill of many tokens or a one-token decode step),
  // appending to the KV cache, and copies into `trace` every cell `capture` asks for.
  // Capturing must not change the logits.
  virtual Logits forward(std::span<const int32_t> tokens, uint32_t pos, const CapturePlan& capture,
                         Trace& trace) = 0;
  // Runs one node on given inputs (one Tensor per node.inputs, in order; Embed takes the
  // token ids as a [tokens] tensor) and returns its output, so that a node's own error can
  // be told from the error it inherits. Attention nodes take inputs covering the whole
  // context (captured from a prefill at position 0), so no KV cache is involved.
  virtual Tensor replay(const Node& node, std::span<const Tensor> inputs) = 0;

  // Whether forward() returns logits for the last token only: a generation's prefill needs no
  // others, and the lm_head of a large vocabulary is the biggest matmul. A capture of lm_head
  // still holds every token.
  void set_last_logits_only(bool on) { last_logits_only_ = on; }
  bool last_logits_only() const { return last_logits_only_; }

  // Called as forward() reaches each node, for progress displays (the stage and layer a long
  // run is at). Lanes that run a whole graph at once may call it for none.
  using NodeObserver = std::function<void(const Node&)>;
  void set_node_observer(NodeObserver observer) { observer_ = std::move(observer); }

 protected:
  void observe(const Node& node) const {
    if (observer_) observer_(node);
  }

 private:
  bool last_logits_only_ = false;
  NodeObserver observer_;
};

// For lane implementations: a lockstep::Error naming the lane, the node and its cell.
[[noreturn]] void fail_node(std::string_view lane, const Node& node, const std::string& what);

// replay()'s inputs checked against the plan: the count, and each one's size for the token
// count (dim 0 of [tokens, width], dim 1 of [heads, tokens, ctx]); Embed's token ids.
struct ReplayInputs {
  uint64_t tokens = 0;
  std::vector<int32_t> ids;  // Embed only
};
ReplayInputs check_replay_inputs(std::string_view lane, const Model& model, const Node& node,
                                 std::span<const Tensor> inputs);

// The shape a capture of `node` has: [tokens, width], or [heads, tokens, ctx].
std::vector<uint64_t> output_shape(const ModelConfig& config, const Node& node, uint64_t tokens,
                                   uint64_t ctx);

}  // namespace lockstep::engine
