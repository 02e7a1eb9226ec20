#include "engine/compare.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <system_error>
#include <thread>

#include "engine/cpu_kernels.h"
#include "formats/error.h"

#if defined(LOCKSTEP_HAVE_X86_KERNELS)
// GCC 12's avx512fintrin.h sets its _mm512_undefined_* values from themselves, and
// -Wuninitialized flags every inlined use (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif

namespace lockstep::engine {
namespace {

using json = nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();
constexpr float kNaNF = std::numeric_limits<float>::quiet_NaN();
// Elements per inner block: the vectorised sums, then the histogram loop, over data still in L1.
constexpr uint64_t kBlock = 512;

bool is_per_head_rows(Stage s) {
  return s == Stage::QkvMatmul || s == Stage::QkvBias || s == Stage::QPostRope ||
         s == Stage::KPostRope || s == Stage::Attention;
}
bool is_attention_matrix(Stage s) {
  return s == Stage::AttnScores || s == Stage::AttnSoftmax;
}

// How flat indices map to tokens and heads. A segment is the finest unit with its own partial
// sums: one (token, head) slice, one token row, one (head, token) row of keys, or everything.
struct Layout {
  enum class Kind { Rows, Attention, Flat } kind = Kind::Flat;
  uint64_t tokens = 0, width = 0;  // Rows: [tokens, width]; Attention: [heads, tokens, ctx]
  uint64_t heads = 0, head_dim = 0, ctx = 0;
  uint64_t segment_len = 1, segments = 0;

  uint64_t segment_token(uint64_t s) const {
    if (kind == Kind::Attention) return s % tokens;
    return heads ? s / heads : s;
  }
  uint64_t segment_head(uint64_t s) const {
    if (kind == Kind::Attention) return s / tokens;
    return s % heads;
  }
  MaxDiffLocation decode(uint64_t i) const {
    MaxDiffLocation m;
    m.index = static_cast<int64_t>(i);
    switch (kind) {
      case Kind::Rows:
        m.token = static_cast<int64_t>(i / width);
        m.channel = static_cast<int64_t>(i % width);
        if (head_dim) m.head = m.channel / static_cast<int64_t>(head_dim);
        break;
      case Kind::Attention:
        m.head = static_cast<int64_t>(i / (tokens * ctx));
        m.token = static_cast<int64_t>(i / ctx % tokens);
        m.channel = static_cast<int64_t>(i % ctx);
        break;
      case Kind::Flat:
        m.channel = static_cast<int64_t>(i);
        break;
    }
    return m;
  }
};

Layout make_layout(Stage stage, const std::vector<uint64_t>& shape, uint64_t n,
                   std::optional<uint64_t> head_dim) {
  Layout l;
  if (shape.size() == 2 && shape[0] && shape[1]) {
    l.kind = Layout::Kind::Rows;
    l.tokens = shape[0];
    l.width = shape[1];
    l.segment_len = l.width;
    if (is_per_head_rows(stage) && head_dim && *head_dim && l.width % *head_dim == 0) {
      l.head_dim = *head_dim;
      l.heads = l.width / l.head_dim;
      l.segment_len = l.head_dim;
    }
  } else if (shape.size() == 3 && is_attention_matrix(stage) && shape[0] && shape[1] && shape[2]) {
    l.kind = Layout::Kind::Attention;
    l.heads = shape[0];
    l.tokens = shape[1];
    l.ctx = shape[2];
    l.segment_len = l.ctx;
  } else {
    l.segment_len = std::max<uint64_t>(n, 1);
  }
  l.segments = n / l.segment_len;
  return l;
}

// ---- per-chunk accumulation --------------------------------------------------------------

// Sums over one segment's part in a chunk.
struct SegmentPartial {
  uint64_t segment = 0;
  double d2 = 0, a2 = 0;
  bool nan = false, unpaired = false;
};

struct SideAcc {
  double sum = 0, sum2 = 0;
  uint64_t finite = 0, nan = 0, pos_inf = 0, neg_inf = 0;
};

// One chunk's partial results; combined in chunk order.
struct ChunkAcc {
  uint64_t paired = 0, masked = 0, unpaired = 0, sign_agree = 0;
  bool nan = false;
  double ab = 0, aa = 0, bb = 0, dd = 0;  // over paired positions
  double max_abs_diff = -1;
  uint64_t max_index = 0;
  SideAcc a, b;
  // A chunk holds < 2^32 elements, so its counts fit 32 bits.
  std::vector<uint32_t> hist_a, hist_b;
  std::vector<uint32_t> diff;  // [negative decades, high to low | zero | positive, low to high]
  std::vector<SegmentPartial> segments;
};

// Diff decades by the biased exponent e of |d| as a float: every |d| in that octave is in
// bucket decade_lo[e], or decade_lo[e] + 1 from threshold[e] (the float nearest the one power
// of ten inside the octave, if any; else NaN, which no |d| reaches, not even +inf) on. Buckets
// are decade − min_decade, clamped. Built once per comparison.
struct DecadeTable {
  int min_decade = 0, max_decade = 0;
  int32_t decade_lo[256] = {};
  float threshold[256] = {};

  DecadeTable(int min_d, int max_d) : min_decade(min_d), max_decade(max_d) {
    for (int e = 0; e < 256; ++e) {
      threshold[e] = kNaNF;
      // e = 0: zero (its own bucket) or subnormal, below any decade the options allow to matter;
      // e = 255: an overflowed difference (finite sides 3e38 apart), above any.
      if (e == 0 || e == 255) {
        decade_lo[e] = e == 0 ? 0 : max_d - min_d;
        continue;
      }
      const double lo_v = std::ldexp(1.0, e - 127), hi_v = std::ldexp(1.0, e - 126);
      int k = static_cast<int>(std::floor((e - 127) * 0.30102999566398120));
      while (std::pow(10.0, k + 1) <= lo_v) ++k;
      while (std::pow(10.0, k) > lo_v) --k;
      decade_lo[e] = std::clamp(k, min_d, max_d) - min_d;
      const double next = std::pow(10.0, k + 1);
      if (next < hi_v && k + 1 <= max_d && k + 1 > min_d) threshold[e] = static_cast<float>(next);
    }
    const int decades = max_d - min_d + 1;
    by_decade = decades < 32;
    for (int j = 0; j < 32; ++j)
      power[j] = j > 0 && j < decades ? static_cast<float>(std::pow(10.0, min_d + j)) : kNaNF;
    for (int e = 0; e < 256 && by_decade; ++e) {
      const int j = decade_of(e);
      const float t = threshold[e], p = power[j];
      // A power of ten above the whole octave does what the table's NaN does.
      const bool same_thr = std::isnan(t) ? std::isnan(p) || (e < 255 && static_cast<double>(p) >=
                                                                             std::ldexp(1.0, e - 126))
                                          : p == t;
      by_decade = std::max(j - 1, 0) == decade_lo[e] && same_thr;
    }
  }
  int zero() const { return max_decade - min_decade + 1; }
  // The same lookup without 256-entry tables, for the SIMD kernel. j = decade_of(e) is the
  // octave's decade floor((e − 127)·log10 2), clamped to [min − 1, max], less (min − 1); then
  // decade_lo[e] = max(j − 1, 0) and the threshold is power[j], the float nearest 10^(min + j)
  // (NaN at both ends). A power of ten above the octave is as good a threshold as the table's
  // NaN. by_decade: checked against the tables for every exponent; false with more than 31
  // decades, or where e = 0 or e = 255 do not clamp to the ends (decades beyond ±38).
  float power[32];
  bool by_decade = false;
  int decade_of(int e) const {
    const int k = ((e - 127) * 1233) >> 12;  // arithmetic shift: the floor
    return std::clamp(k, min_decade - 1, max_decade) - (min_decade - 1);
  }
  // Index into the [negative | zero | positive] array for d = b − a (float arithmetic).
  int index(float d) const {
    if (d == 0) return zero();
    const float ad = std::fabs(d);
    const auto e = static_cast<int>(std::bit_cast<uint32_t>(ad) >> 23);
    const int k = decade_lo[e] + (ad >= threshold[e]) + 1;
    return d > 0 ? zero() + k : zero() - k;
  }
};

// Keeps a product from being fused into the add or subtract that follows it (GCC contracts
// a · b + c into an FMA where the target has one): the product's rounding is part of the
// result, and every kernel must round the same way.
template <class T>
T rounded(T x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(x));
#endif
  return x;
}

// Per block of kBlock elements: the histogram keys, one per element. key0 is the joint key
// bin_a · bins + bin_b (joint tables) or bin_a, key1 is bin_b (separate tables only), diff the
// index into [negative | zero | positive]. A position a table does not count goes to a dump
// slot just past the end of that table.
struct BlockKeys {
  int32_t key0[kBlock], key1[kBlock], diff[kBlock];
};

// Sums over the paired positions of one block, in kLanes fixed lanes: element i of the block
// goes to lane i % kLanes, each lane is summed in order, and the lanes are combined by a fixed
// tree (combine_lanes). The same bits from every kernel and whatever the thread count.
constexpr int kLanes = 8;

struct BlockSums {
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0, sdd = 0;
  double max_abs_diff = -1;  // -1 when nothing is paired
  uint32_t paired = 0, agree = 0;
  // Positions not paired: both -inf, finite in one side only; per side NaN, +inf, -inf.
  uint32_t masked = 0, one_sided = 0;
  uint32_t nan[2] = {}, pos_inf[2] = {}, neg_inf[2] = {};
};

// What a block kernel needs besides the data, fixed per chunk.
struct KeyParams {
  float scale = 0, offset = 0, top = 0;  // Binning's
  int32_t bins = 1;
  bool joint = false;
  int32_t dump0 = 0, dump1 = 0, dump_diff = 0;
  const DecadeTable* decades = nullptr;
};

using BlockKernel = BlockSums (*)(const float* a, const float* b, uint32_t n, const KeyParams& kp,
                                  BlockKeys& out);

// What every chunk of one cell needs, fixed before the main pass.
struct Binning {
  // value bin = x · scale − offset in float (offset = lo · scale; no overflow even for a
  // range of ±3e38), truncated and clamped to bins − 1; x ≥ lo keeps it ≥ 0.
  float scale = 0, offset = 0;
  int bins = 1;
  const DecadeTable* decades = nullptr;
  BlockKernel kernel = nullptr;

  int value_bin(float x) const {
    return static_cast<int>(std::min(rounded(x * scale) - offset, static_cast<float>(bins - 1)));
  }
};

// Relative RMS from partial sums, with metrics.h's convention.
double relative_from(double d2, double a2, bool nan, bool unpaired) {
  if (nan) return kNaN;
  if (unpaired) return kInf;
  if (d2 == 0.0) return 0.0;
  return a2 == 0.0 ? kInf : std::sqrt(d2 / a2);
}

// Finite range of one side: branch-free so it vectorises.
[[gnu::target_clones("avx2", "default")]] void finite_range(const float* x, uint64_t n, float& lo,
                                                            float& hi) {
  constexpr float kMax = std::numeric_limits<float>::max();
  float mn = kInfF, mx = -kInfF;
#pragma omp simd reduction(min : mn) reduction(max : mx)
  for (uint64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const bool fin = std::fabs(v) <= kMax;
    mn = std::min(mn, fin ? v : kInfF);
    mx = std::max(mx, fin ? v : -kInfF);
  }
  lo = std::min(lo, mn);
  hi = std::max(hi, mx);
}

void merge_side(SideAcc& s, const SideAcc& p) {
  s.sum += p.sum;
  s.sum2 += p.sum2;
  s.finite += p.finite;
  s.nan += p.nan;
  s.pos_inf += p.pos_inf;
  s.neg_inf += p.neg_inf;
}

// Lanes combined: (l, l + 4), then (l, l + 2), then (0, 1); the AVX-512 kernel halves its
// register in that order.
double combine_lanes(const double* l) {
  double v[4];
  for (int j = 0; j < 4; ++j) v[j] = l[j] + l[j + 4];
  for (int j = 0; j < 2; ++j) v[j] = v[j] + v[j + 2];
  return v[0] + v[1];
}

int32_t sign_of(float x) {
  return (x > 0) - (x < 0);
}

// The portable kernel, element by element; the reference the SIMD kernel must match bit for bit.
BlockSums block_portable(const float* a, const float* b, uint32_t n, const KeyParams& kp,
                         BlockKeys& out) {
  double lanes[6][kLanes] = {};
  BlockSums s;
  const DecadeTable& dt = *kp.decades;
  auto bin = [&](float x) {
    return static_cast<int32_t>(std::min(rounded(x * kp.scale) - kp.offset, kp.top));
  };
  for (uint32_t i = 0; i < n; ++i) {
    const float fa = a[i], fb = b[i];
    const bool ok_a = std::isfinite(fa), ok_b = std::isfinite(fb), ok = ok_a && ok_b;
    const int32_t ba = ok_a ? bin(fa) : 0, bb = ok_b ? bin(fb) : 0;
    if (kp.joint) {
      out.key0[i] = ok ? ba * kp.bins + bb : kp.dump0;
    } else {
      out.key0[i] = ok_a ? ba : kp.dump0;
      out.key1[i] = ok_b ? bb : kp.dump1;
    }
    if (!ok) {
      out.diff[i] = kp.dump_diff;
      const float f[2] = {fa, fb};
      for (int side = 0; side < 2; ++side) {
        s.nan[side] += std::isnan(f[side]);
        s.pos_inf[side] += f[side] == kInfF;
        s.neg_inf[side] += f[side] == -kInfF;
      }
      s.masked += fa == -kInfF && fb == -kInfF;
      s.one_sided += ok_a || ok_b;
      continue;
    }
    out.diff[i] = dt.index(fb - fa);
    const int j = static_cast<int>(i % kLanes);
    const double x = fa, y = fb, d = y - x;
    // x·x, y·y and x·y are exact in double (24-bit significands): fused or not, the same.
    lanes[0][j] += x;
    lanes[1][j] += y;
    lanes[2][j] += x * x;
    lanes[3][j] += y * y;
    lanes[4][j] += x * y;
    lanes[5][j] += rounded(d * d);
    s.max_abs_diff = std::max(s.max_abs_diff, std::fabs(d));
    ++s.paired;
    s.agree += sign_of(fa) == sign_of(fb);
  }
  s.sa = combine_lanes(lanes[0]);
  s.sb = combine_lanes(lanes[1]);
  s.saa = combine_lanes(lanes[2]);
  s.sbb = combine_lanes(lanes[3]);
  s.sab = combine_lanes(lanes[4]);
  s.sdd = combine_lanes(lanes[5]);
  return s;
}

#if defined(LOCKSTEP_HAVE_X86_KERNELS)
#define LOCKSTEP_COMPARE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

LOCKSTEP_COMPARE_AVX512 double combine_lanes(__m512d v) {
  const __m256d w = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
  const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
  return _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
}

// block_portable, 16 elements at a time, each half added in turn to the one register of lanes.
// Masked adds leave a lane as it is where the position is not paired, as the portable kernel
// skips it; products whose rounding matters use the explicit-rounding forms, which the
// compiler never fuses.
LOCKSTEP_COMPARE_AVX512 BlockSums block_avx512(const float* a, const float* b, uint32_t n,
                                               const KeyParams& kp, BlockKeys& out) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m512d sa = _mm512_setzero_pd(), sb = sa, saa = sa, sbb = sa, sab = sa, sdd = sa;
  __m512d md = _mm512_set1_pd(-1.0);
  BlockSums s;
  const __m512 scale = _mm512_set1_ps(kp.scale), offset = _mm512_set1_ps(kp.offset);
  const __m512 top = _mm512_set1_ps(kp.top), fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
  const __m512 fzero = _mm512_setzero_ps();
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1);
  const __m512i bins = _mm512_set1_epi32(kp.bins), dump0 = _mm512_set1_epi32(kp.dump0);
  const __m512i dump1 = _mm512_set1_epi32(kp.dump1), dump_diff = _mm512_set1_epi32(kp.dump_diff);
  const __m512i zero_key = _mm512_set1_epi32(kp.decades->zero());
  const DecadeTable& dt = *kp.decades;
  const int32_t* decade_lo = dt.decade_lo;
  const float* threshold = dt.threshold;
  const bool by_decade = dt.by_decade;
  const __m512i e_bias = _mm512_set1_epi32(127), k1233 = _mm512_set1_epi32(1233);
  const __m512i j_lo = _mm512_set1_epi32(dt.min_decade - 1), j_hi = _mm512_set1_epi32(dt.max_decade);
  const __m512 power_lo = _mm512_loadu_ps(dt.power), power_hi = _mm512_loadu_ps(dt.power + 16);
  uint32_t paired = 0, agree = 0;
  for (uint32_t i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 va = _mm512_maskz_loadu_ps(live, a + i), vb = _mm512_maskz_loadu_ps(live, b + i);
    const __m512 abs_a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(va), abs_mask));
    const __m512 abs_b = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(vb), abs_mask));
    const __mmask16 ok_a = _mm512_mask_cmp_ps_mask(live, abs_a, fmax, _CMP_LE_OQ);
    const __mmask16 ok_b = _mm512_mask_cmp_ps_mask(live, abs_b, fmax, _CMP_LE_OQ);
    const __mmask16 ok = ok_a & ok_b;

    // std::min(t, top) is t unless top < t; _mm512_min_ps(t, top) is t if t < top: the same
    // for every finite t.
    const __m512 ta = _mm512_min_ps(_mm512_sub_ps(_mm512_mul_round_ps(va, scale, kRn), offset), top);
    const __m512 tb = _mm512_min_ps(_mm512_sub_ps(_mm512_mul_round_ps(vb, scale, kRn), offset), top);
    const __m512i ba = _mm512_cvttps_epi32(ta), bb = _mm512_cvttps_epi32(tb);
    if (kp.joint) {
      const __m512i key = _mm512_add_epi32(_mm512_mullo_epi32(ba, bins), bb);
      _mm512_storeu_si512(out.key0 + i, _mm512_mask_blend_epi32(ok, dump0, key));
    } else {
      _mm512_storeu_si512(out.key0 + i, _mm512_mask_blend_epi32(ok_a, dump0, ba));
      _mm512_storeu_si512(out.key1 + i, _mm512_mask_blend_epi32(ok_b, dump1, bb));
    }

    // DecadeTable::index: by decade_of when it holds (two-register permutes), else gathers,
    // which cost more than the rest of the kernel together.
    const __m512 df = _mm512_sub_ps(vb, va);
    const __m512 ad = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(df), abs_mask));
    const __m512i e = _mm512_srli_epi32(_mm512_castps_si512(ad), 23);
    __m512i k;
    if (by_decade) {
      const __m512i oct = _mm512_srai_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(e, e_bias), k1233), 12);
      const __m512i j =
          _mm512_sub_epi32(_mm512_min_epi32(_mm512_max_epi32(oct, j_lo), j_hi), j_lo);
      const __m512 thr = _mm512_permutex2var_ps(power_lo, j, power_hi);
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(ok, ad, thr, _CMP_GE_OQ);
      k = _mm512_max_epi32(j, one);
      k = _mm512_mask_add_epi32(k, ge, k, one);
    } else {
      const __m512i lo = _mm512_mask_i32gather_epi32(one, ok, e, decade_lo, 4);
      const __m512 thr = _mm512_mask_i32gather_ps(fzero, ok, e, threshold, 4);
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(ok, ad, thr, _CMP_GE_OQ);
      k = _mm512_add_epi32(lo, one);
      k = _mm512_mask_add_epi32(k, ge, k, one);
    }
    const __mmask16 pos = _mm512_mask_cmp_ps_mask(ok, df, fzero, _CMP_GT_OQ);
    const __mmask16 neg = _mm512_mask_cmp_ps_mask(ok, df, fzero, _CMP_LT_OQ);
    __m512i key = _mm512_mask_blend_epi32(ok, dump_diff, zero_key);
    key = _mm512_mask_add_epi32(key, pos, key, k);
    key = _mm512_mask_sub_epi32(key, neg, key, k);
    _mm512_storeu_si512(out.diff + i, key);

    const __mmask16 gt_a = _mm512_cmp_ps_mask(va, fzero, _CMP_GT_OQ);
    const __mmask16 lt_a = _mm512_cmp_ps_mask(va, fzero, _CMP_LT_OQ);
    const __mmask16 gt_b = _mm512_cmp_ps_mask(vb, fzero, _CMP_GT_OQ);
    const __mmask16 lt_b = _mm512_cmp_ps_mask(vb, fzero, _CMP_LT_OQ);
    paired += static_cast<uint32_t>(std::popcount(static_cast<uint32_t>(ok)));
    agree += static_cast<uint32_t>(
        std::popcount(static_cast<uint32_t>(ok & ~((gt_a ^ gt_b) | (lt_a ^ lt_b)) & 0xffff)));
    if (ok != live) {
      const __m512 inf = _mm512_set1_ps(kInfF), ninf = _mm512_set1_ps(-kInfF);
      const __m512 v[2] = {va, vb};
      __mmask16 neg_inf[2];
      for (int side = 0; side < 2; ++side) {
        auto count = [](__mmask16 m) {
          return static_cast<uint32_t>(std::popcount(static_cast<uint32_t>(m)));
        };
        s.nan[side] += count(_mm512_mask_cmp_ps_mask(live, v[side], v[side], _CMP_UNORD_Q));
        s.pos_inf[side] += count(_mm512_mask_cmp_ps_mask(live, v[side], inf, _CMP_EQ_OQ));
        neg_inf[side] = _mm512_mask_cmp_ps_mask(live, v[side], ninf, _CMP_EQ_OQ);
        s.neg_inf[side] += count(neg_inf[side]);
      }
      s.masked += static_cast<uint32_t>(std::popcount(static_cast<uint32_t>(neg_inf[0] & neg_inf[1])));
      s.one_sided += static_cast<uint32_t>(std::popcount(static_cast<uint32_t>(ok_a ^ ok_b)));
    }

    for (int h = 0; h < 2; ++h) {
      const __mmask8 m = static_cast<__mmask8>(ok >> (8 * h));
      const __m512d x = _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(va, 1) : _mm512_castps512_ps256(va));
      const __m512d y = _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(vb, 1) : _mm512_castps512_ps256(vb));
      const __m512d d = _mm512_sub_pd(y, x);
      sa = _mm512_mask_add_pd(sa, m, sa, x);
      sb = _mm512_mask_add_pd(sb, m, sb, y);
      saa = _mm512_mask3_fmadd_pd(x, x, saa, m);
      sbb = _mm512_mask3_fmadd_pd(y, y, sbb, m);
      sab = _mm512_mask3_fmadd_pd(x, y, sab, m);
      sdd = _mm512_mask_add_pd(sdd, m, sdd, _mm512_mul_round_pd(d, d, kRn));
      md = _mm512_mask_max_pd(md, m, md, _mm512_abs_pd(d));
    }
  }
  s.sa = combine_lanes(sa);
  s.sb = combine_lanes(sb);
  s.saa = combine_lanes(saa);
  s.sbb = combine_lanes(sbb);
  s.sab = combine_lanes(sab);
  s.sdd = combine_lanes(sdd);
  s.max_abs_diff = _mm512_reduce_max_pd(md);
  s.paired = paired;
  s.agree = agree;
  return s;
}
#endif

// The block kernel for this comparison: AVX-512 where the CPU has it, unless LOCKSTEP_CPU_ISA
// (cpu_kernels.h) asks for less; both give the same bits.
BlockKernel pick_kernel() {
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
  cpu::Isa isa = cpu::Isa::Scalar;
  try {
    isa = cpu::best_isa();
  } catch (const Error&) {
    isa = cpu::supported_isas().back();  // a bad LOCKSTEP_CPU_ISA is the cpu lane's error
  }
  if (isa == cpu::Isa::Avx512) return block_avx512;
#endif
  return block_portable;
}

// Up to this many value bins, a block counts both sides with one increment into a joint
// [bins, bins] table (16 KiB at 64 bins, in L1), summed into the two histograms per chunk: the
// increments, not the arithmetic, are what the histogram loop spends its time on.
constexpr int kMaxJointBins = 64;
// The diff histogram takes kDiffTables interleaved copies: its keys repeat (one or two decades
// hold most differences), and consecutive increments of one counter would wait on each other.
constexpr int kDiffTables = 4;

// Per-chunk counters: a chunk holds < 2^32 elements. Each table has a dump slot at its end.
struct ChunkCounts {
  std::vector<uint32_t> joint;           // [bins · bins + 1] when bins <= kMaxJointBins
  std::vector<uint32_t> hist_a, hist_b;  // [bins + 1]
  std::vector<uint32_t> diff;            // [kDiffTables, 2 · decades + 2]
};

// The positions of a block finite in one side only: that side's sums and count, in order (and,
// with joint tables, its value bin).
void one_sided_positions(const float* pa, const float* pb, uint64_t n, const Binning& bins,
                         bool joint, ChunkAcc& acc, ChunkCounts& counts) {
  for (uint64_t i = 0; i < n; ++i) {
    const float fa = pa[i], fb = pb[i];
    const bool ok_a = std::isfinite(fa), ok_b = std::isfinite(fb);
    if (ok_a == ok_b) continue;
    const float v = ok_a ? fa : fb;
    SideAcc& side = ok_a ? acc.a : acc.b;
    side.sum += v;
    side.sum2 += static_cast<double>(v) * v;
    ++side.finite;
    if (joint) ++(ok_a ? counts.hist_a : counts.hist_b)[bins.value_bin(v)];
  }
}

// One piece [begin, end) of one segment, inside one chunk: per block of kBlock, the kernel's
// sums and keys (data in L1), the positions not paired, then the increments.
void accumulate_piece(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const Binning& bins, const KeyParams& kp, BlockKeys& keys, ChunkAcc& acc,
                      ChunkCounts& counts, SegmentPartial& seg) {
  uint32_t* key0_table = kp.joint ? counts.joint.data() : counts.hist_a.data();
  uint32_t* key1_table = counts.hist_b.data();
  const size_t diff_stride = static_cast<size_t>(kp.dump_diff) + 1;
  uint32_t* d0 = counts.diff.data();
  uint32_t* d1 = d0 + diff_stride;
  uint32_t* d2 = d1 + diff_stride;
  uint32_t* d3 = d2 + diff_stride;
  static_assert(kDiffTables == 4);
  for (uint64_t blk = begin; blk < end; blk += kBlock) {
    const auto n = static_cast<uint32_t>(std::min(kBlock, end - blk));
    const float* pa = a + blk;
    const float* pb = b + blk;
    const BlockSums s = bins.kernel(pa, pb, n, kp, keys);
    acc.a.sum += s.sa;
    acc.b.sum += s.sb;
    acc.a.sum2 += s.saa;
    acc.b.sum2 += s.sbb;
    acc.a.finite += s.paired;
    acc.b.finite += s.paired;
    acc.aa += s.saa;
    acc.bb += s.sbb;
    acc.ab += s.sab;
    acc.dd += s.sdd;
    acc.paired += s.paired;
    acc.sign_agree += s.agree;
    seg.d2 += s.sdd;
    seg.a2 += s.saa;
    if (s.max_abs_diff > acc.max_abs_diff) {
      for (uint32_t i = 0; i < n; ++i)
        if (std::isfinite(pa[i]) && std::isfinite(pb[i]) &&
            std::fabs(static_cast<double>(pb[i]) - static_cast<double>(pa[i])) ==
                s.max_abs_diff) {
          acc.max_abs_diff = s.max_abs_diff;
          acc.max_index = blk + i;
          break;
        }
    }
    if (s.paired < n) {
      acc.masked += s.masked;
      const uint32_t unpaired = n - s.paired - s.masked;
      acc.unpaired += unpaired;
      seg.unpaired = seg.unpaired || unpaired > 0;
      if (s.nan[0] + s.nan[1] > 0) seg.nan = acc.nan = true;
      SideAcc* side[2] = {&acc.a, &acc.b};
      for (int t = 0; t < 2; ++t) {
        side[t]->nan += s.nan[t];
        side[t]->pos_inf += s.pos_inf[t];
        side[t]->neg_inf += s.neg_inf[t];
      }
      if (s.one_sided) one_sided_positions(pa, pb, n, bins, kp.joint, acc, counts);
    }
    uint32_t i = 0;
    if (kp.joint) {
      for (; i + 4 <= n; i += 4) {
        ++key0_table[keys.key0[i]];
        ++d0[keys.diff[i]];
        ++key0_table[keys.key0[i + 1]];
        ++d1[keys.diff[i + 1]];
        ++key0_table[keys.key0[i + 2]];
        ++d2[keys.diff[i + 2]];
        ++key0_table[keys.key0[i + 3]];
        ++d3[keys.diff[i + 3]];
      }
    } else {
      for (; i + 4 <= n; i += 4) {
        for (uint32_t j = 0; j < 4; ++j) {
          ++key0_table[keys.key0[i + j]];
          ++key1_table[keys.key1[i + j]];
        }
        ++d0[keys.diff[i]];
        ++d1[keys.diff[i + 1]];
        ++d2[keys.diff[i + 2]];
        ++d3[keys.diff[i + 3]];
      }
    }
    for (; i < n; ++i) {
      ++key0_table[keys.key0[i]];
      if (!kp.joint) ++key1_table[keys.key1[i]];
      ++d0[keys.diff[i]];
    }
  }
}

void compare_chunk(const float* a, const float* b, uint64_t begin, uint64_t end,
                   const Layout& layout, const Binning& bins, ChunkAcc& acc) {
  const size_t nb = static_cast<size_t>(bins.bins);
  const size_t nd = static_cast<size_t>(2 * bins.decades->zero() + 1);
  const bool joint = nb <= kMaxJointBins;
  // Per-thread scratch, reused from chunk to chunk.
  thread_local ChunkCounts counts;
  thread_local std::unique_ptr<BlockKeys> keys;
  if (!keys) keys = std::make_unique<BlockKeys>();
  counts.joint.assign(joint ? nb * nb + 1 : 0, 0);
  counts.hist_a.assign(nb + 1, 0);
  counts.hist_b.assign(nb + 1, 0);
  counts.diff.assign(kDiffTables * (nd + 1), 0);
  KeyParams kp;
  kp.scale = bins.scale;
  kp.offset = bins.offset;
  kp.top = static_cast<float>(bins.bins - 1);
  kp.bins = bins.bins;
  kp.joint = joint;
  kp.dump0 = static_cast<int32_t>(joint ? nb * nb : nb);
  kp.dump1 = static_cast<int32_t>(nb);
  kp.dump_diff = static_cast<int32_t>(nd);
  kp.decades = bins.decades;
  for (uint64_t i = begin; i < end;) {
    const uint64_t s = i / layout.segment_len;
    const uint64_t piece_end = std::min(end, (s + 1) * layout.segment_len);
    SegmentPartial seg;
    seg.segment = s;
    accumulate_piece(a, b, i, piece_end, bins, kp, *keys, acc, counts, seg);
    acc.segments.push_back(seg);
    i = piece_end;
  }
  acc.hist_a.assign(counts.hist_a.begin(), counts.hist_a.begin() + nb);
  acc.hist_b.assign(counts.hist_b.begin(), counts.hist_b.begin() + nb);
  acc.diff.assign(nd, 0);
  for (size_t t = 0; t < kDiffTables; ++t)
    for (size_t j = 0; j < nd; ++j) acc.diff[j] += counts.diff[t * (nd + 1) + j];
  if (joint)
    for (size_t i = 0; i < nb; ++i)
      for (size_t j = 0; j < nb; ++j) {
        acc.hist_a[i] += counts.joint[i * nb + j];
        acc.hist_b[j] += counts.joint[i * nb + j];
      }
}

// ---- lm_head -----------------------------------------------------------------------------

// The k best of a row: larger logit first, NaN as -inf, ties by lower index. A small k keeps
// a sorted buffer in one pass; a large one sorts indices.
std::vector<uint32_t> top_indices(std::span<const float> row, uint32_t k) {
  auto key = [&](uint32_t i) { return std::isnan(row[i]) ? -kInf : static_cast<double>(row[i]); };
  auto better = [&](uint32_t x, uint32_t y) {
    const double kx = key(x), ky = key(y);
    return kx != ky ? kx > ky : x < y;
  };
  std::vector<uint32_t> top;
  if (k > 32) {
    top.resize(row.size());
    std::iota(top.begin(), top.end(), 0u);
    std::partial_sort(top.begin(), top.begin() + k, top.end(), better);
    top.resize(k);
    return top;
  }
  top.reserve(k + 1);
  for (uint32_t i = 0; i < row.size(); ++i) {
    if (top.size() == k && !better(i, top.back())) continue;
    top.insert(std::upper_bound(top.begin(), top.end(), i, better), i);
    if (top.size() > k) top.pop_back();
  }
  return top;
}

// KL(softmax(a) ‖ softmax(b)) in nats, as metrics.h's kl_divergence but without its two
// vocab-sized buffers: with p = e^(a−ma)/Za, KL = Σ p·(a − b) − (ma + ln Za) + (mb + ln Zb).
double row_kl(std::span<const float> a, std::span<const float> b) {
  double ma = -kInf, mb = -kInf;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return kNaN;
    ma = std::max(ma, static_cast<double>(a[i]));
    mb = std::max(mb, static_cast<double>(b[i]));
  }
  double za = 0, zb = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], y = b[i], ea = std::exp(x - ma);
    za += ea;
    zb += std::exp(y - mb);
    if (ea > 0) s += ea * (x - y);
  }
  return s / za - (ma + std::log(za)) + (mb + std::log(zb));
}

struct LogitRows {
  std::vector<double> kl;
  std::vector<uint8_t> top1;
  std::vector<uint32_t> overlap;
};

void compare_logit_row(const Tensor& a, const Tensor& b, uint64_t t, uint32_t k, LogitRows& out) {
  const uint64_t vocab = a.shape[1];
  std::span<const float> ra(a.data.data() + t * vocab, vocab);
  std::span<const float> rb(b.data.data() + t * vocab, vocab);
  out.kl[t] = row_kl(ra, rb);
  std::vector<uint32_t> ta = top_indices(ra, k), tb = top_indices(rb, k);
  out.top1[t] = ta[0] == tb[0];
  std::sort(ta.begin(), ta.end());
  std::sort(tb.begin(), tb.end());
  std::vector<uint32_t> common;
  std::set_intersection(ta.begin(), ta.end(), tb.begin(), tb.end(), std::back_inserter(common));
  out.overlap[t] = static_cast<uint32_t>(common.size());
}

// ---- one cell as a job of work items -----------------------------------------------------

void finish_side(SideStats& s, const SideAcc& acc, float lo, float hi, double factor) {
  s.finite = acc.finite;
  s.nan = acc.nan;
  s.pos_inf = acc.pos_inf;
  s.neg_inf = acc.neg_inf;
  if (acc.finite == 0) return;
  const double n = static_cast<double>(acc.finite);
  s.mean = acc.sum / n;
  s.std = std::sqrt(std::max(0.0, acc.sum2 / n - s.mean * s.mean));
  s.min = lo;
  s.max = hi;
  s.max_abs = std::max(std::fabs(s.min), std::fabs(s.max));
  s.near_f16_limit = s.max_abs >= kF16Max / factor;
  s.near_bf16_limit = s.max_abs >= kBf16Max / factor;
}

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// A cell's work: range chunks (pass 1), then main chunks (pass 2) and, for lm_head, logit row
// blocks; the thread that finishes its last item combines the partials in chunk order.
struct CellJob {
  const Tensor* a = nullptr;
  const Tensor* b = nullptr;
  const CompareOptions* options = nullptr;
  CellComparison result;
  Layout layout;
  uint64_t n = 0, chunks = 0;
  uint64_t logit_items = 0, rows_per_item = 1;
  bool logits = false;

  std::vector<std::pair<float, float>> range_a, range_b;  // per chunk
  std::atomic<uint64_t> ranges_left{0};
  std::atomic<bool> binned{false};  // set (and notified) once bins is final
  Binning bins;
  float lo_a = kInfF, hi_a = -kInfF, lo_b = kInfF, hi_b = -kInfF;

  std::vector<ChunkAcc> acc;  // per chunk
  LogitRows rows;
  std::atomic<uint64_t> work_left{0};  // main chunks + logit items
  std::atomic<bool> done{false};
  std::atomic<bool> aborted{false};  // a thread failed: nothing more is computed
};

// Checks shapes and sizes the job; false when there is nothing to compute (a mismatch).
bool prepare_job(CellJob& job, const Cell& cell, const Tensor& a, const Tensor& b,
                 const CompareOptions& options, const DecadeTable& decades, BlockKernel kernel) {
  job.a = &a;
  job.b = &b;
  job.options = &options;
  CellComparison& r = job.result;
  r.cell = cell;
  r.shape_a = a.shape;
  r.shape_b = b.shape;
  job.n = a.data.size();
  if (a.shape != b.shape || a.elements() != job.n || b.elements() != b.data.size()) {
    r.shape_mismatch = true;
    r.elements = std::max<uint64_t>(job.n, b.data.size());
    r.error = a.shape != b.shape
                  ? "shapes differ: " + shape_text(a.shape) + " vs " + shape_text(b.shape)
                  : "data does not fill the shape " + shape_text(a.shape);
    job.done = true;
    return false;
  }
  r.elements = job.n;
  job.chunks = (job.n + kCompareChunk - 1) / kCompareChunk;
  job.layout = make_layout(cell.stage, a.shape, job.n, options.head_dim);
  job.logits = cell.stage == Stage::LmHead && job.layout.kind == Layout::Kind::Rows;
  if (job.logits) {
    job.rows_per_item = std::max<uint64_t>(1, kCompareChunk / job.layout.width);
    job.logit_items = (job.layout.tokens + job.rows_per_item - 1) / job.rows_per_item;
    job.rows.kl.assign(job.layout.tokens, 0.0);
    job.rows.top1.assign(job.layout.tokens, 0);
    job.rows.overlap.assign(job.layout.tokens, 0);
  }
  job.range_a.resize(job.chunks);
  job.range_b.resize(job.chunks);
  job.acc.resize(job.chunks);
  job.ranges_left = job.chunks;
  job.work_left = job.chunks + job.logit_items;
  job.bins.bins = static_cast<int>(options.value_bins);
  job.bins.decades = &decades;
  job.bins.kernel = kernel;
  return true;
}

void set_bins(CellJob& job) {
  for (uint64_t c = 0; c < job.chunks; ++c) {
    job.lo_a = std::min(job.lo_a, job.range_a[c].first);
    job.hi_a = std::max(job.hi_a, job.range_a[c].second);
    job.lo_b = std::min(job.lo_b, job.range_b[c].first);
    job.hi_b = std::max(job.hi_b, job.range_b[c].second);
  }
  const float lo = std::min(job.lo_a, job.lo_b), hi = std::max(job.hi_a, job.hi_b);
  if (lo <= hi) {
    // In double, then rounded: hi − lo may overflow float (−3e38 .. 3e38).
    const double width = static_cast<double>(hi) - lo;
    job.bins.scale = width > 0 ? static_cast<float>(job.bins.bins / width) : 0.0f;
    job.bins.offset = lo * job.bins.scale;
    job.result.value_histogram.min = lo;
    job.result.value_histogram.max = hi;
  }
  job.binned.store(true);
  job.binned.notify_all();
}

void finish_job(CellJob& job) {
  CellComparison& r = job.result;
  const CompareOptions& options = *job.options;
  const Layout& layout = job.layout;
  const size_t nb = options.value_bins;
  const size_t decades = static_cast<size_t>(options.diff_max_decade - options.diff_min_decade + 1);
  ChunkAcc total;
  std::vector<uint64_t> hist_a(nb, 0), hist_b(nb, 0), diff(2 * decades + 1, 0);
  std::vector<SegmentPartial> segs(layout.segments);
  for (const ChunkAcc& c : job.acc) {
    total.paired += c.paired;
    total.masked += c.masked;
    total.unpaired += c.unpaired;
    total.sign_agree += c.sign_agree;
    total.nan = total.nan || c.nan;
    total.ab += c.ab;
    total.aa += c.aa;
    total.bb += c.bb;
    total.dd += c.dd;
    if (c.max_abs_diff > total.max_abs_diff) {
      total.max_abs_diff = c.max_abs_diff;
      total.max_index = c.max_index;
    }
    merge_side(total.a, c.a);
    merge_side(total.b, c.b);
    for (size_t i = 0; i < nb; ++i) hist_a[i] += c.hist_a[i], hist_b[i] += c.hist_b[i];
    for (size_t i = 0; i < diff.size(); ++i) diff[i] += c.diff[i];
    for (const SegmentPartial& p : c.segments) {
      if (p.segment >= segs.size()) continue;
      SegmentPartial& s = segs[p.segment];
      s.d2 += p.d2;
      s.a2 += p.a2;
      s.nan = s.nan || p.nan;
      s.unpaired = s.unpaired || p.unpaired;
    }
  }
  std::vector<ChunkAcc>().swap(job.acc);

  r.paired = total.paired;
  r.masked = total.masked;
  r.unpaired = total.unpaired;
  r.relative_rms = relative_from(total.dd, total.aa, total.nan, total.unpaired > 0);
  if (total.aa == 0 && total.bb == 0)
    r.cosine = 1.0;
  else if (total.aa == 0 || total.bb == 0)
    r.cosine = 0.0;
  else
    r.cosine = total.ab / std::sqrt(total.aa * total.bb);
  const double paired = static_cast<double>(total.paired);
  r.rms_diff = total.paired ? std::sqrt(total.dd / paired) : 0.0;
  r.sqnr_db = total.dd == 0 ? kInf : total.aa == 0 ? -kInf : 10.0 * std::log10(total.aa / total.dd);
  r.sign_agreement = total.paired ? static_cast<double>(total.sign_agree) / paired : 1.0;
  if (total.max_abs_diff >= 0) {
    r.max_abs_diff = total.max_abs_diff;
    r.max_diff_at = layout.decode(total.max_index);
    r.max_diff_at.a = job.a->data[total.max_index];
    r.max_diff_at.b = job.b->data[total.max_index];
  }
  finish_side(r.a, total.a, job.lo_a, job.hi_a, options.headroom_factor);
  finish_side(r.b, total.b, job.lo_b, job.hi_b, options.headroom_factor);
  r.value_histogram.counts_a = std::move(hist_a);
  r.value_histogram.counts_b = std::move(hist_b);
  r.diff_histogram.min_decade = options.diff_min_decade;
  r.diff_histogram.max_decade = options.diff_max_decade;
  r.diff_histogram.zero = diff[decades];
  for (size_t j = 0; j < decades; ++j) {
    r.diff_histogram.negative.push_back(diff[decades - 1 - j]);
    r.diff_histogram.positive.push_back(diff[decades + 1 + j]);
  }

  // Breakdowns: segments summed per token and per head, in segment order.
  if (layout.kind != Layout::Kind::Flat) {
    std::vector<SegmentPartial> tok(layout.tokens), head(layout.heads);
    for (uint64_t s = 0; s < segs.size(); ++s) {
      for (SegmentPartial* d : {&tok[layout.segment_token(s)],
                                layout.heads ? &head[layout.segment_head(s)] : nullptr}) {
        if (!d) continue;
        d->d2 += segs[s].d2;
        d->a2 += segs[s].a2;
        d->nan = d->nan || segs[s].nan;
        d->unpaired = d->unpaired || segs[s].unpaired;
      }
    }
    for (const auto& t : tok)
      r.per_token_relative_rms.push_back(relative_from(t.d2, t.a2, t.nan, t.unpaired));
    for (const auto& h : head)
      r.per_head_relative_rms.push_back(relative_from(h.d2, h.a2, h.nan, h.unpaired));
  }

  if (job.logits) {
    LogitComparison l;
    l.tokens = layout.tokens;
    l.k = static_cast<uint32_t>(std::min<uint64_t>(options.topk, layout.width));
    double kl = 0, agree = 0, overlap = 0;
    for (uint64_t t = 0; t < l.tokens; ++t) {
      kl += job.rows.kl[t];
      agree += job.rows.top1[t];
      overlap += static_cast<double>(job.rows.overlap[t]) / l.k;
    }
    const double tokens = static_cast<double>(l.tokens);
    l.mean_kl = kl / tokens;
    l.top1_agreement = agree / tokens;
    l.topk_overlap = overlap / tokens;
    l.kl = std::move(job.rows.kl);
    r.logits = std::move(l);
  }
  job.done.store(true);
}

enum class ItemKind : uint8_t { Range, Main, Logits };
struct Item {
  uint32_t job;
  ItemKind kind;
  uint64_t index;
};

void run_item(CellJob& job, const Item& it) {
  const float* a = job.a->data.data();
  const float* b = job.b->data.data();
  if (it.kind == ItemKind::Range) {
    const uint64_t begin = it.index * kCompareChunk, len = std::min(kCompareChunk, job.n - begin);
    float lo = kInfF, hi = -kInfF;
    finite_range(a + begin, len, lo, hi);
    job.range_a[it.index] = {lo, hi};
    lo = kInfF, hi = -kInfF;
    finite_range(b + begin, len, lo, hi);
    job.range_b[it.index] = {lo, hi};
    if (job.ranges_left.fetch_sub(1) == 1) set_bins(job);
    return;
  }
  if (it.kind == ItemKind::Main) {
    // Every range item of this cell was handed out before this one, so the wait is only for
    // those still running on other threads.
    job.binned.wait(false);
    if (job.aborted.load()) return;
    const uint64_t begin = it.index * kCompareChunk, end = std::min(job.n, begin + kCompareChunk);
    compare_chunk(a, b, begin, end, job.layout, job.bins, job.acc[it.index]);
  } else {
    const uint32_t k =
        static_cast<uint32_t>(std::min<uint64_t>(job.options->topk, job.layout.width));
    const uint64_t first = it.index * job.rows_per_item;
    const uint64_t last = std::min(job.layout.tokens, first + job.rows_per_item);
    for (uint64_t t = first; t < last; ++t) compare_logit_row(*job.a, *job.b, t, k, job.rows);
  }
  if (job.work_left.fetch_sub(1) == 1) finish_job(job);
}

unsigned resolve_threads(unsigned t) {
  if (t) return t;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs every item of every job on `threads` threads (the caller is one of them), handing items
// out in order. `on_item` runs on the calling thread after each of its items.
void run_jobs(std::vector<std::unique_ptr<CellJob>>& jobs, unsigned threads,
              const std::atomic<bool>* cancel, const std::function<void()>& on_item) {
  std::vector<Item> items;
  for (uint32_t j = 0; j < jobs.size(); ++j) {
    const CellJob& job = *jobs[j];
    if (job.done) continue;
    for (uint64_t c = 0; c < job.chunks; ++c) items.push_back({j, ItemKind::Range, c});
    for (uint64_t c = 0; c < job.chunks; ++c) items.push_back({j, ItemKind::Main, c});
    for (uint64_t c = 0; c < job.logit_items; ++c) items.push_back({j, ItemKind::Logits, c});
  }
  // Cells with no elements have no items: finish them now.
  for (auto& job : jobs)
    if (!job->done && job->chunks == 0 && job->logit_items == 0) {
      set_bins(*job);
      finish_job(*job);
    }
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](bool caller) {
    try {
      while (!stop.load(std::memory_order_relaxed)) {
        if (cancel && cancel->load(std::memory_order_relaxed)) {
          stop = true;
          break;
        }
        const size_t i = next.fetch_add(1);
        if (i >= items.size()) break;
        run_item(*jobs[items[i].job], items[i]);
        if (caller && on_item) on_item();
      }
    } catch (...) {
      {
        std::lock_guard lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      stop = true;
      // A failed range item never sets its cell's bins: release whoever waits on them.
      for (auto& job : jobs) {
        job->aborted.store(true);
        job->binned.store(true);
        job->binned.notify_all();
      }
    }
  };
  // A cancel stops handing out items; those handed out finish, so a main item's wait for its
  // cell's range items (all handed out before it) always ends.
  const auto helpers =
      static_cast<unsigned>(std::min<uint64_t>(threads, std::max<size_t>(items.size(), 1)) - 1);
  std::vector<std::thread> pool;
  pool.reserve(helpers);
  for (unsigned t = 0; t < helpers; ++t) {
    try {
      pool.emplace_back(work, false);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running (and the caller) do the work
    }
  }
  work(true);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

void check_options(const CompareOptions& o) {
  if (o.value_bins == 0) throw Error("compare options: expected value_bins >= 1, found 0");
  if (o.value_bins > (1u << 20))
    throw Error("compare options: expected value_bins <= 1048576, found " +
                std::to_string(o.value_bins));
  if (o.topk == 0) throw Error("compare options: expected topk >= 1, found 0");
  if (o.diff_min_decade > o.diff_max_decade || o.diff_min_decade < -50 || o.diff_max_decade > 50)
    throw Error(
        "compare options: expected -50 <= diff_min_decade <= diff_max_decade <= 50, "
        "found " +
        std::to_string(o.diff_min_decade) + ".." + std::to_string(o.diff_max_decade));
  if (!(o.headroom_factor >= 1.0)) throw Error("compare options: expected headroom_factor >= 1");
}

json num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

json nums(const std::vector<double>& v) {
  json j = json::array();
  for (double x : v) j.push_back(num(x));
  return j;
}

json side_json(const SideStats& s) {
  return {{"mean", num(s.mean)},
          {"std", num(s.std)},
          {"min", num(s.min)},
          {"max", num(s.max)},
          {"max_abs", num(s.max_abs)},
          {"finite", s.finite},
          {"nan", s.nan},
          {"pos_inf", s.pos_inf},
          {"neg_inf", s.neg_inf},
          {"near_f16_limit", s.near_f16_limit},
          {"near_bf16_limit", s.near_bf16_limit}};
}

// head_dim from an attention cell's head count and the width of q_post_rope or attention in
// the same trace; nullopt when the trace has neither.
std::optional<uint64_t> derive_head_dim(const Trace& t) {
  std::optional<uint64_t> heads;
  for (const auto& [cell, tensor] : t.cells())
    if (is_attention_matrix(cell.stage) && tensor.shape.size() == 3 && tensor.shape[0]) {
      heads = tensor.shape[0];
      break;
    }
  if (!heads) return std::nullopt;
  for (const auto& [cell, tensor] : t.cells())
    if ((cell.stage == Stage::QPostRope || cell.stage == Stage::Attention) &&
        tensor.shape.size() == 2 && tensor.shape[1] && tensor.shape[1] % *heads == 0)
      return tensor.shape[1] / *heads;
  return std::nullopt;
}

}  // namespace

const CellComparison* TraceComparison::find(const Cell& c) const {
  for (const auto& x : cells)
    if (x.cell == c) return &x;
  return nullptr;
}

CellComparison compare_cell(const Cell& cell, const Tensor& a, const Tensor& b,
                            const CompareOptions& options) {
  check_options(options);
  const DecadeTable decades(options.diff_min_decade, options.diff_max_decade);
  std::vector<std::unique_ptr<CellJob>> jobs;
  jobs.push_back(std::make_unique<CellJob>());
  prepare_job(*jobs[0], cell, a, b, options, decades, pick_kernel());
  run_jobs(jobs, resolve_threads(options.threads), nullptr, {});
  return std::move(jobs[0]->result);
}

TraceComparison compare_traces(const Trace& a, const Trace& b, const CompareOptions& options,
                               const CompareProgressFn& progress, const std::atomic<bool>* cancel) {
  check_options(options);
  TraceComparison out;
  out.lane_a = a.lane;
  out.lane_b = b.lane;
  out.options = options;
  if (!out.options.head_dim) {
    out.options.head_dim = derive_head_dim(a);
    if (!out.options.head_dim) out.options.head_dim = derive_head_dim(b);
  }
  const DecadeTable decades(options.diff_min_decade, options.diff_max_decade);
  const BlockKernel kernel = pick_kernel();
  std::vector<std::unique_ptr<CellJob>> jobs;
  for (const auto& [cell, t] : a.cells()) {
    const Tensor* u = b.find(cell);
    if (!u) {
      out.only_in_a.push_back(cell);
      continue;
    }
    jobs.push_back(std::make_unique<CellJob>());
    prepare_job(*jobs.back(), cell, t, *u, out.options, decades, kernel);
  }
  for (const auto& [cell, t] : b.cells())
    if (!a.find(cell)) out.only_in_b.push_back(cell);

  CompareProgress p;
  p.cells_total = jobs.size();
  for (const auto& job : jobs) p.bytes_total += (job->a->data.size() + job->b->data.size()) * 4;
  // Reports cells as they finish, in plan order, on this thread.
  auto report = [&] {
    while (p.cells_done < jobs.size() && jobs[p.cells_done]->done.load()) {
      const CellJob& job = *jobs[p.cells_done];
      ++p.cells_done;
      p.bytes_done += (job.a->data.size() + job.b->data.size()) * 4;
      p.last = &job.result.cell;
      if (progress) progress(p);
    }
  };
  run_jobs(jobs, resolve_threads(options.threads), cancel, report);
  report();
  for (auto& job : jobs) {
    if (!job->done.load()) {
      out.cancelled = true;
      break;
    }
    out.cells.push_back(std::move(job->result));
  }
  return out;
}

json to_json(const CellComparison& c) {
  json j;
  j["cell"] = cell_name(c.cell);
  j["stage"] = std::string(stage_name(c.cell.stage));
  j["layer"] = c.cell.layer ? json(*c.cell.layer) : json(nullptr);
  j["shape_a"] = c.shape_a;
  j["shape_b"] = c.shape_b;
  j["shape_mismatch"] = c.shape_mismatch;
  j["elements"] = c.elements;
  if (c.shape_mismatch) {
    j["error"] = c.error;
    return j;
  }
  j["paired"] = c.paired;
  j["masked"] = c.masked;
  j["unpaired"] = c.unpaired;
  j["cosine"] = num(c.cosine);
  j["relative_rms"] = num(c.relative_rms);
  j["rms_diff"] = num(c.rms_diff);
  j["sqnr_db"] = num(c.sqnr_db);
  j["sign_agreement"] = num(c.sign_agreement);
  j["max_abs_diff"] = num(c.max_abs_diff);
  const MaxDiffLocation& m = c.max_diff_at;
  j["max_diff_at"] = {{"index", m.index}, {"token", m.token}, {"channel", m.channel},
                      {"head", m.head},   {"a", num(m.a)},    {"b", num(m.b)}};
  j["a"] = side_json(c.a);
  j["b"] = side_json(c.b);
  j["per_token_relative_rms"] = nums(c.per_token_relative_rms);
  j["per_head_relative_rms"] = nums(c.per_head_relative_rms);
  j["value_histogram"] = {{"min", num(c.value_histogram.min)},
                          {"max", num(c.value_histogram.max)},
                          {"counts_a", c.value_histogram.counts_a},
                          {"counts_b", c.value_histogram.counts_b}};
  j["diff_histogram"] = {{"min_decade", c.diff_histogram.min_decade},
                         {"max_decade", c.diff_histogram.max_decade},
                         {"negative", c.diff_histogram.negative},
                         {"zero", c.diff_histogram.zero},
                         {"positive", c.diff_histogram.positive}};
  if (c.logits) {
    const LogitComparison& l = *c.logits;
    j["logits"] = {{"tokens", l.tokens},
                   {"k", l.k},
                   {"kl", nums(l.kl)},
                   {"mean_kl", num(l.mean_kl)},
                   {"top1_agreement", num(l.top1_agreement)},
                   {"topk_overlap", num(l.topk_overlap)}};
  }
  return j;
}

json to_json(const TraceComparison& c) {
  json j;
  j["format_version"] = 1;
  j["lane_a"] = c.lane_a;
  j["lane_b"] = c.lane_b;
  j["cancelled"] = c.cancelled;
  const CompareOptions& o = c.options;
  j["options"] = {{"head_dim", o.head_dim ? json(*o.head_dim) : json(nullptr)},
                  {"topk", o.topk},
                  {"value_bins", o.value_bins},
                  {"diff_min_decade", o.diff_min_decade},
                  {"diff_max_decade", o.diff_max_decade},
                  {"headroom_factor", num(o.headroom_factor)}};
  json cells = json::array();
  for (const auto& x : c.cells) cells.push_back(to_json(x));
  j["cells"] = std::move(cells);
  json ia = json::array(), ib = json::array();
  for (const auto& x : c.only_in_a) ia.push_back(cell_name(x));
  for (const auto& x : c.only_in_b) ib.push_back(cell_name(x));
  j["only_in_a"] = std::move(ia);
  j["only_in_b"] = std::move(ib);
  return j;
}

}  // namespace lockstep::engine
