#pragma once
// What the lane tests share: models opened once per binary, llama.cpp's reference dumps, logit
// agreement, full-plan replay, and prefill shorthands.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/lane.h"
#include "engine/metrics.h"
#include "engine/sampler.h"
#include "formats/aprt.h"
#include "tests/test_util.h"

namespace lockstep::engine::test_lanes {

inline const FamilyRegistry& registry() {
  static const FamilyRegistry r = FamilyRegistry::load();
  return r;
}

// Models are opened once per binary; lanes point into them.
inline const Model& shared_model(const std::string& rel) {
  static std::map<std::string, std::unique_ptr<Model>> models;
  auto& m = models[rel];
  if (!m) m = std::make_unique<Model>(open_model(test::shared_models() / rel, registry()));
  return *m;
}

// reference/<name>: llama.cpp's prompt tokens, greedy continuation and logits.
struct Reference {
  std::vector<int32_t> tokens;
  std::vector<int32_t> generated;
  uint64_t vocab = 0;
  std::vector<float> logits;  // [tokens, vocab]  llama.cpp's, every prompt position
};

inline Reference reference(const std::string& name) {
  std::filesystem::path dir = test::shared_models() / "reference" / name;
  nlohmann::json j = nlohmann::json::parse(test::read_file(dir / "llamacpp.json"));
  Reference r;
  r.tokens = j.at("tokens").get<std::vector<int32_t>>();
  r.generated = j.at("generated").get<std::vector<int32_t>>();
  r.vocab = j.at("n_vocab").get<uint64_t>();
  r.logits = formats::read_aprt(dir / "lm_head.bin").values;
  return r;
}

struct Agreement {
  double max_rel = 0.0;  // max over positions of ‖ours − theirs‖ / ‖theirs‖
  double mean_kl = 0.0;  // mean over positions of KL(p_theirs ‖ p_ours)
  double top1 = 0.0;     // fraction of positions whose argmax agrees
};

inline Agreement agreement(const Logits& ours, std::span<const float> theirs) {
  EXPECT_EQ(theirs.size(), ours.values.size());
  Agreement a;
  if (theirs.size() != ours.values.size()) return a;
  const uint64_t v = ours.vocab;
  for (uint64_t t = 0; t < ours.tokens; ++t) {
    std::span<const float> x = ours.row(t), y = theirs.subspan(t * v, v);
    a.max_rel = std::max(a.max_rel, relative_rms(x, y));
    a.mean_kl += kl_divergence(y, x) / static_cast<double>(ours.tokens);
    a.top1 += (argmax(x) == argmax(y) ? 1.0 : 0.0) / static_cast<double>(ours.tokens);
  }
  return a;
}

inline Logits prefill(Lane& lane, std::span<const int32_t> tokens, const CapturePlan& capture,
                      Trace& trace) {
  lane.reset();
  return lane.forward(tokens, 0, capture, trace);
}

inline Logits prefill(Lane& lane, std::span<const int32_t> tokens) {
  Trace trace;
  return prefill(lane, tokens, CapturePlan::none(), trace);
}

// Greedy continuation of `prompt` for `count` tokens, one decode step per token.
inline std::vector<int32_t> greedy(Lane& lane, std::span<const int32_t> prompt, size_t count) {
  Trace trace;
  Logits logits = prefill(lane, prompt, CapturePlan::none(), trace);
  std::vector<int32_t> out;
  uint32_t pos = static_cast<uint32_t>(prompt.size());
  while (out.size() < count) {
    out.push_back(argmax(logits.last()));
    logits = lane.forward(std::span(&out.back(), 1), pos++, CapturePlan::none(), trace);
    EXPECT_EQ(logits.tokens, 1u);
  }
  return out;
}

// The inputs `node` read in the forward that `trace` captured: token ids for Embed, captures,
// and for unstaged nodes (Qwen3's Q/K norm) their outputs in `unstaged`. nullopt, with a test
// failure, when a capture is missing.
inline std::optional<std::vector<Tensor>> trace_inputs(const Model& model, const Node& node,
                                                       std::span<const int32_t> tokens,
                                                       const Trace& trace,
                                                       const std::map<size_t, Tensor>& unstaged) {
  std::vector<Tensor> inputs;
  if (node.op == Op::Embed) {
    Tensor ids;
    ids.shape = {tokens.size()};
    ids.data.assign(tokens.begin(), tokens.end());
    inputs.push_back(ids);
  }
  for (size_t in : node.inputs) {
    const Node& src = model.plan.nodes[in];
    const Tensor* t = src.stage ? trace.find({*src.stage, src.layer}) : &unstaged.at(in);
    if (!t) {
      ADD_FAILURE() << "no capture of node " << in;
      return std::nullopt;
    }
    inputs.push_back(*t);
  }
  return inputs;
}

// Replays every node of `model`'s plan on the outputs `trace` captured (an unstaged node, such
// as Qwen3's Q/K norm, on the replayed output before it) and checks each staged node's output
// against its capture bit for bit. Returns the ops replayed.
inline std::set<Op> replay_all(Lane& lane, const Model& model, std::span<const int32_t> tokens,
                               const Trace& trace) {
  std::map<size_t, Tensor> unstaged;  // replayed outputs of nodes no capture names
  std::set<Op> ops;
  for (const Node& node : model.plan.nodes) {
    std::optional<std::vector<Tensor>> inputs = trace_inputs(model, node, tokens, trace, unstaged);
    if (!inputs) return ops;
    Tensor got = lane.replay(node, *inputs);
    ops.insert(node.op);
    if (!node.stage) {
      unstaged[node.index] = std::move(got);
      continue;
    }
    const Tensor* expected = trace.find({*node.stage, node.layer});
    std::string cell = cell_name({*node.stage, node.layer});
    if (!expected) ADD_FAILURE() << "no capture of " << cell;
    if (!expected) return ops;
    EXPECT_EQ(got.shape, expected->shape) << cell;
    if (got.data.size() != expected->data.size()) continue;
    EXPECT_EQ(0,
              std::memcmp(got.data.data(), expected->data.data(), got.data.size() * sizeof(float)))
        << cell << " " << op_name(node.op);
  }
  return ops;
}

// Random inputs for replaying `node` on `tokens` tokens: token ids below `vocab` for Embed,
// N(0, 1) rows for [tokens, width] inputs, and for [heads, tokens, ctx] inputs causal rows:
// scores with -inf past the query, or (for the weighted sum) probabilities summing to one.
inline std::vector<Tensor> random_replay_inputs(const Model& model, const Node& node,
                                                uint64_t tokens, uint64_t vocab,
                                                std::mt19937_64& rng) {
  const uint64_t n = tokens, heads = model.config.heads;
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<Tensor> inputs;
  if (node.op == Op::Embed) {
    Tensor ids{{n}, {}};
    for (uint64_t t = 0; t < n; ++t) ids.data.push_back(static_cast<float>(rng() % vocab));
    inputs.push_back(ids);
  }
  for (size_t i = 0; i < node.inputs.size(); ++i) {
    const Node& src = model.plan.nodes[node.inputs[i]];
    Tensor t;
    if (src.width_times_ctx) {
      t.shape = {heads, n, n};
      t.data.resize(heads * n * n);
      for (uint64_t r = 0; r < heads * n; ++r) {
        const uint64_t q = r % n;
        double sum = 0.0;
        for (uint64_t j = 0; j < n; ++j) {
          float v = j > q ? -INFINITY : normal(rng);
          if (node.op == Op::AttnWeightedSum) v = j > q ? 0.0f : std::exp(v);
          t.data[r * n + j] = v;
          if (j <= q) sum += v;
        }
        if (node.op == Op::AttnWeightedSum)
          for (uint64_t j = 0; j <= q; ++j) t.data[r * n + j] /= static_cast<float>(sum);
      }
    } else {
      t.shape = {n, src.width};
      for (uint64_t k = 0; k < n * src.width; ++k) t.data.push_back(normal(rng));
    }
    inputs.push_back(std::move(t));
  }
  return inputs;
}

}  // namespace lockstep::engine::test_lanes
