#include "engine/diagnose.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu_lane.h"
#include "engine/ref_lane.h"
#include "engine/synthetic_model.h"
#include "tests/engine/fault_cases.h"
#include "tests/engine/lane_test_util.h"

namespace lockstep::engine {
namespace {

using namespace test_lanes;

const std::vector<int32_t> kPrompt{1, 17, 42, 99, 7, 250};
constexpr double kThreshold = 1e-3;
// softmax_no_max on small scores only rounds to fp16 (~3e-4 relative): under 1e-3.
constexpr double kRoundingThreshold = 1e-4;

// ---- hand-made tensors --------------------------------------------------------------------

// 4 query heads of 16 channels, 2 KV heads.
ModelConfig small_config() {
  ModelConfig c;
  c.family = "llama";
  c.hidden = 64;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = 2;
  c.head_dim = 16;
  c.ffn = 128;
  c.vocab = 300;
  c.rope_dims = 16;
  return c;
}

Tensor normal(std::vector<uint64_t> shape, uint32_t seed, float sd = 1.0f) {
  Tensor t;
  t.shape = std::move(shape);
  uint64_t n = 1;
  for (uint64_t d : t.shape) n *= d;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sd);
  for (uint64_t i = 0; i < n; ++i) t.data.push_back(dist(rng));
  return t;
}

// Causal attention scores [heads, tokens, tokens]: -inf past the query.
Tensor scores(uint64_t heads, uint64_t tokens, uint32_t seed) {
  Tensor t = normal({heads, tokens, tokens}, seed);
  for (uint64_t h = 0; h < heads; ++h)
    for (uint64_t q = 0; q < tokens; ++q)
      for (uint64_t j = q + 1; j < tokens; ++j) t.data[(h * tokens + q) * tokens + j] = -INFINITY;
  return t;
}

Tensor softmax(const Tensor& s) {
  Tensor p = s;
  const uint64_t ctx = s.shape.back();
  for (uint64_t r = 0; r < s.data.size() / ctx; ++r) {
    float* row = &p.data[r * ctx];
    double mx = -INFINITY, sum = 0;
    for (uint64_t j = 0; j < ctx; ++j) mx = std::max(mx, double(row[j]));
    for (uint64_t j = 0; j < ctx; ++j) sum += std::exp(double(row[j]) - mx);
    for (uint64_t j = 0; j < ctx; ++j) row[j] = float(std::exp(double(row[j]) - mx) / sum);
  }
  return p;
}

// Round to nearest even with `bits` mantissa bits (10: fp16 normals and subnormals; 7: bf16).
float round_mantissa(float x, int bits, int min_exp) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e = 0;
  std::frexp(x, &e);
  const double q = std::ldexp(1.0, std::max(e - 1 - bits, min_exp));
  return float(std::nearbyint(double(x) / q) * q);
}
float to_f16(float x) {
  return round_mantissa(x, 10, -24);
}
float to_bf16(float x) {
  return round_mantissa(x, 7, -133);
}

std::string explain(const Diagnosis& d) {
  std::string s = d.headline;
  for (const std::string& e : d.evidence) s += "\n  " + e;
  return s;
}

Diagnosis run(Stage stage, const Tensor& a, const Tensor& b, uint32_t pos = 0,
              double threshold = kThreshold) {
  return diagnose({stage, 0u}, a, b, small_config(), pos, threshold);
}

TEST(DiagnoseRules, AgreeingTensorsDoNotDiverge) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  for (float& v : b.data) v *= 1.0f + 1e-6f;
  const Diagnosis d = run(Stage::AttnOut, a, b);
  EXPECT_FALSE(d.diverges);
  EXPECT_EQ(d.bug, std::nullopt) << explain(d);
  EXPECT_NE(d.headline.find("no divergence"), std::string::npos) << d.headline;
}

TEST(DiagnoseRules, ShapeMismatchHasNoClass) {
  const Diagnosis d = run(Stage::AttnOut, normal({6, 64}, 1), normal({6, 32}, 2));
  EXPECT_EQ(d.bug, std::nullopt);
  EXPECT_TRUE(d.diverges);
  EXPECT_NE(d.headline.find("no diagnosis"), std::string::npos) << d.headline;
}

TEST(DiagnoseRules, UncorrelatedOrMisStridedIsLayout) {
  const Tensor a = normal({6, 64}, 1);
  const Diagnosis random = run(Stage::FfnUp, a, normal({6, 64}, 2));
  EXPECT_EQ(random.bug, BugClass::Layout) << explain(random);
  EXPECT_LT(std::abs(random.cosine), kLowCosine);
  EXPECT_GE(random.sign_flip_top, kSignFlipShare);
  // Read with the wrong stride: b[t][c] = a's elements in transposed order.
  Tensor b = a;
  for (uint64_t i = 0; i < 6 * 64; ++i) b.data[i] = a.data[(i % 6) * 64 + i / 6];
  const Diagnosis strided = run(Stage::FfnUp, a, b);
  EXPECT_EQ(strided.bug, BugClass::Layout) << explain(strided);
  EXPECT_NE(strided.headline.find("largest differences flip sign"), std::string::npos);
}

TEST(DiagnoseRules, LowCosineAtVeryDifferentNormsIsNotLayout) {
  const Tensor a = normal({6, 64}, 1);
  const Diagnosis d = run(Stage::FfnUp, a, normal({6, 64}, 2, 5.0f));
  EXPECT_EQ(d.bug, std::nullopt) << explain(d);
}

TEST(DiagnoseRules, ScaleErrorsAreScaleNotLayout) {
  const Tensor a = normal({6, 64}, 1);
  for (float f : {0.5f, 1.01f, 4.0f, -1.0f}) {
    Tensor b = a;
    for (float& v : b.data) v *= f;
    const Diagnosis d = run(Stage::AttnNorm, a, b);
    EXPECT_EQ(d.bug, BugClass::Scale) << f << ": " << explain(d);
    EXPECT_NEAR(d.scale, f, 1e-5);
  }
  // One scale per token (a norm's eps), up and down: no single factor explains it.
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 0; i < 64; ++i) b.data[t * 64 + i] *= t % 2 ? 0.99f : 1.01f;
  const Diagnosis d = run(Stage::AttnNorm, a, b);
  EXPECT_EQ(d.bug, BugClass::Scale) << explain(d);
  EXPECT_GT(*d.token_scale_share, 0.99);
  EXPECT_LT(d.scale_share, kScaleShare);
  EXPECT_NE(d.headline.find("one scale per token"), std::string::npos) << d.headline;
}

TEST(DiagnoseRules, NoiseAtUnitNormRatioIsNotScale) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  const Tensor noise = normal({6, 64}, 3, 0.01f);
  for (size_t i = 0; i < b.data.size(); ++i) b.data[i] += noise.data[i];
  const Diagnosis d = run(Stage::AttnNorm, a, b);
  EXPECT_TRUE(d.diverges);
  EXPECT_GT(d.cosine, 0.99);
  EXPECT_EQ(d.bug, std::nullopt) << explain(d);
}

TEST(DiagnoseRules, OffsetPerChannelIsBias) {
  const Tensor a = normal({6, 64}, 1);
  const Tensor offset = normal({64}, 4, 0.02f);
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 0; i < 64; ++i) b.data[t * 64 + i] += offset.data[i];
  const Diagnosis d = run(Stage::AttnOut, a, b);
  EXPECT_EQ(d.bug, BugClass::Bias) << explain(d);
  EXPECT_GT(*d.offset_share, 0.999);
  // A small offset is also high cosine at a norm ratio != 1: it must not read as a scale.
  EXPECT_GT(d.cosine, 0.99);

  // One token: an offset cannot be told apart.
  Tensor a1 = normal({1, 64}, 1), b1 = a1;
  for (uint64_t i = 0; i < 64; ++i) b1.data[i] += offset.data[i];
  const Diagnosis one = run(Stage::AttnOut, a1, b1);
  EXPECT_TRUE(one.diverges);
  EXPECT_NE(one.bug, BugClass::Bias) << explain(one);
  EXPECT_NE(one.bug, BugClass::Position) << explain(one);
  EXPECT_EQ(one.offset_share, std::nullopt);

  // An offset that varies per token is no bias.
  Tensor b2 = a;
  const Tensor varying = normal({6, 64}, 5, 0.02f);
  for (size_t i = 0; i < b2.data.size(); ++i) b2.data[i] += varying.data[i];
  EXPECT_NE(run(Stage::AttnOut, a, b2).bug, BugClass::Bias);
}

TEST(DiagnoseRules, ErrorOnlyPastPositionZeroIsPosition) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  const Tensor noise = normal({6, 64}, 6, 0.3f);
  for (size_t i = 64; i < b.data.size(); ++i) b.data[i] += noise.data[i];
  const Diagnosis d = run(Stage::QPostRope, a, b);
  EXPECT_EQ(d.bug, BugClass::Position) << explain(d);
  EXPECT_EQ(*d.first_position_relative_rms, 0.0);
  EXPECT_NE(d.headline.find("position 0 agrees"), std::string::npos) << d.headline;

  // Row 0 at position 3 says nothing about positions; nor does a single token.
  EXPECT_NE(run(Stage::QPostRope, a, b, 3).bug, BugClass::Position);
  EXPECT_EQ(run(Stage::QPostRope, a, b, 3).first_position_relative_rms, std::nullopt);
  Tensor a1 = normal({1, 64}, 1), b1 = normal({1, 64}, 2);
  EXPECT_NE(run(Stage::QPostRope, a1, b1).bug, BugClass::Position);
}

TEST(DiagnoseRules, AttentionScoresWithMasks) {
  const Tensor a = scores(4, 6, 1);
  // Masked -inf in both sides is not new non-finite, and equal scores do not diverge.
  const Diagnosis same = run(Stage::AttnScores, a, a);
  EXPECT_EQ(same.new_nonfinite, 0u);
  EXPECT_FALSE(same.diverges) << explain(same);
  EXPECT_EQ(same.bug, std::nullopt);

  // Every query row but each head's row 0 changed: position.
  Tensor b = a;
  for (uint64_t h = 0; h < 4; ++h)
    for (uint64_t q = 1; q < 6; ++q)
      for (uint64_t j = 0; j <= q; ++j) b.data[(h * 6 + q) * 6 + j] += 0.5f * float(j % 3) - 0.4f;
  const Diagnosis pos = run(Stage::AttnScores, a, b);
  EXPECT_EQ(pos.new_nonfinite, 0u);
  EXPECT_EQ(pos.bug, BugClass::Position) << explain(pos);

  // Unscaled scores: every row, the same factor.
  Tensor scaled = a;
  for (float& v : scaled.data) v *= 4.0f;
  const Diagnosis scale = run(Stage::AttnScores, a, scaled);
  EXPECT_EQ(scale.new_nonfinite, 0u);
  EXPECT_EQ(scale.bug, BugClass::Scale) << explain(scale);

  // A softmax's causal row 0 is 1 in every lane: no evidence of a position error.
  const Tensor pa = softmax(a), pb = softmax(b);
  EXPECT_EQ(pa.data[0], 1.0f);
  EXPECT_NE(run(Stage::AttnSoftmax, pa, pb).bug, BugClass::Position);

  // A -inf where a is finite is a mask mismatch, not an overflow.
  Tensor masked = a;
  masked.data[(0 * 6 + 3) * 6 + 1] = -INFINITY;
  const Diagnosis mm = run(Stage::AttnScores, a, masked);
  EXPECT_EQ(mm.mask_mismatch, 1u);
  EXPECT_EQ(mm.new_nonfinite, 0u);
  EXPECT_NE(mm.bug, BugClass::Overflow) << explain(mm);
}

TEST(DiagnoseRules, SomeHeadsWrongIsHeadMapping) {
  // attention [tokens, 4 heads × 16]: heads 1 and 2 read another group.
  const Tensor a = normal({6, 64}, 1), other = normal({6, 64}, 2);
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 16; i < 48; ++i) b.data[t * 64 + i] = other.data[t * 64 + i];
  const Diagnosis d = run(Stage::Attention, a, b);
  EXPECT_EQ(d.bug, BugClass::HeadMapping) << explain(d);
  EXPECT_EQ(d.heads_agreeing, 2u);
  EXPECT_EQ(d.heads_diverging, 2u);
  // Not a per-head cell: the same tensor at attn_out has no heads.
  EXPECT_NE(run(Stage::AttnOut, a, b).bug, BugClass::HeadMapping);

  // Scores [heads, tokens, ctx]: heads 1 and 2 wrong, row 0 included.
  const Tensor sa = scores(4, 6, 1), sother = scores(4, 6, 2);
  Tensor sb = sa;
  for (uint64_t i = 36; i < 108; ++i) sb.data[i] = sother.data[i];
  const Diagnosis s = run(Stage::AttnScores, sa, sb);
  EXPECT_EQ(s.bug, BugClass::HeadMapping) << explain(s);
}

TEST(DiagnoseRules, ErrorPeriodicInChannelIsHeadMapping) {
  // q_post_rope: the first 8 channels of every head wrong, at every position (RoPE pairing
  // seen at a later position, or with row 0 wrong too).
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t h = 0; h < 4; ++h)
      for (uint64_t o = 0; o < 8; o += 2)
        std::swap(b.data[t * 64 + h * 16 + o], b.data[t * 64 + h * 16 + o + 1]);
  const Diagnosis d = run(Stage::QPostRope, a, b, 5);
  EXPECT_EQ(d.bug, BugClass::HeadMapping) << explain(d);
  EXPECT_EQ(d.offsets_agreeing, 8u);
  EXPECT_NE(d.headline.find("repeats every head_dim"), std::string::npos) << d.headline;

  // The same channels wrong in one head only is not periodic (and that head alone is wrong).
  Tensor one = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t o = 0; o < 8; ++o) one.data[t * 64 + o] *= -1.0f;
  const Diagnosis o1 = run(Stage::QPostRope, a, one, 5);
  EXPECT_EQ(o1.offsets_agreeing, 8u);
  EXPECT_NE(o1.headline.find("heads 1, 2, 3 agree"), std::string::npos) << explain(o1);
}

TEST(DiagnoseRules, WholeProjectionsOfAFusedQkvAreNotHeadMapping) {
  // qkv_matmul [tokens, (4 + 2 + 2) × 16]: only the K projection wrong.
  const Tensor a = normal({6, 128}, 1), other = normal({6, 128}, 2);
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 64; i < 96; ++i) b.data[t * 128 + i] = other.data[t * 128 + i];
  const Diagnosis d = run(Stage::QkvMatmul, a, b);
  EXPECT_EQ(d.heads_agreeing, 6u);
  EXPECT_NE(d.bug, BugClass::HeadMapping) << explain(d);
  // One K head of two wrong is a head mapping.
  Tensor c = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 80; i < 96; ++i) c.data[t * 128 + i] = other.data[t * 128 + i];
  const Diagnosis k1 = run(Stage::QkvMatmul, a, c);
  EXPECT_EQ(k1.bug, BugClass::HeadMapping) << explain(k1);
  EXPECT_NE(k1.headline.find("K1 diverge"), std::string::npos) << k1.headline;
}

TEST(DiagnoseRules, NonFiniteIsOverflow) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  b.data[70] = NAN;
  b.data[71] = INFINITY;
  const Diagnosis d = run(Stage::FfnUp, a, b);
  EXPECT_EQ(d.bug, BugClass::Overflow) << explain(d);
  EXPECT_EQ(d.new_nonfinite, 2u);
  // A NaN that a has too is not new.
  Tensor both = a;
  both.data[70] = NAN;
  EXPECT_EQ(run(Stage::FfnUp, both, both).new_nonfinite, 0u);
}

TEST(DiagnoseRules, DeadSoftmaxRowIsOverflow) {
  const Tensor p = softmax(scores(4, 6, 1));
  Tensor b = p;
  for (uint64_t j = 0; j < 6; ++j) b.data[(1 * 6 + 4) * 6 + j] = 0.0f;  // head 1, query 4
  const Diagnosis d = run(Stage::AttnSoftmax, p, b);
  EXPECT_EQ(d.dead_softmax_rows, 1u);
  EXPECT_EQ(d.bug, BugClass::Overflow) << explain(d);
}

TEST(DiagnoseRules, RoundedToReducedPrecisionIsOverflow) {
  const Tensor p = softmax(scores(4, 6, 1));
  Tensor half = p, brain = p;
  for (float& v : half.data) v = to_f16(v);
  for (float& v : brain.data) v = to_bf16(v);
  const Diagnosis f16 = run(Stage::AttnSoftmax, p, half, 0, kRoundingThreshold);
  EXPECT_EQ(f16.bug, BugClass::Overflow) << explain(f16);
  EXPECT_GE(*f16.f16_exact_b, kPrecisionExactB);
  EXPECT_NE(f16.headline.find("fp16"), std::string::npos) << f16.headline;
  // At the bisector's 1e-3 the rounding alone is no divergence.
  EXPECT_FALSE(run(Stage::AttnSoftmax, p, half).diverges);
  const Diagnosis bf16 = run(Stage::AttnSoftmax, p, brain);
  EXPECT_EQ(bf16.bug, BugClass::Overflow) << explain(bf16);
  EXPECT_NE(bf16.headline.find("bf16"), std::string::npos) << bf16.headline;

  // fp16 values with far more error than rounding: the precision is only evidence.
  const Tensor a = normal({6, 64}, 1);
  Tensor wrong = normal({6, 64}, 2);
  for (float& v : wrong.data) v = to_f16(v);
  const Diagnosis layout = run(Stage::FfnUp, a, wrong);
  EXPECT_EQ(layout.bug, BugClass::Layout) << explain(layout);
  EXPECT_GE(*layout.f16_exact_b, kPrecisionExactB);
  // An f32 lane's noise is not fp16-exact.
  Tensor noisy = a;
  const Tensor noise = normal({6, 64}, 3, 0.01f);
  for (size_t i = 0; i < a.data.size(); ++i) noisy.data[i] += noise.data[i];
  EXPECT_LT(*run(Stage::FfnUp, a, noisy).f16_exact_b, 0.05);
}

TEST(DiagnoseRules, ZerosPastAnIndexArePartialWrite) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 40; i < 64; ++i) b.data[t * 64 + i] = 0.0f;
  // At attention (per-head) the zeroed heads must not read as a head mapping.
  for (Stage st : {Stage::AttnOut, Stage::Attention}) {
    const Diagnosis d = run(st, a, b);
    EXPECT_EQ(d.bug, BugClass::PartialWrite) << explain(d);
    EXPECT_EQ(d.zero_from, 40u);
    EXPECT_EQ(d.zero_tail_rows, 1.0);
  }
  // Zeros in one row of six: not a partial write.
  Tensor one = a;
  for (uint64_t i = 40; i < 64; ++i) one.data[i] = 0.0f;
  const Diagnosis d1 = run(Stage::AttnOut, a, one);
  EXPECT_NE(d1.bug, BugClass::PartialWrite) << explain(d1);
  // Zeros past an index but wrong before it too.
  Tensor wrong = normal({6, 64}, 2);
  for (uint64_t t = 0; t < 6; ++t)
    for (uint64_t i = 40; i < 64; ++i) wrong.data[t * 64 + i] = 0.0f;
  EXPECT_NE(run(Stage::AttnOut, a, wrong).bug, BugClass::PartialWrite);
  // Zeros where a has zeros too (a causal softmax's masked tail) are no partial write.
  const Tensor p = softmax(scores(4, 6, 1));
  EXPECT_EQ(run(Stage::AttnSoftmax, p, p).zero_tail_rows, 0.0);
}

TEST(DiagnoseRules, ToJsonHasTheDocumentedKeys) {
  const Tensor a = normal({6, 64}, 1);
  Tensor b = a;
  for (float& v : b.data) v *= 2.0f;
  b.data[5] = NAN;
  const nlohmann::json j = to_json(run(Stage::Attention, a, b));
  EXPECT_EQ(j.at("bug"), "overflow");
  EXPECT_EQ(j.at("label"), "overflow");
  EXPECT_TRUE(j.at("diverges").get<bool>());
  EXPECT_TRUE(j.at("headline").is_string());
  EXPECT_GE(j.at("evidence").size(), 8u);
  const nlohmann::json& f = j.at("figures");
  EXPECT_EQ(f.at("relative_rms"), "nan");
  EXPECT_EQ(f.at("new_nonfinite"), 1);
  EXPECT_EQ(f.at("per_head_relative_rms").size(), 4u);
  EXPECT_EQ(f.at("per_head_relative_rms")[0], "nan");
  for (const char* key : {"cosine",
                          "norm_ratio",
                          "relative_rms",
                          "threshold",
                          "paired",
                          "new_nonfinite",
                          "mask_mismatch",
                          "dead_softmax_rows",
                          "near_f16_limit",
                          "f16_exact_a",
                          "f16_exact_b",
                          "bf16_exact_a",
                          "bf16_exact_b",
                          "zero_from",
                          "zero_tail_rows",
                          "before_zero_relative_rms",
                          "first_position_relative_rms",
                          "later_positions_relative_rms",
                          "per_head_relative_rms",
                          "heads_agreeing",
                          "heads_diverging",
                          "offsets_agreeing",
                          "offset_share",
                          "scale",
                          "scale_share",
                          "token_scale_share",
                          "token_norm_ratio_min",
                          "token_norm_ratio_max",
                          "sign_flip_top",
                          "top_k"})
    EXPECT_TRUE(f.contains(key)) << key;
  EXPECT_EQ(f.size(), 32u);
  EXPECT_TRUE(f.at("zero_from").is_null());

  const nlohmann::json none = to_json(run(Stage::AttnOut, a, a));
  EXPECT_TRUE(none.at("bug").is_null());
  EXPECT_TRUE(none.at("label").is_null());
  EXPECT_FALSE(none.at("diverges").get<bool>());
  EXPECT_EQ(none.at("figures").at("relative_rms"), 0.0);
  const nlohmann::json scaled = to_json(run(Stage::AttnNorm, a, [&] {
    Tensor s = a;
    for (float& v : s.data) v *= 2.0f;
    return s;
  }()));
  EXPECT_EQ(scaled.at("bug"), "scale");
  EXPECT_EQ(scaled.at("label"), "missing/extra scale");
  EXPECT_DOUBLE_EQ(scaled.at("figures").at("scale").get<double>(), 2.0);
}

// ---- planted faults ---------------------------------------------------------------------

struct Shape {
  uint64_t hidden, heads, kv_heads, ffn;
};
constexpr Shape kSmall{64, 4, 2, 128};
constexpr Shape kQuantShape{256, 4, 2, 512};  // rows a multiple of 256: K-quants keep their type

// Synthetic models as faults_test.cpp builds them: two layers, 4 query heads, 2 KV heads.
const Model& synthetic(const std::string& family, QuantMix mix = QuantMix::F32,
                       Shape shape = kSmall) {
  static test::ScratchDir dir("diagnose_models");
  static std::map<std::string, std::unique_ptr<Model>> models;
  const std::string key =
      family + "-" + std::string(quant_mix_name(mix)) + "-" + std::to_string(shape.hidden);
  auto& m = models[key];
  if (!m) {
    SyntheticModelOptions o;
    o.family = family;
    o.hidden = shape.hidden;
    o.layers = 2;
    o.heads = shape.heads;
    o.kv_heads = shape.kv_heads;
    o.ffn = shape.ffn;
    o.vocab = 300;
    o.mix = mix;
    o.seed = 1;
    o.out = dir.path / (key + ".gguf");
    write_synthetic_model(o, registry());
    m = std::make_unique<Model>(open_model(o.out, registry()));
  }
  return *m;
}

using test_faults::fault_cases;
using test_faults::FaultCase;

// The figures a reader of the log wants per case.
void print_case(const char* tag, const FaultCase& c, const Cell& cell, const char* how,
                const Diagnosis& d) {
  std::printf("[diagnose %s] %-32s %-10s %-16s %-7s %-13s rel %.2e cos %+.3f ratio %.3f | %s\n",
              tag, c.spec.c_str(), c.family.c_str(), cell_name(cell).c_str(), how,
              d.bug ? std::string(bug_class_name(*d.bug)).c_str() : "none", d.relative_rms,
              d.cosine, d.norm_ratio, d.headline.c_str());
}

// Replays the node of `cell` in `lane` on the inputs `trace` captured.
Tensor replay_on(Lane& lane, const Model& model, const Cell& cell, const Trace& trace) {
  const Node* node = model.plan.find(cell.stage, cell.layer);
  EXPECT_NE(node, nullptr) << cell_name(cell);
  std::optional<std::vector<Tensor>> inputs = trace_inputs(model, *node, kPrompt, trace, {});
  if (!inputs) return {};
  return lane.replay(*node, *inputs);
}

// Diagnoses the fault's first cell twice: `b` replayed on `a`'s inputs (local error) and the
// faulted lane's own capture (carried; equal to local at the first divergence).
void expect_diagnosis(const char* tag, const FaultCase& c, const Model& model, Lane& reference,
                      double threshold) {
  const FaultSpec spec = FaultSpec::parse(c.spec);
  const BugClass want = fault_info(spec.kind).diagnosis;
  const Cell cell = spec.first_cell();
  CpuLane faulted(CpuLaneOptions{.threads = 2, .isa = std::nullopt, .fault = spec});
  faulted.load(model);
  Trace expected, got;
  prefill(reference, kPrompt, CapturePlan::all(), expected);
  prefill(faulted, kPrompt, CapturePlan::all(), got);
  const Tensor* a = expected.find(cell);
  ASSERT_NE(a, nullptr) << cell_name(cell);
  const Tensor replayed = replay_on(faulted, model, cell, expected);
  const Diagnosis local = diagnose(cell, *a, replayed, model.config, 0, threshold);
  const Diagnosis carried = diagnose(cell, *a, *got.find(cell), model.config, 0, threshold);
  print_case(tag, c, cell, "local", local);
  print_case(tag, c, cell, "carried", carried);
  EXPECT_EQ(local.bug, want) << "local: " << explain(local);
  EXPECT_EQ(carried.bug, want) << "carried: " << explain(carried);
}

class DiagnoseFault : public ::testing::TestWithParam<FaultCase> {};

// Against the float64 oracle on F32 weights.
TEST_P(DiagnoseFault, NamesTheRegisteredBugClass) {
  const FaultCase& c = GetParam();
  const Model& model = synthetic(c.family);
  RefLane ref;
  ref.load(model);
  const bool rounding_only = FaultSpec::parse(c.spec).kind == FaultKind::SoftmaxNoMax;
  expect_diagnosis("f32", c, model, ref, rounding_only ? kRoundingThreshold : kThreshold);
}

INSTANTIATE_TEST_SUITE_P(DiagnoseAllFaults, DiagnoseFault, ::testing::ValuesIn(fault_cases()),
                         [](const ::testing::TestParamInfo<FaultCase>& p) {
                           std::string s = p.param.spec + "_" + p.param.family;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// On Q4_K_M weights against the clean cpu lane (the oracle's distance there is the cpu lane's
// own 8-bit activations, see faults_test.cpp's FaultFoundQuantized).
TEST(DiagnoseFaultQuantized, NamesTheRegisteredBugClassAgainstTheCleanLane) {
  for (const FaultCase& c : fault_cases()) {
    if (c.family == "starcoder2") continue;
    SCOPED_TRACE(c.spec + " on " + c.family);
    const Model& model = synthetic(c.family, QuantMix::Q4_K_M, kQuantShape);
    CpuLane clean(CpuLaneOptions{.threads = 2});
    clean.load(model);
    const bool rounding_only = FaultSpec::parse(c.spec).kind == FaultKind::SoftmaxNoMax;
    expect_diagnosis("q4km", c, model, clean, rounding_only ? kRoundingThreshold : kThreshold);
  }
}

// stories260K's layer-2 scores reach ~15.6: softmax_no_max turns them to NaN there, while in
// layer 0 it only rounds to fp16.
TEST(DiagnoseOverflow, SoftmaxWithoutMaxOnStories260K) {
  LOCKSTEP_REQUIRE_SHARED_MODELS();
  const Model& model = shared_model("stories260K.gguf");
  const std::vector<int32_t> tokens{1, 403, 407, 261, 378};  // BOS "Once upon a time"
  RefLane ref;
  CpuLane faulted(CpuLaneOptions{
      .threads = 2, .isa = std::nullopt, .fault = FaultSpec::parse("softmax_no_max")});
  ref.load(model);
  faulted.load(model);
  Trace a, b;
  prefill(ref, tokens, CapturePlan::all(), a);
  prefill(faulted, tokens, CapturePlan::all(), b);
  const FaultCase c{"softmax_no_max", "stories260K"};
  for (uint32_t layer : {0u, 2u}) {
    const Cell cell{Stage::AttnSoftmax, layer};
    const Node* node = model.plan.find(cell.stage, cell.layer);
    std::optional<std::vector<Tensor>> inputs = trace_inputs(model, *node, tokens, a, {});
    ASSERT_TRUE(inputs.has_value());
    const Tensor replayed = faulted.replay(*node, *inputs);
    const double threshold = layer == 0 ? kRoundingThreshold : kThreshold;
    const Diagnosis local = diagnose(cell, *a.find(cell), replayed, model.config, 0, threshold);
    const Diagnosis carried =
        diagnose(cell, *a.find(cell), *b.find(cell), model.config, 0, threshold);
    print_case("stories", c, cell, "local", local);
    print_case("stories", c, cell, "carried", carried);
    EXPECT_EQ(local.bug, BugClass::Overflow) << explain(local);
    EXPECT_EQ(carried.bug, BugClass::Overflow) << explain(carried);
    if (layer == 2) {
      EXPECT_GT(local.new_nonfinite, 0u);
    }
  }
}

// ---- clean lanes ------------------------------------------------------------------------

// ref against the clean cpu lane: on F32 nothing diverges; on Q4_K_M the cpu lane's 8-bit
// activations put many cells past 1e-3, and no rule may claim that noise.
TEST(DiagnoseClean, CleanLanePairsHaveNoBugClass) {
  for (const char* family : {"llama", "qwen2", "starcoder2"}) {
    for (QuantMix mix : {QuantMix::F32, QuantMix::Q4_K_M}) {
      const std::string what = std::string(family) + " " + std::string(quant_mix_name(mix));
      SCOPED_TRACE(what);
      const Model& model = synthetic(family, mix, mix == QuantMix::F32 ? kSmall : kQuantShape);
      RefLane ref;
      CpuLane cpu(CpuLaneOptions{.threads = 2});
      ref.load(model);
      cpu.load(model);
      Trace a, b;
      prefill(ref, kPrompt, CapturePlan::all(), a);
      prefill(cpu, kPrompt, CapturePlan::all(), b);
      int diverging = 0;
      double worst = 0, offset = 0, scale = 0, flips = 0;  // the margins to the rules' bars
      for (const auto& [cell, t] : a.cells()) {
        const Diagnosis d = diagnose(cell, t, *b.find(cell), model.config, 0, kThreshold);
        EXPECT_EQ(d.bug, std::nullopt) << cell_name(cell) << ": " << explain(d);
        if (mix == QuantMix::F32) {
          EXPECT_FALSE(d.diverges) << cell_name(cell) << ": " << explain(d);
        }
        diverging += d.diverges;
        worst = std::max(worst, d.relative_rms);
        if (!d.diverges) continue;
        offset = std::max(offset, d.offset_share.value_or(0.0));
        scale = std::max({scale, d.scale_share, d.token_scale_share.value_or(0.0)});
        flips = std::max(flips, d.sign_flip_top);
      }
      std::printf(
          "[diagnose clean] %-18s %zu cells, %d past %.0e (worst %.2e), no class; diverging "
          "cells' highest offset share %.3f, scale share %.3f, top sign flips %.2f\n",
          what.c_str(), a.size(), diverging, kThreshold, worst, offset, scale, flips);
    }
  }
}

}  // namespace
}  // namespace lockstep::engine
