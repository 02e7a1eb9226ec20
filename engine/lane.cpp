#include "engine/lane.h"

#include "formats/error.h"

namespace lockstep::engine {

void fail_node(std::string_view lane, const Node& node, const std::string& what) {
  std::string where = std::string(lane) + " lane, node " + std::to_string(node.index) + " (" +
                      std::string(op_name(node.op));
  if (node.stage) where += " " + cell_name({*node.stage, node.layer});
  throw Error(where + "): " + what);
}

ReplayInputs check_replay_inputs(std::string_view lane, const Model& m, const Node& node,
                                 std::span<const Tensor> inputs) {
  const size_t expected_inputs = node.op == Op::Embed ? 1 : node.inputs.size();
  if (inputs.size() != expected_inputs)
    fail_node(lane, node, "expected " + std::to_string(expected_inputs) + " inputs, found " +
                              std::to_string(inputs.size()));
  if (inputs[0].shape.empty()) fail_node(lane, node, "input 0 has no shape");
  // Tokens: dim 0 of a [tokens, width] input, dim 1 of [heads, tokens, ctx].
  const bool probs_in = node.op == Op::Softmax || node.op == Op::AttnWeightedSum;
  if (probs_in && inputs[0].shape.size() != 3)
    fail_node(lane, node, "input 0 must be [heads, tokens, ctx]");
  ReplayInputs r;
  r.tokens = probs_in ? inputs[0].shape[1] : inputs[0].shape[0];
  const uint64_t n = r.tokens;
  if (node.op == Op::Embed) {
    for (float v : inputs[0].data) r.ids.push_back(static_cast<int32_t>(v));
    if (r.ids.size() != n) fail_node(lane, node, "token ids must be a [tokens] tensor");
    return r;
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool ctx_shaped = probs_in && i == 0;
    const uint64_t expect =
        ctx_shaped ? m.config.heads * n * n : n * m.plan.nodes.at(node.inputs.at(i)).width;
    if (inputs[i].data.size() != expect || inputs[i].elements() != expect)
      fail_node(lane, node, "input " + std::to_string(i) + " holds " +
                                std::to_string(inputs[i].data.size()) + " values, expected " +
                                std::to_string(expect) + " for " + std::to_string(n) + " tokens");
  }
  return r;
}

std::vector<uint64_t> output_shape(const ModelConfig& c, const Node& node, uint64_t tokens,
                                   uint64_t ctx) {
  return node.width_times_ctx ? std::vector<uint64_t>{c.heads, tokens, ctx}
                              : std::vector<uint64_t>{tokens, node.width};
}

}  // namespace lockstep::engine
