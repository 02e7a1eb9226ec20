// The cuda lane's weight kernels against their CPU twins, type by type: device dequantization
// bit for bit against formats::dequantize, matmuls against a float64 product of the same decoded
// weights (tol + |ref|·eps), embedding lookups bit for bit. Outputs are poisoned with NaN and
// guarded (cuda/ops.h), so an unwritten element or an overrun fails.

#include "cuda/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "formats/ggml_codec.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace lockstep::cuda {
namespace {

using formats::GgmlType;

constexpr GgmlType kTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0,
                               GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                               GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                               GgmlType::Q6_K};

// A row length that is a whole number of blocks, and for the plain types not a multiple of the
// kernels' 32-element chunk (so the tail path runs).
uint64_t odd_cols(GgmlType type) {
  const uint32_t block = formats::ggml_type_info(type).block_elems;
  return block == 1 ? 75 : block == 32 ? 96 : 512;
}

// rows × cols values quantized to `type`; rows of different magnitudes (the tiny one gives
// subnormal fp16 scales).
std::vector<std::byte> random_weights(GgmlType type, uint64_t rows, uint64_t cols, uint32_t seed,
                                      std::vector<float>* decoded) {
  std::mt19937 rng(seed);
  std::vector<float> w;
  for (uint64_t r = 0; r < rows; ++r) {
    const float range = r % 5 == 4 ? 1e-6f : (r % 3 == 0 ? 0.05f : 2.0f);
    std::vector<float> row = test::random_nonzero(cols, rng, range);
    w.insert(w.end(), row.begin(), row.end());
  }
  std::vector<std::byte> bytes(*formats::ggml_bytes(type, w.size()));
  formats::quantize(type, w, bytes);
  decoded->resize(w.size());
  formats::dequantize(type, bytes, *decoded);
  return bytes;
}

std::string type_name(const ::testing::TestParamInfo<GgmlType>& info) {
  return std::string(formats::ggml_type_name(info.param));
}

class CudaWeightKernels : public ::testing::TestWithParam<GgmlType> {};

TEST_P(CudaWeightKernels, DequantizeIsBitIdenticalToTheCpuCodec) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t rows = 37, cols = odd_cols(type) * 2;
  std::vector<float> cpu;
  std::vector<std::byte> w = random_weights(type, rows, cols, 3, &cpu);
  std::vector<float> gpu = ops::dequantize(0, type, w, rows, cols);
  ASSERT_EQ(gpu.size(), cpu.size());
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (std::memcmp(&cpu[i], &gpu[i], sizeof(float)) != 0 && differ++ == 0) first = i;
  }
  EXPECT_EQ(differ, 0u) << "first at " << first << ": cpu " << cpu[first] << " gpu " << gpu[first];
}

TEST_P(CudaWeightKernels, MatmulMatchesTheFloat64ProductForOneAnd13Tokens) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t rows = 37, cols = odd_cols(type) * 3;
  std::vector<float> wf;
  std::vector<std::byte> w = random_weights(type, rows, cols, 5, &wf);
  std::vector<float> decode_rows;  // [13, rows] one token at a time
  for (uint64_t tokens : {1u, 13u}) {
    SCOPED_TRACE(tokens);
    std::vector<float> x = test::random_nonzero(tokens * cols, 7 + static_cast<uint32_t>(tokens));
    std::vector<float> y = ops::matmul(0, type, w, rows, cols, x, tokens);
    ASSERT_EQ(y.size(), tokens * rows);
    double worst = 0.0;
    for (uint64_t t = 0; t < tokens; ++t) {
      for (uint64_t r = 0; r < rows; ++r) {
        double ref = 0.0, mag = 0.0;
        for (uint64_t i = 0; i < cols; ++i) {
          const double p = static_cast<double>(wf[r * cols + i]) * x[t * cols + i];
          ref += p;
          mag += std::fabs(p);
        }
        const float got = y[t * rows + r];
        ASSERT_TRUE(std::isfinite(got)) << "t " << t << " r " << r;
        // f32 accumulation: a lane sums its chunks' products in order, then 5 shuffle steps;
        // the classic bound (terms + steps)·u·Σ|w·x| is the tol, eps covers |ref|.
        const double chunks = std::ceil(static_cast<double>(cols) / 32.0);
        const double tol = (32.0 * std::ceil(chunks / 32.0) + 6.0) * 0x1p-24 * mag, eps = 1e-6;
        const double err = std::fabs(got - ref);
        EXPECT_LE(err, tol + std::fabs(ref) * eps) << "t " << t << " r " << r;
        worst = std::max(worst, err / (mag > 0 ? mag : 1.0));
      }
    }
    std::printf("[cuda matmul] %-5s tokens %2llu: worst |err| / Σ|w·x| = %.2e\n",
                std::string(formats::ggml_type_name(type)).c_str(),
                static_cast<unsigned long long>(tokens), worst);
    // Prefill equals decode: each token's row computed alone is bit-identical.
    if (tokens == 13) {
      for (uint64_t t = 0; t < tokens; ++t) {
        std::vector<float> one = ops::matmul(0, type, w, rows, cols,
                                             std::span(x).subspan(t * cols, cols), 1);
        EXPECT_EQ(0, std::memcmp(one.data(), &y[t * rows], rows * sizeof(float))) << "t " << t;
      }
    }
  }
}

TEST_P(CudaWeightKernels, EmbeddingRowsAreTheDecodedRowsTimesTheScale) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t rows = 29, cols = odd_cols(type);
  std::vector<float> wf;
  std::vector<std::byte> w = random_weights(type, rows, cols, 9, &wf);
  const std::vector<int32_t> ids{3, 0, 28, 3, 17, 11, 5};
  for (float scale : {1.0f, 2.5f}) {
    std::vector<float> y = ops::embed(0, type, w, rows, cols, ids, scale);
    ASSERT_EQ(y.size(), ids.size() * cols);
    for (size_t t = 0; t < ids.size(); ++t) {
      for (uint64_t i = 0; i < cols; ++i) {
        const float want = scale == 1.0f ? wf[ids[t] * cols + i] : wf[ids[t] * cols + i] * scale;
        ASSERT_EQ(0, std::memcmp(&want, &y[t * cols + i], sizeof(float)))
            << "token " << t << " element " << i << ": " << want << " vs " << y[t * cols + i];
      }
    }
  }
}

// Multiplying by one-hot tokens reads single weights back: y[t, r] = w[r, i] exactly (every
// other product is w·0 and adds nothing), so the matmul's own decoding (16-byte and 2-byte
// loads, no conversion unit) must give the codec's floats bit for bit. Both kernel shapes of a
// decode step (few rows: one a warp; many rows: four a warp) and the prefill tile are covered,
// with a token count that leaves the last tile partial.
TEST_P(CudaWeightKernels, MatmulDecodesTheWeightsBitForBitInEveryKernelShape) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  // Plain types: a row with a tail chunk (scalar loads) and one of whole aligned chunks
  // (16-byte loads).
  std::vector<uint64_t> widths{odd_cols(type) * 2};
  if (formats::ggml_type_info(type).block_elems == 1) widths.push_back(256);
  for (auto [rows, cols] : {std::pair{uint64_t{37}, widths.front()},
                            std::pair{uint64_t{9001}, widths.back()}}) {
    SCOPED_TRACE(testing::Message() << rows << " x " << cols);
    std::vector<float> wf;
    std::vector<std::byte> w = random_weights(type, rows, cols, 11, &wf);
    // Prefill: 21 one-hot tokens spread over the row (2 tiles, the second partial).
    std::vector<uint64_t> picks;
    for (uint64_t t = 0; t < 21; ++t) picks.push_back((t * 37 + 5) % cols);
    picks.back() = cols - 1;
    std::vector<float> x(picks.size() * cols, 0.0f);
    for (size_t t = 0; t < picks.size(); ++t) x[t * cols + picks[t]] = 1.0f;
    std::vector<float> y = ops::matmul(0, type, w, rows, cols, x, picks.size());
    std::vector<float> one = ops::matmul(0, type, w, rows, cols,
                                         std::span(x).subspan(3 * cols, cols), 1);
    size_t differ = 0;
    for (uint64_t r = 0; r < rows; ++r) {
      for (size_t t = 0; t < picks.size(); ++t) {
        const float want = wf[r * cols + picks[t]] + 0.0f;  // a -0 weight sums to +0
        if (std::memcmp(&want, &y[t * rows + r], sizeof(float)) != 0 && differ++ < 5)
          ADD_FAILURE() << "row " << r << " column " << picks[t] << ": " << want << " vs "
                        << y[t * rows + r];
      }
      const float want = wf[r * cols + picks[3]] + 0.0f;
      if (std::memcmp(&want, &one[r], sizeof(float)) != 0 && differ++ < 5)
        ADD_FAILURE() << "decode, row " << r << ": " << want << " vs " << one[r];
    }
    EXPECT_EQ(differ, 0u);
  }
}

// Random tokens through the many-row decode shape and the prefill tile: every token's row of a
// 21-token product is bit-identical to that token alone.
TEST_P(CudaWeightKernels, ManyRowsPrefillEqualsDecodeBitForBit) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t rows = 9001, cols = odd_cols(type) * 3, tokens = 21;
  std::vector<float> wf;
  std::vector<std::byte> w = random_weights(type, rows, cols, 13, &wf);
  std::vector<float> x = test::random_nonzero(tokens * cols, 17);
  std::vector<float> y = ops::matmul(0, type, w, rows, cols, x, tokens);
  for (uint64_t t : {0u, 7u, 16u, 20u}) {
    std::vector<float> one =
        ops::matmul(0, type, w, rows, cols, std::span(x).subspan(t * cols, cols), 1);
    EXPECT_EQ(0, std::memcmp(one.data(), &y[t * rows], rows * sizeof(float))) << "token " << t;
  }
  // And the values are the product: spot rows against float64.
  for (uint64_t r : {0u, 4096u, 9000u}) {
    double ref = 0.0, mag = 0.0;
    for (uint64_t i = 0; i < cols; ++i) {
      const double p = static_cast<double>(wf[r * cols + i]) * x[20 * cols + i];
      ref += p;
      mag += std::fabs(p);
    }
    EXPECT_LE(std::fabs(y[20 * rows + r] - ref), 1e-5 * mag + 1e-30) << "row " << r;
  }
}

// Rows too long to stage whole in shared memory (over 45k columns) take the slab kernel at
// decode too: the same bits as the prefill tile.
TEST_P(CudaWeightKernels, LongRowsDecodeEqualsPrefillBitForBit) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t rows = 5, cols = 47104 + (formats::ggml_type_info(type).block_elems == 1 ? 3 : 0);
  std::vector<float> wf;
  std::vector<std::byte> w = random_weights(type, rows, cols, 19, &wf);
  std::vector<float> x = test::random_nonzero(3 * cols, 23);
  std::vector<float> y = ops::matmul(0, type, w, rows, cols, x, 3);
  for (uint64_t t = 0; t < 3; ++t) {
    std::vector<float> one =
        ops::matmul(0, type, w, rows, cols, std::span(x).subspan(t * cols, cols), 1);
    EXPECT_EQ(0, std::memcmp(one.data(), &y[t * rows], rows * sizeof(float))) << "token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaWeightKernels, ::testing::ValuesIn(kTypes), type_name);

TEST(CudaWeightKernels, EveryCodecTypeHasKernelsAndOthersAreRefusedByName) {
  for (const formats::GgmlTypeInfo& info : formats::ggml_types())
    EXPECT_EQ(ops::has_weight_kernels(info.type), info.has_codec)
        << info.name;
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  std::vector<std::byte> bytes(36 * 4);
  Error e = test::expect_error([&] { ops::dequantize(0, GgmlType::Q8_1, bytes, 4, 32); });
  EXPECT_NE(std::string(e.what()).find("Q8_1"), std::string::npos) << e.what();
}

}  // namespace
}  // namespace lockstep::cuda
