// The cuda lane's weight kernels against their CPU twins, type by type: device dequantization
// bit for bit against formats::dequantize, matmuls against a float64 product of the same decoded
// weights (tol + |ref|·eps), embedding lookups bit for bit. Q4_K and Q6_K matmuls quantize x to
// the cpu lane's Q8_256 blocks first: their float64 product takes those quantized activations,
// and a CPU twin of the kernels' arithmetic (int8_twin) must match them bit for bit. Outputs are
// poisoned with NaN and guarded (cuda/ops.h), so an unwritten element or an overrun fails.

#include "cuda/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "engine/cpu_kernels.h"
#include "engine/cpu_kernels_internal.h"
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

// ---- Int8 activations (Q4_K, Q6_K): the cpu lane's Q8_256 blocks and a twin of the kernels.

bool int8_acts(GgmlType type) {
  return type == GgmlType::Q4_K || type == GgmlType::Q6_K;
}

// x [tokens, cols] quantized by the cpu lane (engine::cpu::prepare_acts, Q8_256).
std::vector<engine::cpu::detail::ActBlockQ8_256> q8_blocks(std::span<const float> x,
                                                           uint64_t tokens, uint64_t cols) {
  engine::cpu::PreparedActs acts;
  engine::cpu::prepare_acts(engine::cpu::Isa::Scalar, engine::cpu::ActFormat::Q8_256, x.data(),
                            tokens, cols, cols, acts);
  std::vector<engine::cpu::detail::ActBlockQ8_256> blocks(tokens * cols / 256);
  std::memcpy(blocks.data(), acts.data.data(), blocks.size() * sizeof(blocks[0]));
  return blocks;
}

// The activations the int8 kernels see: d·q of each block, exact in double.
std::vector<double> q8_values(std::span<const float> x, uint64_t tokens, uint64_t cols) {
  const auto blocks = q8_blocks(x, tokens, cols);
  std::vector<double> v(tokens * cols);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<double>(blocks[i / 256].d) * blocks[i / 256].q[i % 256];
  return v;
}

// One f32 rounding of an exact double result (products and sums of two floats are exact in
// double, or rounded once innocuously), so no compiler contraction can change the twin.
float fmul(float a, float b) {
  return static_cast<float>(double{a} * double{b});
}
float fadd(float a, float b) {
  return static_cast<float>(double{a} + double{b});
}
float fsub(float a, float b) {
  return static_cast<float>(double{a} - double{b});
}
float f16(const std::byte* p) {
  return formats::fp16_to_f32(
      static_cast<uint16_t>(static_cast<uint8_t>(p[0]) | (static_cast<uint8_t>(p[1]) << 8)));
}

struct Twin {
  std::vector<float> y;     // [tokens, rows]: the kernels' bits
  std::vector<double> mag;  // [tokens, rows]: Σ (|d·sc·q| + |dmin·mn|)·|x_q| over the row
};

// The int8 kernels' arithmetic on the CPU (cuda/quant.cuh, kInt8): per chunk of 32, integer
// sums and the chunk's partial; lane p of a warp adds chunks p, p + 32, ... in order; then the
// xor-shuffle reduction (16, 8, 4, 2, 1).
Twin int8_twin(GgmlType type, std::span<const std::byte> w, uint64_t rows, uint64_t cols,
               std::span<const float> x, uint64_t tokens) {
  const auto blocks = q8_blocks(x, tokens, cols);
  const size_t block_bytes = type == GgmlType::Q4_K ? 144 : 210;
  const uint64_t chunks = cols / 32;
  Twin out{std::vector<float>(tokens * rows), std::vector<double>(tokens * rows)};
  for (uint64_t r = 0; r < rows; ++r) {
    const std::byte* row = w.data() + r * (cols / 256) * block_bytes;
    for (uint64_t t = 0; t < tokens; ++t) {
      float lane[32] = {};
      double mag = 0.0;
      for (uint64_t c = 0; c < chunks; ++c) {
        const std::byte* b = row + (c / 8) * block_bytes;
        const auto& xb = blocks[t * (cols / 256) + c / 8];
        const int j = static_cast<int>(c % 8);
        const int8_t* xq = xb.q + 32 * j;
        auto u8 = [&](int i) { return static_cast<int>(static_cast<uint8_t>(b[i])); };
        float part;
        if (type == GgmlType::Q4_K) {
          const float d = f16(b), dmin = f16(b + 2);
          int sc, mn;
          if (j < 4) {
            sc = u8(4 + j) & 63;
            mn = u8(8 + j) & 63;
          } else {
            sc = (u8(8 + j) & 0x0F) | ((u8(j) >> 6) << 4);
            mn = (u8(8 + j) >> 4) | ((u8(4 + j) >> 6) << 4);
          }
          int isum = 0, bsum = 0;
          for (int k = 0; k < 32; ++k) {
            const int q = (u8(16 + 32 * (j / 2) + k) >> (4 * (j % 2))) & 0x0F;
            isum += q * xq[k];
            bsum += xq[k];
            mag += (std::fabs(double{d} * sc * q) + std::fabs(double{dmin} * mn)) *
                   std::fabs(double{xb.d} * xq[k]);
          }
          part = fsub(fmul(fmul(d, xb.d), static_cast<float>(sc * isum)),
                      fmul(fmul(dmin, xb.d), static_cast<float>(mn * bsum)));
        } else {
          const float d = f16(b + 208);
          const int half = j / 4, g = j % 4, shift = g < 2 ? 0 : 4;
          const int sc[2] = {static_cast<int8_t>(u8(192 + 2 * j)),
                             static_cast<int8_t>(u8(193 + 2 * j))};
          int isum[2] = {0, 0};
          for (int k = 0; k < 32; ++k) {
            const int q = (((u8(64 * half + 32 * (g % 2) + k) >> shift) & 0x0F) |
                           (((u8(128 + 32 * half + k) >> (2 * g)) & 3) << 4)) -
                          32;
            isum[k / 16] += q * xq[k];
            mag += std::fabs(double{d} * sc[k / 16] * q) * std::fabs(double{xb.d} * xq[k]);
          }
          part = fmul(fmul(d, xb.d), static_cast<float>(sc[0] * isum[0] + sc[1] * isum[1]));
        }
        lane[c % 32] = fadd(lane[c % 32], part);
      }
      for (int o = 16; o > 0; o /= 2) {
        float next[32];
        for (int p = 0; p < 32; ++p) next[p] = fadd(lane[p], lane[p ^ o]);
        std::memcpy(lane, next, sizeof lane);
      }
      out.y[t * rows + r] = lane[0];
      out.mag[t * rows + r] = mag;
    }
  }
  return out;
}

// Counts the elements of got that differ in their bits from want, reporting the first few.
size_t bit_differences(std::span<const float> want, std::span<const float> got, const char* what) {
  size_t differ = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&want[i], &got[i], sizeof(float)) != 0 && differ++ < 5)
      ADD_FAILURE() << what << " element " << i << ": twin " << want[i] << " vs " << got[i];
  }
  return differ;
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
    // Int8 types: the product takes the quantized activations, and the kernels' bits are the
    // twin's.
    const bool int8 = int8_acts(type);
    std::vector<double> xr(x.begin(), x.end());
    Twin twin;
    if (int8) {
      xr = q8_values(x, tokens, cols);
      twin = int8_twin(type, w, rows, cols, x, tokens);
      EXPECT_EQ(bit_differences(twin.y, y, "twin"), 0u);
    }
    double worst = 0.0;
    for (uint64_t t = 0; t < tokens; ++t) {
      for (uint64_t r = 0; r < rows; ++r) {
        double ref = 0.0, mag = 0.0;
        for (uint64_t i = 0; i < cols; ++i) {
          const double p = static_cast<double>(wf[r * cols + i]) * xr[t * cols + i];
          ref += p;
          mag += std::fabs(p);
        }
        const float got = y[t * rows + r];
        ASSERT_TRUE(std::isfinite(got)) << "t " << t << " r " << r;
        // f32 accumulation: a lane sums its chunks' products in order, then 5 shuffle steps;
        // the classic bound (terms + steps)·u·Σ|w·x| is the tol, eps covers |ref|. Int8 types:
        // each chunk's partial takes 3 roundings and the codec's decoded weight 3 more, against
        // Σ (|d·sc·q| + |dmin·mn|)·|x| (the mins can cancel the scaled integers).
        const double chunks = std::ceil(static_cast<double>(cols) / 32.0);
        if (int8) mag = twin.mag[t * rows + r];
        const double tol = (32.0 * std::ceil(chunks / 32.0) + 6.0 + (int8 ? 6.0 : 0.0)) * 0x1p-24 *
                           mag,
                     eps = 1e-6;
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
    if (int8_acts(type)) {
      // A one-hot x quantizes to −127 at the pick: the twin's arithmetic, not the codec's
      // weight, bit for bit (still only the picked weight's integer and scales enter).
      const Twin twin = int8_twin(type, w, rows, cols, x, picks.size());
      EXPECT_EQ(bit_differences(twin.y, y, "prefill"), 0u);
      EXPECT_EQ(bit_differences(std::span(twin.y).subspan(3 * rows, rows), one, "decode"), 0u);
      continue;
    }
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
  // And the values are the product: spot rows against float64 (int8 types: of the quantized
  // activations, and bit for bit the twin's).
  const bool int8 = int8_acts(type);
  std::vector<double> xr(x.begin(), x.end());
  Twin twin;
  if (int8) {
    xr = q8_values(x, tokens, cols);
    twin = int8_twin(type, w, rows, cols, x, tokens);
    EXPECT_EQ(bit_differences(twin.y, y, "twin"), 0u);
  }
  for (uint64_t r : {0u, 4096u, 9000u}) {
    double ref = 0.0, mag = 0.0;
    for (uint64_t i = 0; i < cols; ++i) {
      const double p = static_cast<double>(wf[r * cols + i]) * xr[20 * cols + i];
      ref += p;
      mag += std::fabs(p);
    }
    if (int8) mag = twin.mag[20 * rows + r];
    EXPECT_LE(std::fabs(y[20 * rows + r] - ref), 1e-5 * mag + 1e-30) << "row " << r;
  }
}

// Several matrices of one type in one decode launch (Q, K and V), each output finished with its
// bias and the scale as it is written: bit for bit each matrix's own decode followed by
// (s + bias) · scale, in the few-rows (4-warp) and many-rows (16-warp) shapes, parts of odd
// lengths, the middle one without a bias. The output is poisoned: a row left unwritten fails.
TEST_P(CudaWeightKernels, OneLaunchOfSeveralMatricesEqualsEachAloneThenItsBias) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  const GgmlType type = GetParam();
  const uint64_t cols = odd_cols(type) * 2;
  const std::vector<float> x = test::random_nonzero(cols, 29);
  for (const std::vector<uint64_t>& rows :
       {std::vector<uint64_t>{37, 5, 300}, std::vector<uint64_t>{3001, 7, 130},
        std::vector<uint64_t>{2500}}) {
    SCOPED_TRACE(::testing::PrintToString(rows));
    std::vector<std::vector<std::byte>> w;
    std::vector<std::vector<float>> bias;
    std::vector<ops::MatvecPart> parts;
    for (size_t p = 0; p < rows.size(); ++p) {
      std::vector<float> decoded;
      w.push_back(random_weights(type, rows[p], cols, 31 + static_cast<uint32_t>(p), &decoded));
      bias.push_back(p == 1 ? std::vector<float>{}
                            : test::random_nonzero(rows[p], 37 + static_cast<uint32_t>(p)));
    }
    for (size_t p = 0; p < rows.size(); ++p) parts.push_back({w[p], rows[p], bias[p]});
    for (bool epilogue : {false, true}) {
      const float scale = 0.75f;
      std::vector<float> want;
      for (size_t p = 0; p < rows.size(); ++p) {
        const std::vector<float> alone = ops::matmul(0, type, w[p], rows[p], cols, x, 1);
        for (uint64_t r = 0; r < rows[p]; ++r) {
          const float s = alone[r];
          want.push_back(epilogue ? fmul(bias[p].empty() ? s : fadd(s, bias[p][r]), scale) : s);
        }
      }
      const std::vector<float> got = ops::matvec(0, type, parts, cols, x, epilogue, scale);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(bit_differences(want, got, epilogue ? "finished" : "plain"), 0u);
    }
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

// The int8 kernels quantize x exactly as the cpu lane does: ties of the largest magnitude (the
// first wins, here the negative one), an all-zero block, a block whose largest value is
// positive, in the decode and prefill shapes, bit for bit against the twin (which quantizes
// with the cpu lane's code); a block holding an infinity or a NaN makes every output NaN, as
// in the cpu lane.
TEST(CudaInt8Matmul, QuantizesActivationsAsTheCpuLane) {
  LOCKSTEP_REQUIRE_CUDA_DEVICE();
  for (GgmlType type : {GgmlType::Q4_K, GgmlType::Q6_K}) {
    SCOPED_TRACE(formats::ggml_type_name(type));
    const uint64_t rows = 45, cols = 1024, tokens = 9;
    std::vector<float> wf;
    std::vector<std::byte> w = random_weights(type, rows, cols, 29, &wf);
    std::vector<float> x = test::random_nonzero(tokens * cols, 31, 0.5f);
    for (uint64_t t = 0; t < tokens; ++t) {
      float* xt = x.data() + t * cols;
      xt[5] = -2.0f, xt[100] = 2.0f;                        // block 0: a tie, −2 comes first
      std::fill(xt + 256, xt + 512, 0.0f);                  // block 1: zero
      xt[512 + 7] = 1.5f + 0.125f * static_cast<float>(t);  // block 2: a positive largest
      xt[768 + 3] = 0.499f, xt[768 + 200] = -0.499f;        // block 3: random
    }
    const Twin twin = int8_twin(type, w, rows, cols, x, tokens);
    const std::vector<float> y = ops::matmul(0, type, w, rows, cols, x, tokens);
    EXPECT_EQ(bit_differences(twin.y, y, "prefill"), 0u);
    for (uint64_t t : {0u, 8u}) {
      const std::vector<float> one =
          ops::matmul(0, type, w, rows, cols, std::span(x).subspan(t * cols, cols), 1);
      EXPECT_EQ(bit_differences(std::span(twin.y).subspan(t * rows, rows), one, "decode"), 0u);
    }
    for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
      std::vector<float> xb(x.begin(), x.begin() + 2 * cols);
      xb[cols + 700] = bad;  // token 1, block 2
      const std::vector<float> yb = ops::matmul(0, type, w, rows, cols, xb, 2);
      const std::vector<float> ob =
          ops::matmul(0, type, w, rows, cols, std::span(xb).subspan(cols, cols), 1);
      for (uint64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(0, std::memcmp(&twin.y[r], &yb[r], sizeof(float))) << "row " << r;
        EXPECT_TRUE(std::isnan(yb[rows + r])) << "row " << r << ": " << yb[rows + r];
        EXPECT_TRUE(std::isnan(ob[r])) << "row " << r << ": " << ob[r];
      }
    }
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
