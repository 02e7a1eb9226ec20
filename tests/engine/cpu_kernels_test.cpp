// cpu lane kernels: every weight type under every ISA this CPU runs, against the float64 oracle
// (formats::dot_row_ref over exactly dequantized weights and unquantized x), scalar against
// SIMD, and bit-exact invariance of y[t, r] to token batching, row splits and tiling.
#include "engine/cpu_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "formats/ggml_codec.h"
#include "tests/test_util.h"

namespace lockstep {
namespace {

using engine::cpu::ActFormat;
using engine::cpu::Isa;
using engine::cpu::PreparedActs;
using engine::cpu::WeightMatrix;
using formats::GgmlType;
namespace cpu = engine::cpu;

constexpr double kEps = 1.0 / (1 << 23);  // f32 unit roundoff ×2 (one ulp at 1.0)

uint32_t fresh_seed() {
  return std::random_device{}();
}

// A [rows, cols] matrix quantized from fresh random values; row_bytes may add padding.
struct TestMatrix {
  GgmlType type;
  uint64_t rows, cols;
  size_t row_bytes;
  std::vector<std::byte> data;
  std::vector<float> deq;  // [rows, cols] exactly dequantized weights

  WeightMatrix view() const { return {type, data.data(), rows, cols, row_bytes}; }
  std::span<const std::byte> row(uint64_t r) const {
    return {data.data() + r * row_bytes, *formats::ggml_bytes(type, cols)};
  }
};

TestMatrix make_matrix(GgmlType type, uint64_t rows, uint64_t cols, std::mt19937& rng,
                       size_t pad_bytes = 0) {
  TestMatrix m{type, rows, cols, *formats::ggml_bytes(type, cols) + pad_bytes, {}, {}};
  m.data.assign(rows * m.row_bytes, std::byte{0xA5});
  m.deq.resize(rows * cols);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> src(cols);
  for (uint64_t r = 0; r < rows; ++r) {
    for (float& v : src) {
      do v = dist(rng);
      while (v == 0.0f);
    }
    auto bytes = std::span<std::byte>(m.data.data() + r * m.row_bytes, m.row(r).size());
    formats::quantize(type, src, bytes);
    formats::dequantize(type, bytes, std::span<float>(m.deq.data() + r * cols, cols));
  }
  return m;
}

// [tokens, ld] activations: each row with its own scale so blocks differ in magnitude.
std::vector<float> make_acts(uint64_t tokens, uint64_t cols, uint64_t ld, std::mt19937& rng) {
  std::vector<float> x = test::random_nonzero(tokens * ld, rng, 2.0f);
  std::uniform_real_distribution<float> scale(0.1f, 4.0f);
  for (uint64_t t = 0; t < tokens; ++t) {
    const float s = scale(rng);
    for (uint64_t i = 0; i < cols; ++i) x[t * ld + i] *= s;
  }
  return x;
}

uint64_t act_block(GgmlType type) {
  switch (cpu::act_format(type)) {
    case ActFormat::F32: return 1;
    case ActFormat::Q8_32: return 32;
    case ActFormat::Q8_256: return 256;
  }
  return 1;
}

// The error budget of one output y = Σ w_i·x_i.
//  - Activation quantization (quant types): x_i is replaced by d·q_i with |x_i - d·q_i| ≤ d/2 and
//    d = amax/127 of x_i's block, so each term moves by at most |w_i|·amax/254 (1% headroom for
//    the rounding of d and 1/d).
//  - f32 arithmetic: block results are formed from exact integer sums with a few roundings and
//    added in f32, and sub-block products d·sc·q and min terms dmin·m can cancel, so the rounding
//    budget is (blocks + 16)·eps·Σ(|w_i| + max|w| of the block)·|x_i|. Float weights: sums of
//    length ≤ cols/8 per running sum, so (cols/8 + 16)·eps·Σ|w_i·x_i|.
struct Budget {
  double quant = 0.0;  // activation quantization part
  double round = 0.0;  // f32 rounding part
  double total() const { return quant + round + 1e-30; }
};

Budget budget(const TestMatrix& m, uint64_t r, const float* x) {
  const uint64_t blk = act_block(m.type);
  const float* w = m.deq.data() + r * m.cols;
  Budget b;
  if (blk == 1) {
    double s = 0.0;
    for (uint64_t i = 0; i < m.cols; ++i) s += std::fabs(double(w[i]) * x[i]);
    b.round = (double(m.cols) / 8 + 16) * kEps * s;
    return b;
  }
  double s = 0.0;
  for (uint64_t i0 = 0; i0 < m.cols; i0 += blk) {
    double amax = 0.0, wmax = 0.0;
    for (uint64_t i = i0; i < i0 + blk; ++i) {
      amax = std::max(amax, double(std::fabs(x[i])));
      wmax = std::max(wmax, double(std::fabs(w[i])));
    }
    for (uint64_t i = i0; i < i0 + blk; ++i) {
      b.quant += std::fabs(w[i]) * amax / 254.0;
      s += (std::fabs(w[i]) + wmax) * (std::fabs(x[i]) + amax / 254.0);
    }
  }
  b.quant *= 1.01;
  b.round = (double(m.cols) / blk + 16) * kEps * s;
  return b;
}

// y [tokens, ldy] for rows [r0, r1) of every token, one call.
std::vector<float> run(Isa isa, const TestMatrix& m, const std::vector<float>& x, uint64_t tokens,
                       uint64_t ldx) {
  PreparedActs acts;
  cpu::prepare_acts(isa, cpu::act_format(m.type), x.data(), tokens, m.cols, ldx, acts);
  std::vector<float> y(tokens * m.rows, std::numeric_limits<float>::quiet_NaN());
  cpu::matmul(isa, m.view(), acts, 0, m.rows, y.data(), m.rows);
  return y;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

constexpr GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                               GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                               GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                               GgmlType::Q6_K};

class CpuKernelsType : public testing::TestWithParam<GgmlType> {};

// Every ISA against the float64 oracle, per output, at two shapes (one with float tails).
TEST_P(CpuKernelsType, MatchesOracleWithinQuantizationBudget) {
  const GgmlType type = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint64_t blk = act_block(type);
  for (uint64_t cols : {uint64_t{512}, blk == 1 ? uint64_t{100} : uint64_t{1024}}) {
    const uint64_t rows = 37, tokens = 7;
    const TestMatrix m = make_matrix(type, rows, cols, rng);
    const std::vector<float> x = make_acts(tokens, cols, cols, rng);
    for (Isa isa : cpu::supported_isas()) {
      SCOPED_TRACE(std::string(cpu::isa_name(isa)) + " cols " + std::to_string(cols));
      const std::vector<float> y = run(isa, m, x, tokens, cols);
      for (uint64_t t = 0; t < tokens; ++t) {
        for (uint64_t r = 0; r < rows; ++r) {
          const double ref = formats::dot_row_ref(type, m.row(r), {x.data() + t * cols, cols});
          const Budget b = budget(m, r, x.data() + t * cols);
          ASSERT_TRUE(std::isfinite(y[t * rows + r]));
          ASSERT_LE(std::fabs(y[t * rows + r] - ref), b.total())
              << "t " << t << " r " << r << " y " << y[t * rows + r] << " ref " << ref;
        }
      }
    }
  }
}

// SIMD against scalar: same integer block sums, so only f32 summation order differs; the bound
// is the rounding part of the budget alone, orders of magnitude below the quantization part.
TEST_P(CpuKernelsType, SimdMatchesScalarUpToSummationOrder) {
  const GgmlType type = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint64_t cols = act_block(type) == 1 ? 1000 : 768, rows = 21, tokens = 6;
  const TestMatrix m = make_matrix(type, rows, cols, rng);
  const std::vector<float> x = make_acts(tokens, cols, cols, rng);
  const std::vector<float> ys = run(Isa::Scalar, m, x, tokens, cols);
  std::vector<std::vector<float>> simd;
  for (Isa isa : cpu::supported_isas()) {
    if (isa == Isa::Scalar) continue;
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    const std::vector<float> y = run(isa, m, x, tokens, cols);
    for (uint64_t t = 0; t < tokens; ++t) {
      for (uint64_t r = 0; r < rows; ++r) {
        const Budget b = budget(m, r, x.data() + t * cols);
        ASSERT_LE(std::fabs(double(y[t * rows + r]) - ys[t * rows + r]), 2 * b.round + 1e-30)
            << "t " << t << " r " << r;
      }
    }
    simd.push_back(y);
  }
  // The quantized kernels use the same 256-bit integer code under AVX2 and AVX-512 (maddubs or
  // vpdpbusd give the same integers), so those two agree bit for bit.
  if (simd.size() == 2 && act_block(type) != 1) {
    for (size_t i = 0; i < simd[0].size(); ++i) ASSERT_TRUE(same_bits(simd[0][i], simd[1][i])) << i;
  }
}

// y[t, r] depends only on row r and token t: one call over everything equals token-by-token
// calls, a batch starting at another token (other tile alignment), and split row ranges.
TEST_P(CpuKernelsType, OutputIndependentOfBatchingAndRowSplit) {
  const GgmlType type = GetParam();
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint64_t cols = act_block(type) == 1 ? 200 : 512, rows = 19, tokens = 11;
  const TestMatrix m = make_matrix(type, rows, cols, rng);
  const std::vector<float> x = make_acts(tokens, cols, cols, rng);
  const ActFormat format = cpu::act_format(type);
  for (Isa isa : cpu::supported_isas()) {
    SCOPED_TRACE(std::string(cpu::isa_name(isa)));
    const std::vector<float> all = run(isa, m, x, tokens, cols);
    PreparedActs acts;
    std::vector<float> y(rows + 3);
    for (uint64_t t = 0; t < tokens; ++t) {
      cpu::prepare_acts(isa, format, x.data() + t * cols, 1, cols, cols, acts);
      cpu::matmul(isa, m.view(), acts, 0, rows, y.data(), 0);
      for (uint64_t r = 0; r < rows; ++r) ASSERT_TRUE(same_bits(y[r], all[t * rows + r])) << t;
    }
    // Tokens 1..9 as one batch: every tile boundary moves.
    const uint64_t n = 9, ldy = rows + 5;
    std::vector<float> ys(n * ldy);
    cpu::prepare_acts(isa, format, x.data() + cols, n, cols, cols, acts);
    for (auto [r0, r1] : {std::pair<uint64_t, uint64_t>{0, 5}, {5, 6}, {6, 6}, {6, rows}}) {
      cpu::matmul(isa, m.view(), acts, r0, r1, ys.data(), ldy);
    }
    for (uint64_t t = 0; t < n; ++t) {
      for (uint64_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(same_bits(ys[t * ldy + r], all[(t + 1) * rows + r])) << t << " " << r;
      }
    }
  }
}

// matmul writes y[t·ldy + r] for r in [r0, r1) only.
TEST_P(CpuKernelsType, WritesOnlyItsRows) {
  const GgmlType type = GetParam();
  std::mt19937 rng(fresh_seed());
  const uint64_t cols = 256, rows = 10, tokens = 5, ldy = 16, r0 = 3, r1 = 8;
  const TestMatrix m = make_matrix(type, rows, cols, rng);
  const std::vector<float> x = make_acts(tokens, cols, cols, rng);
  for (Isa isa : cpu::supported_isas()) {
    PreparedActs acts;
    cpu::prepare_acts(isa, cpu::act_format(type), x.data(), tokens, cols, cols, acts);
    std::vector<float> y(tokens * ldy + 8, -7.0f);
    cpu::matmul(isa, m.view(), acts, r0, r1, y.data(), ldy);
    for (uint64_t i = 0; i < y.size(); ++i) {
      const bool mine = i < tokens * ldy && i % ldy >= r0 && i % ldy < r1;
      EXPECT_EQ(y[i] == -7.0f, !mine) << cpu::isa_name(isa) << " index " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CpuKernelsType, testing::ValuesIn(kTypes),
                         [](const testing::TestParamInfo<GgmlType>& info) {
                           return std::string(formats::ggml_type_name(info.param));
                         });

// Long rows: the kernels walk the tokens in chunks that fit L2 (a few dozen tokens here), and the
// results must not depend on where a chunk starts.
TEST(CpuKernels, TokenChunksDoNotChangeResults) {
  const uint32_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const uint64_t rows = 3, tokens = 45, cols = 256 * 40;
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q5_0,
                        GgmlType::Q4_K, GgmlType::Q6_K}) {
    const TestMatrix m = make_matrix(type, rows, cols, rng);
    const std::vector<float> x = make_acts(tokens, cols, cols, rng);
    for (Isa isa : cpu::supported_isas()) {
      const std::vector<float> all = run(isa, m, x, tokens, cols);
      PreparedActs acts;
      std::vector<float> y(rows);
      for (uint64_t t = 0; t < tokens; ++t) {
        cpu::prepare_acts(isa, cpu::act_format(type), x.data() + t * cols, 1, cols, cols, acts);
        cpu::matmul(isa, m.view(), acts, 0, rows, y.data(), rows);
        for (uint64_t r = 0; r < rows; ++r) {
          ASSERT_TRUE(same_bits(y[r], all[t * rows + r]))
              << formats::ggml_type_name(type) << " " << cpu::isa_name(isa) << " t " << t;
        }
      }
    }
  }
}

// One head's keys inside a wider f32 KV cache row: row_bytes and ldx larger than cols.
TEST(CpuKernels, F32HonoursRowStrideAndLdx) {
  std::mt19937 rng(fresh_seed());
  const uint64_t rows = 13, cols = 72, pad = 40, tokens = 6, ldx = cols + 9;
  const TestMatrix m = make_matrix(GgmlType::F32, rows, cols, rng, pad * sizeof(float));
  const std::vector<float> x = make_acts(tokens, cols, ldx, rng);
  for (Isa isa : cpu::supported_isas()) {
    const std::vector<float> y = run(isa, m, x, tokens, ldx);
    for (uint64_t t = 0; t < tokens; ++t) {
      for (uint64_t r = 0; r < rows; ++r) {
        const double ref = formats::dot_row_ref(GgmlType::F32, m.row(r), {x.data() + t * ldx, cols});
        EXPECT_LE(std::fabs(y[t * rows + r] - ref), budget(m, r, x.data() + t * ldx).total());
      }
    }
  }
}

// Q8_32: d = amax/127, |x - d·q| ≤ d/2, s = d·Σq. Q8_256: the extreme maps to -127 and bsums
// are the sums of 16. The storage is reused for smaller inputs.
TEST(CpuKernels, PreparedActivationLayouts) {
  std::mt19937 rng(fresh_seed());
  const uint64_t cols = 512, rows = 3;
  const std::vector<float> x = make_acts(rows, cols, cols, rng);
  PreparedActs a;
  cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_32, x.data(), rows, cols, cols, a);
  ASSERT_EQ(a.row_bytes, cols / 32 * 40);
  const std::byte* grown = a.data.data();
  // Row layout: int8 q[nb·32], f32 d[nb], f32 s[nb].
  const uint64_t nb = cols / 32;
  for (uint64_t t = 0; t < rows; ++t) {
    const auto* q = reinterpret_cast<const int8_t*>(a.row(t));
    for (uint64_t b = 0; b < nb; ++b) {
      float d, s;
      std::memcpy(&d, a.row(t) + nb * 32 + 4 * b, 4);
      std::memcpy(&s, a.row(t) + nb * 36 + 4 * b, 4);
      float amax = 0.0f;
      int sum = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[t * cols + 32 * b + j]));
      ASSERT_FLOAT_EQ(d, amax / 127.0f);
      for (int j = 0; j < 32; ++j) {
        ASSERT_LE(std::fabs(x[t * cols + 32 * b + j] - d * q[32 * b + j]), d * 0.5f * 1.0001f);
        sum += q[32 * b + j];
      }
      ASSERT_FLOAT_EQ(s, d * static_cast<float>(sum));
    }
  }
  cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_256, x.data(), 1, 256, cols, a);
  EXPECT_EQ(a.data.data(), grown);  // smaller: no reallocation
  ASSERT_EQ(a.row_bytes, 292u);
  float d;
  std::memcpy(&d, a.row(0), 4);
  const auto* q = reinterpret_cast<const int8_t*>(a.row(0) + 4);
  int16_t bsums[16];
  std::memcpy(bsums, a.row(0) + 260, sizeof bsums);
  const auto extreme = std::max_element(x.begin(), x.begin() + 256,
                                        [](float u, float v) { return std::fabs(u) < std::fabs(v); });
  EXPECT_EQ(q[extreme - x.begin()], -127);
  for (int g = 0; g < 16; ++g) {
    int sum = 0;
    for (int j = 0; j < 16; ++j) {
      sum += q[16 * g + j];
      ASSERT_LE(std::fabs(x[16 * g + j] - d * q[16 * g + j]), std::fabs(d) * 0.5f * 1.0001f);
    }
    EXPECT_EQ(bsums[g], sum);
  }
}

// NaN or Inf in a token: that token's outputs are non-finite, the others are unaffected.
TEST(CpuKernels, NonFiniteInputStaysInItsToken) {
  std::mt19937 rng(fresh_seed());
  const uint64_t cols = 256, rows = 6, tokens = 4;
  for (GgmlType type : {GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q4_K,
                        GgmlType::Q6_K}) {
    const TestMatrix m = make_matrix(type, rows, cols, rng);
    std::vector<float> x = make_acts(tokens, cols, cols, rng);
    for (Isa isa : cpu::supported_isas()) {
      const std::vector<float> clean = run(isa, m, x, tokens, cols);
      std::vector<float> bad = x;
      bad[1 * cols + 17] = std::numeric_limits<float>::quiet_NaN();
      bad[2 * cols + 200] = -std::numeric_limits<float>::infinity();
      const std::vector<float> y = run(isa, m, bad, tokens, cols);
      for (uint64_t r = 0; r < rows; ++r) {
        EXPECT_FALSE(std::isfinite(y[1 * rows + r])) << cpu::isa_name(isa);
        EXPECT_FALSE(std::isfinite(y[2 * rows + r])) << cpu::isa_name(isa);
        EXPECT_TRUE(same_bits(y[r], clean[r]));
        EXPECT_TRUE(same_bits(y[3 * rows + r], clean[3 * rows + r]));
      }
    }
  }
}

TEST(CpuKernels, DotAndAxpyF32) {
  std::mt19937 rng(fresh_seed());
  for (uint64_t n : {uint64_t{1}, uint64_t{63}, uint64_t{64}, uint64_t{1001}}) {
    const std::vector<float> a = test::random_nonzero(n, rng);
    const std::vector<float> b = test::random_nonzero(n, rng);
    double ref = 0.0, mag = 0.0;
    for (uint64_t i = 0; i < n; ++i) {
      ref += double(a[i]) * b[i];
      mag += std::fabs(double(a[i]) * b[i]);
    }
    for (Isa isa : cpu::supported_isas()) {
      const float d = cpu::dot_f32(isa, a.data(), b.data(), n);
      EXPECT_LE(std::fabs(d - ref), (double(n) / 8 + 16) * kEps * mag) << cpu::isa_name(isa);
      EXPECT_TRUE(same_bits(d, cpu::dot_f32(isa, a.data(), b.data(), n)));
      std::vector<float> y = b;
      cpu::axpy_f32(isa, 0.37f, a.data(), y.data(), n);
      for (uint64_t i = 0; i < n; ++i) {
        const double want = 0.37 * a[i] + b[i];
        ASSERT_LE(std::fabs(y[i] - want), 2 * kEps * (std::fabs(0.37 * a[i]) + std::fabs(b[i])));
      }
    }
  }
}

TEST(CpuKernels, IsaSelection) {
  const std::vector<Isa> isas = cpu::supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::Scalar);
  const char* saved = std::getenv("LOCKSTEP_CPU_ISA");
  const std::string restore = saved ? saved : "";
  unsetenv("LOCKSTEP_CPU_ISA");
  EXPECT_EQ(cpu::best_isa(), isas.back());
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) {
    EXPECT_EQ(isas.back(), Isa::Avx512);
  }
#endif
  for (Isa isa : isas) {
    setenv("LOCKSTEP_CPU_ISA", std::string(cpu::isa_name(isa)).c_str(), 1);
    EXPECT_EQ(cpu::best_isa(), isa);
  }
  setenv("LOCKSTEP_CPU_ISA", "avx1024", 1);
  const Error e = test::expect_error([] { cpu::best_isa(); });
  EXPECT_NE(std::string(e.what()).find("LOCKSTEP_CPU_ISA"), std::string::npos);
  EXPECT_NE(std::string(e.what()).find("scalar"), std::string::npos);
  if (saved) {
    setenv("LOCKSTEP_CPU_ISA", restore.c_str(), 1);
  } else {
    unsetenv("LOCKSTEP_CPU_ISA");
  }
}

TEST(CpuKernels, RejectsBadInput) {
  test::expect_error([] { cpu::act_format(GgmlType::Q8_K); });
  test::expect_error([] { cpu::act_format(GgmlType::IQ2_XXS); });
  EXPECT_EQ(cpu::act_format(GgmlType::BF16), ActFormat::F32);
  EXPECT_EQ(cpu::act_format(GgmlType::Q5_1), ActFormat::Q8_32);
  EXPECT_EQ(cpu::act_format(GgmlType::Q2_K), ActFormat::Q8_256);
  std::mt19937 rng(fresh_seed());
  const std::vector<float> x = test::random_nonzero(512, rng);
  PreparedActs acts;
  test::expect_error([&] { cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_32, x.data(), 1, 100, 100, acts); });
  const TestMatrix m = make_matrix(GgmlType::Q4_K, 4, 512, rng);
  std::vector<float> y(8);
  cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_32, x.data(), 1, 512, 512, acts);
  test::expect_error([&] { cpu::matmul(Isa::Scalar, m.view(), acts, 0, 4, y.data(), 4); });
  cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_256, x.data(), 1, 256, 256, acts);
  test::expect_error([&] { cpu::matmul(Isa::Scalar, m.view(), acts, 0, 4, y.data(), 4); });
  cpu::prepare_acts(Isa::Scalar, ActFormat::Q8_256, x.data(), 1, 512, 512, acts);
  test::expect_error([&] { cpu::matmul(Isa::Scalar, m.view(), acts, 2, 5, y.data(), 8); });
  WeightMatrix narrow = m.view();
  narrow.row_bytes = 100;
  test::expect_error([&] { cpu::matmul(Isa::Scalar, narrow, acts, 0, 4, y.data(), 4); });
}

}  // namespace
}  // namespace lockstep
