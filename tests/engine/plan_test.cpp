#include "engine/plan.h"

#include <gtest/gtest.h>

#include <type_traits>

#include "engine/lane.h"
#include "engine/trace.h"
#include "engine/weights.h"
#include "tests/engine/tiny_model.h"
#include "tests/test_util.h"

namespace lockstep::engine {
namespace {

// Lanes walk these plans; lane.h has no implementation of its own to test.
static_assert(std::is_abstract_v<Lane>);

const FamilyRegistry& registry() {
  static const FamilyRegistry r = FamilyRegistry::load();
  return r;
}

ModelConfig hf_config(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(LOCKSTEP_TEST_DATA_DIR) / "hf" / name;
  formats::HfConfig hf = formats::read_hf_config(p);
  return config_from_hf(hf, registry().require_hf(hf.model_type, p.string()), p.string());
}

// The staged nodes of one layer, by name, in plan order.
std::vector<std::string> stages_of_layer(const Plan& plan, std::optional<uint32_t> layer) {
  std::vector<std::string> out;
  for (const Node& n : plan.nodes)
    if (n.stage && n.layer == layer) out.emplace_back(stage_name(*n.stage));
  return out;
}

const std::vector<std::string> kLlamaLayer{
    "attn_norm",          "qkv_matmul",   "q_post_rope", "k_post_rope",
    "attn_scores",        "attn_softmax", "attention",   "attn_out",
    "post_attn_residual", "ffn_norm",     "ffn_gate",    "ffn_up",
    "ffn_silu",           "ffn_swigl",    "ffn_out",     "post_ffn_residual"};

uint64_t expected_width(const ModelConfig& c, Stage s) {
  switch (stage_info(s).width) {
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

// Invariants every plan must hold, whatever the family.
void expect_well_formed(const Plan& plan, const ModelConfig& c) {
  std::set<std::pair<Stage, std::optional<uint32_t>>> cells;
  for (size_t i = 0; i < plan.nodes.size(); ++i) {
    const Node& n = plan.nodes[i];
    SCOPED_TRACE("node " + std::to_string(i) + " " + std::string(op_name(n.op)));
    EXPECT_EQ(n.index, i);
    for (size_t in : n.inputs) EXPECT_LT(in, i);
    EXPECT_EQ(n.op == Op::Embed, n.inputs.empty());
    if (n.stage) {
      const StageInfo& info = stage_info(*n.stage);
      EXPECT_FALSE(info.reserved);
      EXPECT_EQ(info.per_layer, n.layer.has_value());
      EXPECT_EQ(n.width, expected_width(c, *n.stage)) << stage_name(*n.stage);
      EXPECT_EQ(n.width_times_ctx, info.width == StageWidth::HeadsTimesCtx);
      EXPECT_TRUE(cells.insert({*n.stage, n.layer}).second) << "cell twice";
      EXPECT_EQ(plan.find(*n.stage, n.layer), &n);
    }
    if (n.layer) {
      EXPECT_LT(*n.layer, c.layers);
    }
    for (const WeightRef& w : n.weights)
      EXPECT_EQ(w.layer.has_value(), weight_role_info(w.role).per_layer);
  }
  // Within a layer, stages follow the table's order.
  for (uint32_t L = 0; L < c.layers; ++L) {
    std::optional<Stage> prev;
    for (const Node& n : plan.nodes)
      if (n.stage && n.layer == L) {
        if (prev) {
          EXPECT_LT(*prev, *n.stage);
        }
        prev = n.stage;
      }
  }
  ASSERT_GE(plan.nodes.size(), 2u);
  EXPECT_EQ(plan.nodes.front().stage, Stage::Embedding);
  EXPECT_EQ(plan.nodes.front().layer, 0u);
  EXPECT_EQ(plan.nodes.back().stage, Stage::LmHead);
  EXPECT_EQ(plan.nodes[plan.nodes.size() - 2].stage, Stage::FinalNorm);
}

TEST(Plan, Stories260KStageSequence) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Model m = open_model(test::shared_models() / "stories260K.gguf", registry());
  const Plan& p = m.plan;
  expect_well_formed(p, m.config);
  std::vector<std::string> first{"embedding"};
  first.insert(first.end(), kLlamaLayer.begin(), kLlamaLayer.end());
  EXPECT_EQ(stages_of_layer(p, 0u), first);
  for (uint32_t L = 1; L < 5; ++L) EXPECT_EQ(stages_of_layer(p, L), kLlamaLayer) << L;
  EXPECT_EQ(stages_of_layer(p, std::nullopt), (std::vector<std::string>{"final_norm", "lm_head"}));
  EXPECT_EQ(p.nodes.size(), 1u + 5u * 16u + 2u);  // every node is a stage in llama

  const Node& scores = *p.find(Stage::AttnScores, 2u);
  EXPECT_EQ(scores.width, 8u);
  EXPECT_EQ(scores.width_for(7), 56u);  // heads × ctx
  EXPECT_DOUBLE_EQ(scores.scale, 1.0 / std::sqrt(8.0));
  EXPECT_EQ(p.find(Stage::QkvMatmul, 0u)->width, 128u);
  EXPECT_EQ(p.find(Stage::KPostRope, 0u)->width, 32u);
  EXPECT_EQ(p.find(Stage::FfnSwigl, 4u)->width, 172u);
  EXPECT_EQ(p.find(Stage::LmHead, std::nullopt)->width, 512u);
  EXPECT_EQ(p.find(Stage::QkvBias, 0u), nullptr);
  EXPECT_EQ(p.find(Stage::Embedding, 1u), nullptr);

  // Data flow of one block.
  const Node& qkv = *p.find(Stage::QkvMatmul, 1u);
  EXPECT_EQ(qkv.inputs, (std::vector<size_t>{p.find(Stage::AttnNorm, 1u)->index}));
  EXPECT_EQ(qkv.weights,
            (std::vector<WeightRef>{
                {WeightRole::AttnQ, 1u}, {WeightRole::AttnK, 1u}, {WeightRole::AttnV, 1u}}));
  EXPECT_EQ(p.find(Stage::QPostRope, 1u)->part, QkvPart::Q);
  EXPECT_EQ(p.find(Stage::KPostRope, 1u)->part, QkvPart::K);
  const Node& attn = *p.find(Stage::Attention, 1u);
  EXPECT_EQ(attn.inputs, (std::vector<size_t>{p.find(Stage::AttnSoftmax, 1u)->index, qkv.index}));
  EXPECT_EQ(attn.part, QkvPart::V);
  const Node& resid = *p.find(Stage::PostAttnResidual, 1u);
  EXPECT_EQ(resid.op, Op::Add);
  EXPECT_EQ(resid.inputs, (std::vector<size_t>{p.find(Stage::PostFfnResidual, 0u)->index,
                                               p.find(Stage::AttnOut, 1u)->index}));
  const Node& swigl = *p.find(Stage::FfnSwigl, 1u);
  EXPECT_EQ(swigl.op, Op::Mul);
  EXPECT_EQ(swigl.inputs, (std::vector<size_t>{p.find(Stage::FfnSilu, 1u)->index,
                                               p.find(Stage::FfnUp, 1u)->index}));
  EXPECT_EQ(p.find(Stage::AttnNorm, 0u)->op, Op::RmsNorm);
  EXPECT_EQ(p.find(Stage::LmHead, std::nullopt)->weights,
            (std::vector<WeightRef>{{WeightRole::Output, std::nullopt}}));
}

// Every weight the plan references is bound, and every bound weight is referenced.
void expect_plan_matches_weights(const Model& m) {
  std::set<std::pair<WeightRole, uint32_t>> referenced;
  for (const Node& n : m.plan.nodes) {
    std::vector<WeightRef> refs = n.weights;
    refs.insert(refs.end(), n.biases.begin(), n.biases.end());
    for (const WeightRef& w : refs) {
      EXPECT_NE(m.weights.find(w), nullptr) << weight_role_name(w.role);
      referenced.insert({w.role, w.layer.value_or(0)});
    }
  }
  for (const auto& r : kWeightRoles)
    for (uint32_t L = 0; L < (r.per_layer ? m.config.layers : 1); ++L)
      if (m.weights.find(r.role, L) &&
          !(r.role == WeightRole::Output && m.config.tied_embeddings)) {
        EXPECT_TRUE(referenced.count({r.role, L})) << r.key << " " << L;
      }
}

TEST(Plan, QuantRefQwen2HasQkvBiasAndTiedHead) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  Model m = open_model(test::shared_models() / "quant-ref" / "ref-qwen2-Q4_K_M.gguf", registry());
  expect_well_formed(m.plan, m.config);
  expect_plan_matches_weights(m);
  for (uint32_t L = 0; L < 2; ++L) {
    const Node* bias = m.plan.find(Stage::QkvBias, L);
    ASSERT_NE(bias, nullptr);
    EXPECT_EQ(bias->op, Op::AddBias);
    EXPECT_EQ(bias->width, 512u);
    EXPECT_EQ(bias->inputs, (std::vector<size_t>{m.plan.find(Stage::QkvMatmul, L)->index}));
    EXPECT_EQ(bias->biases.size(), 3u);
    // RoPE and the V read see the biased QKV.
    EXPECT_EQ(m.plan.find(Stage::QPostRope, L)->inputs, (std::vector<size_t>{bias->index}));
    EXPECT_EQ(m.plan.find(Stage::Attention, L)->inputs[1], bias->index);
  }
  EXPECT_EQ(m.plan.find(Stage::LmHead, std::nullopt)->weights,
            (std::vector<WeightRef>{{WeightRole::TokenEmbd, std::nullopt}}));
}

TEST(Plan, Stories260KPlanMatchesWeights) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  expect_plan_matches_weights(open_model(test::shared_models() / "stories260K.gguf", registry()));
}

TEST(Plan, Starcoder2HasNoGateFromHfConfig) {
  ModelConfig c = hf_config("config-starcoder2.json");
  Plan p = build_plan(c);
  expect_well_formed(p, c);
  for (uint32_t L = 0; L < c.layers; ++L) {
    EXPECT_EQ(p.find(Stage::FfnGate, L), nullptr);
    EXPECT_EQ(p.find(Stage::FfnSwigl, L), nullptr);
    const Node& act = *p.find(Stage::FfnSilu, L);
    EXPECT_EQ(act.op, Op::Gelu);
    EXPECT_EQ(act.inputs, (std::vector<size_t>{p.find(Stage::FfnUp, L)->index}));
    EXPECT_EQ(p.find(Stage::FfnOut, L)->inputs, (std::vector<size_t>{act.index}));
    EXPECT_EQ(p.find(Stage::FfnUp, L)->biases,
              (std::vector<WeightRef>{{WeightRole::FfnUpBias, L}}));
    EXPECT_EQ(p.find(Stage::AttnOut, L)->biases,
              (std::vector<WeightRef>{{WeightRole::AttnOutputBias, L}}));
    const Node& norm = *p.find(Stage::AttnNorm, L);
    EXPECT_EQ(norm.op, Op::LayerNorm);
    EXPECT_EQ(norm.biases, (std::vector<WeightRef>{{WeightRole::AttnNormBias, L}}));
    EXPECT_NE(p.find(Stage::QkvBias, L), nullptr);
  }
  EXPECT_EQ(p.find(Stage::FinalNorm, std::nullopt)->op, Op::LayerNorm);
  EXPECT_EQ(p.find(Stage::QkvMatmul, 0u)->width, 3072u + 2u * 256u);
}

TEST(Plan, Starcoder2FromSyntheticGguf) {
  test::TinySpec s = test::TinySpec::starcoder2();
  Model m =
      open_model(test::write_tiny_gguf(test::scratch_dir("sc2plan") / "m.gguf", s), registry());
  expect_well_formed(m.plan, m.config);
  expect_plan_matches_weights(m);
  std::vector<std::string> want{
      "attn_norm",   "qkv_matmul",   "qkv_bias",  "q_post_rope", "k_post_rope",
      "attn_scores", "attn_softmax", "attention", "attn_out",    "post_attn_residual",
      "ffn_norm",    "ffn_up",       "ffn_silu",  "ffn_out",     "post_ffn_residual"};
  EXPECT_EQ(stages_of_layer(m.plan, 1u), want);
  EXPECT_EQ(m.config.rope_layout, RopeLayout::Neox);
}

TEST(Plan, RopeFreqsFeedEveryRopeNode) {
  test::TinySpec s;
  s.rope_freqs = true;
  Model m = open_model(test::write_tiny_gguf(test::scratch_dir("freqs") / "m.gguf", s), registry());
  EXPECT_TRUE(m.config.rope_freq_factors);
  ASSERT_TRUE(m.weights.rope_freqs);
  EXPECT_EQ(m.weights.rope_freqs->dims, (std::vector<uint64_t>{4}));  // head_dim 8 / 2
  expect_plan_matches_weights(m);
  size_t rope_nodes = 0;
  for (const Node& n : m.plan.nodes)
    if (n.op == Op::Rope) {
      ++rope_nodes;
      EXPECT_EQ(n.weights, (std::vector<WeightRef>{{WeightRole::RopeFreqs, std::nullopt}}));
    }
  EXPECT_EQ(rope_nodes, 2u * s.layers);
}

TEST(Plan, Qwen3NormsQAndKBeforeRope) {
  ModelConfig c = hf_config("config-qwen3.json");
  Plan p = build_plan(c);
  expect_well_formed(p, c);
  const Node& qkv = *p.find(Stage::QkvMatmul, 3u);
  const Node& q = *p.find(Stage::QPostRope, 3u);
  ASSERT_EQ(q.inputs.size(), 1u);
  const Node& norm = p.nodes[q.inputs[0]];
  EXPECT_EQ(norm.op, Op::QkNorm);
  EXPECT_FALSE(norm.stage);  // inside q_post_rope/k_post_rope: no capture point of its own
  EXPECT_EQ(norm.layer, 3u);
  EXPECT_EQ(norm.inputs, (std::vector<size_t>{qkv.index}));
  EXPECT_EQ(norm.weights,
            (std::vector<WeightRef>{{WeightRole::AttnQNorm, 3u}, {WeightRole::AttnKNorm, 3u}}));
  EXPECT_EQ(p.find(Stage::KPostRope, 3u)->inputs, (std::vector<size_t>{norm.index}));
  // V is neither normed nor rotated.
  EXPECT_EQ(p.find(Stage::Attention, 3u)->inputs[1], qkv.index);
  EXPECT_EQ(q.width, 16u * 128u);
}

TEST(Plan, GraniteScales) {
  ModelConfig c = hf_config("config-granite.json");
  Plan p = build_plan(c);
  expect_well_formed(p, c);
  EXPECT_EQ(p.find(Stage::Embedding, 0u)->scale, 12.0);
  EXPECT_EQ(p.find(Stage::AttnScores, 5u)->scale, 0.015625);
  EXPECT_EQ(p.find(Stage::PostAttnResidual, 5u)->scale, 0.22);
  EXPECT_EQ(p.find(Stage::PostFfnResidual, 39u)->scale, 0.22);
  EXPECT_EQ(p.find(Stage::LmHead, std::nullopt)->scale, 1.0 / 8.0);
  // Tied: the head reads the embedding.
  EXPECT_EQ(p.find(Stage::LmHead, std::nullopt)->weights[0].role, WeightRole::TokenEmbd);
}

TEST(Plan, EveryHfConfigBuilds) {
  for (const char* name : {"config-llama.json", "config-mistral.json", "config-qwen2.json",
                           "config-qwen3.json", "config-granite.json", "config-starcoder2.json"}) {
    SCOPED_TRACE(name);
    ModelConfig c = hf_config(name);
    expect_well_formed(build_plan(c), c);
  }
}

TEST(Plan, RefusesAnInvalidConfig) {
  ModelConfig c = hf_config("config-llama.json");
  c.kv_heads = 5;
  Error e = test::expect_error([&] { build_plan(c); });
  EXPECT_NE(std::string(e.what()).find("num_key_value_heads"), std::string::npos) << e.what();
}

// CapturePlan and Trace live in trace.h; tested here beside the plan whose cells they name.
TEST(Trace, CapturePlanAllAndNone) {
  CapturePlan all = CapturePlan::parse("all");
  EXPECT_TRUE(all.wants(Stage::AttnNorm, 17u));
  EXPECT_TRUE(all.wants(Stage::Embedding, 0u));
  EXPECT_TRUE(all.wants(Stage::LmHead, std::nullopt));
  CapturePlan none = CapturePlan::none();
  EXPECT_TRUE(none.empty());
  EXPECT_FALSE(none.wants(Stage::LmHead, std::nullopt));
  EXPECT_FALSE(none.wants(Stage::AttnNorm, 0u));
}

TEST(Trace, CapturePlanStagesAndRanges) {
  CapturePlan p = CapturePlan::parse("attn_norm,lm_head@0-3");
  for (uint32_t L = 0; L < 4; ++L) EXPECT_TRUE(p.wants(Stage::AttnNorm, L)) << L;
  EXPECT_FALSE(p.wants(Stage::AttnNorm, 4u));
  EXPECT_TRUE(p.wants(Stage::LmHead, std::nullopt));
  EXPECT_FALSE(p.wants(Stage::FinalNorm, std::nullopt));
  EXPECT_FALSE(p.wants(Stage::QkvMatmul, 0u));

  CapturePlan q = CapturePlan::parse(" attn_scores@2 ; ffn_out, ffn_up@0-1;final_norm");
  EXPECT_TRUE(q.wants(Stage::AttnScores, 2u));
  EXPECT_FALSE(q.wants(Stage::AttnScores, 1u));
  EXPECT_TRUE(q.wants(Stage::FfnOut, 1u));
  EXPECT_TRUE(q.wants(Stage::FfnUp, 0u));
  EXPECT_FALSE(q.wants(Stage::FfnUp, 2u));
  EXPECT_TRUE(q.wants(Stage::FinalNorm, std::nullopt));
  EXPECT_FALSE(q.wants(Stage::LmHead, std::nullopt));

  CapturePlan r = CapturePlan::parse("all@1");
  EXPECT_TRUE(r.wants(Stage::PostFfnResidual, 1u));
  EXPECT_FALSE(r.wants(Stage::PostFfnResidual, 0u));
  EXPECT_TRUE(r.wants(Stage::LmHead, std::nullopt));  // whole-model stages ignore ranges
}

TEST(Trace, CapturePlanRejectsBadSpecs) {
  for (const char* bad : {"", "attn_nrm", "moe_router", "attn_norm@", "attn_norm@3-1",
                          "attn_norm@x", "attn_norm,,lm_head", "attn_norm@1-2-3"}) {
    SCOPED_TRACE(bad);
    Error e = test::expect_error([&] { CapturePlan::parse(bad); });
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
  Error e = test::expect_error([] { CapturePlan::parse("attn_nrm"); });
  EXPECT_NE(std::string(e.what()).find("attn_nrm"), std::string::npos);
  EXPECT_NE(std::string(e.what()).find("post_ffn_residual"), std::string::npos);  // lists names
}

TEST(Trace, CellsInPlanOrder) {
  Trace t;
  t.put({Stage::LmHead, std::nullopt}, {{2, 3}, test::random_nonzero(6, 1u)});
  t.put({Stage::AttnNorm, 1u}, {{2, 4}, test::random_nonzero(8, 2u)});
  t.put({Stage::FfnOut, 0u}, {{2, 4}, test::random_nonzero(8, 3u)});
  t.put({Stage::AttnScores, 0u},
        {{4, 2, 2}, test::random_nonzero(16, 4u)});  // [heads, tokens, ctx]
  std::vector<std::string> order;
  for (const auto& [cell, tensor] : t.cells()) order.push_back(cell_name(cell));
  EXPECT_EQ(order,
            (std::vector<std::string>{"attn_scores@0", "ffn_out@0", "attn_norm@1", "lm_head"}));
  const Tensor* s = t.find({Stage::AttnScores, 0u});
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->shape, (std::vector<uint64_t>{4, 2, 2}));
  EXPECT_EQ(t.find({Stage::AttnScores, 1u}), nullptr);
  // A replaced cell keeps one entry.
  t.put({Stage::FfnOut, 0u}, {{1, 4}, test::random_nonzero(4, 5u)});
  EXPECT_EQ(t.size(), 4u);
  EXPECT_EQ(t.find({Stage::FfnOut, 0u})->shape, (std::vector<uint64_t>{1, 4}));
}

TEST(Trace, PutRejectsShapeMismatch) {
  Trace t;
  Error e = test::expect_error([&] {
    t.put({Stage::AttnNorm, 2u}, {{3, 4}, test::random_nonzero(11, 1u)});
  });
  EXPECT_NE(std::string(e.what()).find("attn_norm@2"), std::string::npos) << e.what();
  EXPECT_EQ(t.size(), 0u);
}

}  // namespace
}  // namespace lockstep::engine
