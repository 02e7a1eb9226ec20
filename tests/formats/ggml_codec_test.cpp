// GGML block codecs: accuracy of our quantizers per type, requantization stability, the
// f16/bf16 conversions at their special values, size checks, and the two row dot products.
// Bit-exactness against ggml is quant_ref_test.cpp's job.

#include "formats/ggml_codec.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "formats/error.h"

namespace lockstep::formats {
namespace {

// Relative RMS error ‖dequantize(quantize(x)) − x‖ / ‖x‖ allowed on Gaussian rows. Measured on
// this code over 1M elements (2^20 weights of std 0.02): F16 2.1e-4, BF16 1.7e-3, Q8_0 0.53%,
// Q4_0 8.6%, Q4_1 7.8%, Q5_0 4.3%, Q5_1 3.8%, Q2_K 26.9%, Q3_K 14.3%, Q4_K 7.1%, Q5_K 3.6%,
// Q6_K 1.7% (llama.cpp's reference quantizers, on the quant-ref tensors: Q2_K 29.7%,
// Q3_K 15.1%, Q4_K 7.1%, Q5_K 3.6%, Q6_K 1.8%). Bounds leave room for sampling noise.
struct TypeCase {
  GgmlType type;
  double max_rel_rms;
  // dequantize(quantize(y)) == y for y = dequantize(quantize(x)): true for the float types and
  // the 32-element types, whose scale comes back from the extreme level unchanged. The
  // K-quants refit their sub-block scales, so y moves a little; bounded by requant_drift
  // (‖y2 − y‖ / ‖y − x‖).
  bool requant_exact;
  double requant_drift;
};

constexpr TypeCase kTypes[] = {
    {GgmlType::F32, 0.0, true, 0.0},     {GgmlType::F16, 4e-4, true, 0.0},
    {GgmlType::BF16, 3e-3, true, 0.0},   {GgmlType::Q8_0, 0.008, true, 0.0},
    {GgmlType::Q4_0, 0.10, true, 0.0},   {GgmlType::Q4_1, 0.09, true, 0.0},
    {GgmlType::Q5_0, 0.05, true, 0.0},   {GgmlType::Q5_1, 0.045, true, 0.0},
    {GgmlType::Q2_K, 0.30, false, 0.1},  {GgmlType::Q3_K, 0.16, false, 0.1},
    {GgmlType::Q4_K, 0.08, false, 0.25}, {GgmlType::Q5_K, 0.04, false, 0.25},
    {GgmlType::Q6_K, 0.02, false, 0.25},
};

// Rows x blocks-per-row. The bounds hold for large shapes; the error of a few blocks is
// noisier, so shapes under kLargeShapeElems get the bound times 1 + 1.5/sqrt(blocks) (2.5x for
// one block: over 200k single-block trials the worst error was 1.2x the 1.5x bound).
struct Shape {
  int rows;
  int blocks_per_row;
};
constexpr Shape kShapes[] = {{1, 1}, {3, 2}, {5, 7}, {64, 16}};
constexpr size_t kLargeShapeElems = 32768;

double small_shape_slack(size_t blocks) {
  return 1.0 + 1.5 / std::sqrt(double(blocks));
}

uint32_t fresh_seed() {
  return std::random_device{}();
}

// Gaussian rows, each with its own scale in [0.01, 2] (log-uniform), like weight matrices whose
// rows differ in magnitude. Never zero.
std::vector<float> random_rows(std::mt19937& rng, int rows, int cols) {
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::uniform_real_distribution<float> log_scale(std::log(0.01f), std::log(2.0f));
  std::vector<float> x(static_cast<size_t>(rows) * cols);  // [rows, cols]
  for (int r = 0; r < rows; ++r) {
    const float scale = std::exp(log_scale(rng));
    for (int c = 0; c < cols; ++c) {
      float v = 0.0f;
      while (v == 0.0f) v = gauss(rng) * scale;
      x[static_cast<size_t>(r) * cols + c] = v;
    }
  }
  return x;
}

std::vector<std::byte> quantized(GgmlType type, std::span<const float> x) {
  std::vector<std::byte> q(*ggml_bytes(type, x.size()));
  quantize(type, x, q);
  return q;
}

std::vector<float> dequantized(GgmlType type, std::span<const std::byte> q, size_t n) {
  std::vector<float> y(n);
  dequantize(type, q, y);
  return y;
}

// ‖a − b‖ / ‖b‖ in float64.
double rel_rms(std::span<const float> a, std::span<const float> b) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(err / ref);
}

uint32_t block_elems(GgmlType type) {
  return ggml_type_info(type).block_elems;
}

std::string case_name(GgmlType type) {
  return std::string(ggml_type_name(type));
}

class GgmlCodecType : public ::testing::TestWithParam<TypeCase> {};

TEST_P(GgmlCodecType, QuantizeErrorWithinBound) {
  const TypeCase tc = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  // The float types have 1-element blocks; give them rows of a realistic width.
  const int block = block_elems(tc.type) == 1 ? 32 : static_cast<int>(block_elems(tc.type));
  for (const Shape& shape : kShapes) {
    const int cols = shape.blocks_per_row * block;
    const std::vector<float> x = random_rows(rng, shape.rows, cols);
    const std::vector<std::byte> q = quantized(tc.type, x);
    const std::vector<float> y = dequantized(tc.type, q, x.size());
    const double err = rel_rms(y, x);
    const size_t blocks = size_t(shape.rows) * shape.blocks_per_row;
    const double bound =
        x.size() >= kLargeShapeElems ? tc.max_rel_rms : tc.max_rel_rms * small_shape_slack(blocks);
    EXPECT_LE(err, bound) << shape.rows << " x " << cols;
    if (x.size() >= kLargeShapeElems)
      RecordProperty("rel_rms_" + std::to_string(x.size()), std::to_string(err));
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST_P(GgmlCodecType, RequantizingIsStable) {
  const TypeCase tc = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int cols = 8 * static_cast<int>(std::max<uint32_t>(block_elems(tc.type), 32));
  const std::vector<float> x = random_rows(rng, 16, cols);
  const std::vector<float> y = dequantized(tc.type, quantized(tc.type, x), x.size());
  const std::vector<float> y2 = dequantized(tc.type, quantized(tc.type, y), y.size());
  if (tc.requant_exact) {
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y2[i], y[i]) << "element " << i;
  } else {
    EXPECT_LE(rel_rms(y2, y), tc.requant_drift * rel_rms(y, x));
  }
}

TEST_P(GgmlCodecType, ZeroRowsStayZeroAndConstantRowsStayClose) {
  const TypeCase tc = GetParam();
  const size_t n = 4 * std::max<uint32_t>(block_elems(tc.type), 32);
  const std::vector<float> zeros(n, 0.0f);
  for (float v : dequantized(tc.type, quantized(tc.type, zeros), n)) ASSERT_EQ(v, 0.0f);
  // A constant row (e.g. a norm weight of 1) is the degenerate case of every fit.
  for (float c : {1.0f, -0.37f}) {
    const std::vector<float> x(n, c);
    const std::vector<float> y = dequantized(tc.type, quantized(tc.type, x), n);
    EXPECT_LE(rel_rms(y, x), std::max(tc.max_rel_rms, 1e-3)) << "constant " << c;
  }
}

// dot_row sums in f32 per block and adds the block sums in f32; the rounding bound of that
// order (first order in u = 2^-24) is (chunk + chunks + 1) * u * Σ|w·x|.
TEST_P(GgmlCodecType, DotRowMatchesReferenceWithinF32Rounding) {
  const TypeCase tc = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const size_t chunk = std::max<uint32_t>(block_elems(tc.type), 32);
  for (size_t chunks : {1, 3, 16}) {
    const size_t n = chunks * chunk;
    const std::vector<float> w = random_rows(rng, 1, static_cast<int>(n));
    const std::vector<float> x = random_rows(rng, 1, static_cast<int>(n));
    const std::vector<std::byte> row = quantized(tc.type, w);
    const std::vector<float> wq = dequantized(tc.type, row, n);

    double magnitude = 0.0;
    for (size_t i = 0; i < n; ++i) magnitude += std::fabs(double(wq[i]) * x[i]);
    const double ref = dot_row_ref(tc.type, row, x);
    const double got = dot_row(tc.type, row, x);
    const double tol = double(chunk + chunks + 1) * 0x1p-24 * magnitude;
    const double eps = 0x1p-23;
    EXPECT_LE(std::fabs(got - ref), tol + std::fabs(ref) * eps) << "n " << n;
  }
}

// dot_row_ref is the dot of exactly the dequantized weights in float64: equal to the same sum
// over dequantize()'s output up to float64 rounding.
TEST_P(GgmlCodecType, DotRowRefIsTheFloat64DotOfDequantizedWeights) {
  const TypeCase tc = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const size_t n = 5 * std::max<uint32_t>(block_elems(tc.type), 32);
  const std::vector<float> w = random_rows(rng, 1, static_cast<int>(n));
  const std::vector<float> x = random_rows(rng, 1, static_cast<int>(n));
  const std::vector<std::byte> row = quantized(tc.type, w);
  const std::vector<float> wq = dequantized(tc.type, row, n);
  double expected = 0.0, magnitude = 0.0;
  for (size_t i = 0; i < n; ++i) {
    expected += double(wq[i]) * double(x[i]);
    magnitude += std::fabs(double(wq[i]) * x[i]);
  }
  EXPECT_NEAR(dot_row_ref(tc.type, row, x), expected, double(n) * 0x1p-53 * magnitude);
}

TEST_P(GgmlCodecType, SizeMismatchesThrow) {
  const TypeCase tc = GetParam();
  const size_t block = block_elems(tc.type);
  const size_t n = 2 * std::max<size_t>(block, 32);
  const std::vector<float> x(n, 0.5f);
  std::vector<std::byte> q(*ggml_bytes(tc.type, n));
  std::vector<float> y(n);
  // One byte short and one byte long.
  EXPECT_THROW(quantize(tc.type, x, std::span(q).first(q.size() - 1)), Error);
  std::vector<std::byte> longer(q.size() + 1);
  EXPECT_THROW(quantize(tc.type, x, longer), Error);
  EXPECT_THROW(dequantize(tc.type, std::span<const std::byte>(q).first(q.size() - 1), y), Error);
  EXPECT_THROW(dot_row(tc.type, std::span<const std::byte>(q).first(q.size() - 1), x), Error);
  EXPECT_THROW(dot_row_ref(tc.type, longer, x), Error);
  if (block > 1) {
    // Not a whole number of blocks.
    EXPECT_THROW(quantize(tc.type, std::span(x).first(n - 1), q), Error);
    EXPECT_THROW(dequantize(tc.type, q, std::span(y).first(n - 1)), Error);
  }
  quantize(tc.type, x, q);  // the right sizes pass
  dequantize(tc.type, q, y);
}

INSTANTIATE_TEST_SUITE_P(AllCodecTypes, GgmlCodecType, ::testing::ValuesIn(kTypes),
                         [](const auto& param) { return case_name(param.param.type); });

TEST(GgmlCodec, CodecsAreExactlyTheTypesMarkedInTheTable) {
  size_t with_codec = 0;
  for (const GgmlTypeInfo& info : ggml_types()) {
    EXPECT_EQ(has_codec(info.type), info.has_codec) << info.name;
    with_codec += info.has_codec ? 1 : 0;
  }
  EXPECT_EQ(with_codec, std::size(kTypes));
  for (const TypeCase& tc : kTypes) EXPECT_TRUE(ggml_type_info(tc.type).has_codec);
}

TEST(GgmlCodec, TypesWithoutCodecThrow) {
  for (GgmlType type : {GgmlType::Q8_K, GgmlType::IQ2_XXS, GgmlType::IQ4_NL, GgmlType::I32}) {
    const GgmlTypeInfo& info = ggml_type_info(type);
    const size_t n = info.block_elems;
    std::vector<std::byte> q(info.block_bytes);
    std::vector<float> y(n, 1.0f);
    EXPECT_THROW(dequantize(type, q, y), Error) << info.name;
    EXPECT_THROW(quantize(type, y, q), Error) << info.name;
    EXPECT_THROW(dot_row(type, q, y), Error) << info.name;
    try {
      dequantize(type, q, y);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(info.name)), std::string::npos) << e.what();
    }
  }
}

TEST(GgmlCodec, BlockTypesRejectNonFiniteInput) {
  std::vector<float> x(256, 0.25f);
  std::vector<std::byte> q(*ggml_bytes(GgmlType::Q4_K, x.size()));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    x[77] = bad;
    EXPECT_THROW(quantize(GgmlType::Q4_K, x, q), Error);
    EXPECT_THROW(quantize(GgmlType::Q8_0, x, std::span(q).first(*ggml_bytes(GgmlType::Q8_0, 256))),
                 Error);
  }
}

TEST(GgmlCodec, FloatTypesKeepNaNAndInf) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {std::numeric_limits<float>::quiet_NaN(), inf, -inf, -0.0f};
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    const std::vector<float> y = dequantized(type, quantized(type, x), x.size());
    EXPECT_TRUE(std::isnan(y[0])) << case_name(type);
    EXPECT_EQ(y[1], inf) << case_name(type);
    EXPECT_EQ(y[2], -inf) << case_name(type);
    EXPECT_TRUE(y[3] == 0.0f && std::signbit(y[3])) << case_name(type);
  }
}

// Huge inputs clip at the largest fp16 scale instead of turning a block into Inf or NaN.
TEST(GgmlCodec, HugeInputsSaturateInsteadOfOverflowing) {
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i % 2 ? 1.0f : -1.0f) * 1e30f;
  for (const TypeCase& tc : kTypes) {
    if (block_elems(tc.type) == 1) continue;
    for (float v : dequantized(tc.type, quantized(tc.type, x), x.size()))
      ASSERT_TRUE(std::isfinite(v)) << case_name(tc.type);
  }
}

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}
float float_of(uint32_t b) {
  return std::bit_cast<float>(b);
}

TEST(GgmlCodecFp16, DecodesSpecialValues) {
  EXPECT_EQ(bits_of(fp16_to_f32(0x0000)), 0x00000000u);
  EXPECT_EQ(bits_of(fp16_to_f32(0x8000)), 0x80000000u);
  EXPECT_EQ(fp16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(fp16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(fp16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_f32(0x0400), 0x1p-14f);  // smallest normal
  EXPECT_EQ(fp16_to_f32(0x0001), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(fp16_to_f32(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(fp16_to_f32(0x83FF), -1023 * 0x1p-24f);
  EXPECT_EQ(fp16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(bits_of(fp16_to_f32(0x7E00)), 0x7FC00000u);
  // A signalling NaN keeps its payload and comes back quiet.
  EXPECT_EQ(bits_of(fp16_to_f32(0x7C01)), 0x7FC02000u);
  EXPECT_EQ(bits_of(fp16_to_f32(0xFD55)), 0xFFEAA000u);
}

TEST(GgmlCodecFp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_f32(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_EQ(f32_to_fp16(f), (h & 0x8000) | 0x7E00) << h;
    } else {
      ASSERT_EQ(f32_to_fp16(f), h) << h;
    }
  }
}

TEST(GgmlCodecFp16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_fp16(1.0f + 0x1p-11f), 0x3C00);             // tie, even below
  EXPECT_EQ(f32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3C02);         // tie, even above
  EXPECT_EQ(f32_to_fp16(1.0f + 0x1p-11f + 0x1p-23f), 0x3C01);  // just past the tie
  EXPECT_EQ(f32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_fp16(float_of(bits_of(65520.0f) - 1)), 0x7BFF);
  EXPECT_EQ(f32_to_fp16(65520.0f), 0x7C00);  // tie goes to Inf
  EXPECT_EQ(f32_to_fp16(-1e10f), 0xFC00);
  EXPECT_EQ(f32_to_fp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(f32_to_fp16(std::numeric_limits<float>::quiet_NaN()), 0x7E00);
  EXPECT_EQ(f32_to_fp16(-std::numeric_limits<float>::quiet_NaN()), 0xFE00);
  EXPECT_EQ(f32_to_fp16(-0.0f), 0x8000);
  // Subnormal halves and the ties around them.
  EXPECT_EQ(f32_to_fp16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_fp16(0x1p-25f), 0x0000);  // tie with 0: even
  EXPECT_EQ(f32_to_fp16(0x1p-25f + 0x1p-40f), 0x0001);
  EXPECT_EQ(f32_to_fp16(3 * 0x1p-25f), 0x0002);  // tie 1|2: even
  EXPECT_EQ(f32_to_fp16(1e-10f), 0x0000);
  EXPECT_EQ(f32_to_fp16(-1e-10f), 0x8000);
  EXPECT_EQ(f32_to_fp16(0x1p-14f - 0x1p-25f), 0x0400);  // tie 0x3FF|0x400: even
  EXPECT_EQ(f32_to_fp16(0x1p-14f - 0x1p-24f), 0x03FF);
}

// f32 -> fp16 against an independent float64 model of round-to-nearest-even, on random bits.
TEST(GgmlCodecFp16, MatchesFloat64RoundingModelOnRandomFloats) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  // Exponents around the half's range, where all the interesting cases are.
  std::uniform_int_distribution<uint32_t> exponent(127 - 30, 127 + 17);
  std::uniform_int_distribution<uint32_t> mantissa(0, 0x7FFFFF);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t sign = (i & 1) << 31;
    const float f = float_of(sign | (exponent(rng) << 23) | mantissa(rng));
    const double a = std::fabs(double(f));
    double expected;
    if (a >= 65520.0) {
      expected = std::numeric_limits<double>::infinity();
    } else {
      const int e = std::max(static_cast<int>(std::floor(std::log2(a))), -14);
      const double ulp = std::ldexp(1.0, e - 10);
      expected = std::nearbyint(a / ulp) * ulp;  // the default rounding mode is to nearest even
    }
    const float got = fp16_to_f32(f32_to_fp16(f));
    ASSERT_EQ(double(std::fabs(got)), expected) << "f = " << f;
    ASSERT_EQ(std::signbit(got), std::signbit(f));
  }
}

TEST(GgmlCodecBf16, ConvertsLikeGgml) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(float_of(0x3F808000)), 0x3F80);  // tie, even below
  EXPECT_EQ(f32_to_bf16(float_of(0x3F818000)), 0x3F82);  // tie, even above
  EXPECT_EQ(f32_to_bf16(float_of(0x3F808001)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(float_of(0x7F7FFFFF)), 0x7F80);  // max float rounds to Inf
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(f32_to_bf16(float_of(0x7F800001)), 0x7FC0);  // signalling NaN made quiet
  EXPECT_EQ(f32_to_bf16(float_of(0xFFC00000)), 0xFFC0);
  EXPECT_EQ(f32_to_bf16(float_of(0x7F81FFFF)), 0x7FC1);  // payload bits kept
  // Subnormals are rounded, not flushed.
  EXPECT_EQ(f32_to_bf16(float_of(0x00000001)), 0x0000);
  EXPECT_EQ(f32_to_bf16(float_of(0x00018000)), 0x0002);
  EXPECT_EQ(f32_to_bf16(float_of(0x00010000)), 0x0001);
  EXPECT_EQ(f32_to_bf16(float_of(0x007FFFFF)), 0x0080);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);

  EXPECT_EQ(bits_of(bf16_to_f32(0x0001)), 0x00010000u);
  EXPECT_EQ(bits_of(bf16_to_f32(0xFFC1)), 0xFFC10000u);
  EXPECT_EQ(bf16_to_f32(0xC040), -3.0f);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const bool nan = (h & 0x7F80) == 0x7F80 && (h & 0x007F) != 0;
    const uint16_t back = f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(h)));
    ASSERT_EQ(back, nan ? (h | 0x40) : h) << h;
  }
}

}  // namespace
}  // namespace lockstep::formats
