#include "engine/compare.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <system_error>
#include <thread>

#include "engine/cpu_kernels.h"
#include "formats/error.h"
#include "formats/json_util.h"

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
// Elements per inner block: a kernel's sums and keys, then the increments, over data still in L1.
constexpr uint64_t kBlock = 512;


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
    if (per_head_rows(stage) && head_dim && *head_dim && l.width % *head_dim == 0) {
      l.head_dim = *head_dim;
      l.heads = l.width / l.head_dim;
      l.segment_len = l.head_dim;
    }
  } else if (shape.size() == 3 && attention_matrix(stage) && shape[0] && shape[1] && shape[2]) {
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

}  // namespace

MaxDiffLocation locate_index(Stage stage, const std::vector<uint64_t>& shape, uint64_t index,
                             std::optional<uint64_t> head_dim) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return make_layout(stage, shape, n, head_dim).decode(index);
}

namespace {

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

// Per block of kBlock elements, the value pass's keys, one per element: key0 is
// bin_a · bins + bin_b with the joint table, else bin_a; key1 is bin_b (separate tables only).
// A position a table does not count goes to a dump slot just past the end of that table.
struct BlockKeys {
  int32_t key0[kBlock], key1[kBlock];
};

// Sums over the paired positions of one block, in kLanes fixed lanes: element i of the block
// goes to lane i % kLanes, each lane is summed in order, and the lanes are combined by a fixed
// tree (combine_lanes). The finite range of each side likewise, in kRangeLanes float lanes
// with the rule of the min/max instructions (lo = lo < x ? lo : x; hi = hi > x ? hi : x), which
// decides between −0 and +0. The same bits from every kernel and whatever the thread count.
constexpr int kLanes = 8;
constexpr int kRangeLanes = 16;

struct BlockSums {
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0, sdd = 0;
  double max_abs_diff = -1;  // -1 when nothing is paired
  float lo[2] = {kInfF, kInfF}, hi[2] = {-kInfF, -kInfF};  // finite values of a, b
  uint32_t paired = 0, agree = 0;
  // Positions not paired: both -inf, finite in one side only; per side NaN, +inf, -inf.
  uint32_t masked = 0, one_sided = 0;
  uint32_t nan[2] = {}, pos_inf[2] = {}, neg_inf[2] = {};
};

float range_lo(float lo, float x) {
  return lo < x ? lo : x;
}
float range_hi(float hi, float x) {
  return hi > x ? hi : x;
}

// What the value pass needs, fixed once the cell's range is known.
struct ValueParams {
  // value bin = x · scale − offset in float (offset = lo · scale; no overflow even for a
  // range of ±3e38), truncated and clamped to bins − 1 = top; x ≥ lo keeps it ≥ 0.
  float scale = 0, offset = 0, top = 0;
  int32_t bins = 1;
  bool joint = false;
  int32_t dump0 = 0, dump1 = 0;

  int32_t value_bin(float x) const {
    return static_cast<int32_t>(std::min(rounded(x * scale) - offset, top));
  }
};

// First pass over a block: sums, counts and ranges, and the diff histogram counted into
// diff[2 · decades + 1]. `window` is the kernel's own state between blocks (the AVX-512 kernel
// counts four decades of both signs in registers, and starts each block with the four that
// held the most in the last one); it changes the speed, never the counts.
using FirstKernel = BlockSums (*)(const float* a, const float* b, uint32_t n,
                                  const DecadeTable& dt, uint32_t* diff, int32_t& window);
// Value pass over a block: key0 (and key1); true when a position is finite in one side only,
// which the joint table does not count.
using ValueKernel = bool (*)(const float* a, const float* b, uint32_t n, const ValueParams& vp,
                             BlockKeys& out);
struct LogitSums;
using LogitKernel = LogitSums (*)(const float* a, const float* b, size_t n, double ma, double mb);
struct Kernels {
  FirstKernel first = nullptr;
  ValueKernel value = nullptr;
  LogitKernel logit = nullptr;
};

// Relative RMS from partial sums, with metrics.h's convention.
double relative_from(double d2, double a2, bool nan, bool unpaired) {
  if (nan) return kNaN;
  if (unpaired) return kInf;
  if (d2 == 0.0) return 0.0;
  return a2 == 0.0 ? kInf : std::sqrt(d2 / a2);
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
// register in that order. Range lanes: (l, l + 8), (l, l + 4), (l, l + 2), (0, 1).
double combine_lanes(const double* l) {
  double v[4];
  for (int j = 0; j < 4; ++j) v[j] = l[j] + l[j + 4];
  for (int j = 0; j < 2; ++j) v[j] = v[j] + v[j + 2];
  return v[0] + v[1];
}

template <class Pick>
float combine_range(const float* l, Pick pick) {
  float v[8];
  for (int j = 0; j < 8; ++j) v[j] = pick(l[j], l[j + 8]);
  for (int j = 0; j < 4; ++j) v[j] = pick(v[j], v[j + 4]);
  for (int j = 0; j < 2; ++j) v[j] = pick(v[j], v[j + 2]);
  return pick(v[0], v[1]);
}

int32_t sign_of(float x) {
  return (x > 0) - (x < 0);
}

// The portable kernels, element by element: the reference the SIMD kernels match bit for bit.
BlockSums first_portable(const float* a, const float* b, uint32_t n, const DecadeTable& dt,
                         uint32_t* diff, int32_t& /*window*/) {
  double lanes[6][kLanes] = {};
  float lo[2][kRangeLanes], hi[2][kRangeLanes];
  std::fill_n(&lo[0][0], 2 * kRangeLanes, kInfF);
  std::fill_n(&hi[0][0], 2 * kRangeLanes, -kInfF);
  BlockSums s;
  for (uint32_t i = 0; i < n; ++i) {
    const float f[2] = {a[i], b[i]};
    const bool ok_a = std::isfinite(f[0]), ok_b = std::isfinite(f[1]), ok = ok_a && ok_b;
    const uint32_t r = i % kRangeLanes;
    for (int side = 0; side < 2; ++side) {
      if (!std::isfinite(f[side])) continue;
      lo[side][r] = range_lo(lo[side][r], f[side]);
      hi[side][r] = range_hi(hi[side][r], f[side]);
    }
    if (!ok) {
      for (int side = 0; side < 2; ++side) {
        s.nan[side] += std::isnan(f[side]);
        s.pos_inf[side] += f[side] == kInfF;
        s.neg_inf[side] += f[side] == -kInfF;
      }
      s.masked += f[0] == -kInfF && f[1] == -kInfF;
      s.one_sided += ok_a || ok_b;
      continue;
    }
    ++diff[dt.index(f[1] - f[0])];
    const uint32_t j = i % kLanes;
    const double x = f[0], y = f[1], d = y - x;
    // x·x, y·y and x·y are exact in double (24-bit significands): fused or not, the same.
    lanes[0][j] += x;
    lanes[1][j] += y;
    lanes[2][j] += x * x;
    lanes[3][j] += y * y;
    lanes[4][j] += x * y;
    lanes[5][j] += rounded(d * d);
    s.max_abs_diff = std::max(s.max_abs_diff, std::fabs(d));
    ++s.paired;
    s.agree += sign_of(f[0]) == sign_of(f[1]);
  }
  s.sa = combine_lanes(lanes[0]);
  s.sb = combine_lanes(lanes[1]);
  s.saa = combine_lanes(lanes[2]);
  s.sbb = combine_lanes(lanes[3]);
  s.sab = combine_lanes(lanes[4]);
  s.sdd = combine_lanes(lanes[5]);
  for (int side = 0; side < 2; ++side) {
    s.lo[side] = combine_range(lo[side], range_lo);
    s.hi[side] = combine_range(hi[side], range_hi);
  }
  return s;
}

bool values_portable(const float* a, const float* b, uint32_t n, const ValueParams& vp,
                     BlockKeys& out) {
  bool one_sided = false;
  for (uint32_t i = 0; i < n; ++i) {
    const float fa = a[i], fb = b[i];
    const bool ok_a = std::isfinite(fa), ok_b = std::isfinite(fb);
    const int32_t ba = ok_a ? vp.value_bin(fa) : 0, bb = ok_b ? vp.value_bin(fb) : 0;
    if (vp.joint) {
      out.key0[i] = ok_a && ok_b ? ba * vp.bins + bb : vp.dump0;
    } else {
      out.key0[i] = ok_a ? ba : vp.dump0;
      out.key1[i] = ok_b ? bb : vp.dump1;
    }
    one_sided = one_sided || ok_a != ok_b;
  }
  return one_sided;
}

// e^x for x <= 0 (NaN, -inf and x < -745 give 0), to a few ulp: x = n·ln2 + r, |r| <= ln2/2,
// e^r by Taylor to degree 13 (error below 1e-17), times 2^n in two steps so that subnormal
// results come out. Every product is rounded before its add, so exp_avx512 gives the same bits.
constexpr double kLog2e = 1.4426950408889634074, kLn2Hi = 6.93147180369123816490e-01,
                 kLn2Lo = 1.90821492927058770002e-10, kExpMin = -745.0;
constexpr std::array<double, 14> kExpTaylor = [] {
  std::array<double, 14> c{};
  double f = 1;
  for (int k = 0; k < 14; ++k) {
    if (k > 0) f *= k;
    c[static_cast<size_t>(k)] = 1.0 / f;
  }
  return c;
}();

double exp_nonpositive(double x) {
  if (!(x >= kExpMin)) return 0.0;
  const double n = std::nearbyint(rounded(x * kLog2e));
  const double r = (x - rounded(n * kLn2Hi)) - rounded(n * kLn2Lo);
  double p = kExpTaylor[13];
  for (int k = 12; k >= 0; --k) p = rounded(p * r) + kExpTaylor[static_cast<size_t>(k)];
  const auto ni = static_cast<int64_t>(n), h = ni >> 1;
  const double s1 = std::bit_cast<double>(static_cast<uint64_t>(h + 1023) << 52);
  const double s2 = std::bit_cast<double>(static_cast<uint64_t>(ni - h + 1023) << 52);
  return rounded(p * s1) * s2;
}

// The sums of row_kl, in kLanes fixed lanes (element i in lane i % kLanes, combine_lanes):
// Za = Σ e^(a−ma), Zb = Σ e^(b−mb), S = Σ e^(a−ma)·(a − b) over e^(a−ma) > 0.
struct LogitSums {
  double za = 0, zb = 0, s = 0;
};

LogitSums logit_sums_portable(const float* a, const float* b, size_t n, double ma, double mb) {
  double za[kLanes] = {}, zb[kLanes] = {}, s[kLanes] = {};
  for (size_t i = 0; i < n; ++i) {
    const size_t j = i % kLanes;
    const double x = a[i], y = b[i], ea = exp_nonpositive(x - ma);
    za[j] += ea;
    zb[j] += exp_nonpositive(y - mb);
    if (ea > 0) s[j] += rounded(ea * (x - y));
  }
  return {combine_lanes(za), combine_lanes(zb), combine_lanes(s)};
}

#if defined(LOCKSTEP_HAVE_X86_KERNELS)
#define LOCKSTEP_COMPARE_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))

LOCKSTEP_COMPARE_AVX512 double combine_lanes(__m512d v) {
  const __m256d w = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
  const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
  return _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
}

// min/max instructions keep their second operand unless the first is smaller (larger):
// range_lo / range_hi with the lanes as first operand.
LOCKSTEP_COMPARE_AVX512 float combine_lo(__m512 v) {
  const __m256 w = _mm256_min_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 u = _mm_min_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
  const __m128 t = _mm_min_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_min_ss(t, _mm_shuffle_ps(t, t, 1)));
}
LOCKSTEP_COMPARE_AVX512 float combine_hi(__m512 v) {
  const __m256 w = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 u = _mm_max_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
  const __m128 t = _mm_max_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
}

LOCKSTEP_COMPARE_AVX512 __mmask16 finite_mask(__mmask16 live, __m512 v) {
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;  // QNaN, +inf, -inf, SNaN
  return static_cast<__mmask16>(live & ~_mm512_fpclass_ps_mask(v, kNonFinite));
}

LOCKSTEP_COMPARE_AVX512 uint32_t count(__mmask16 m) {
  return static_cast<uint32_t>(std::popcount(static_cast<uint32_t>(m)));
}

LOCKSTEP_COMPARE_AVX512 void flush_nibbles(__m512i& nibbles, __m512i* wide) {
  for (int t = 0; t < 8; ++t)
    wide[t] = _mm512_add_epi32(
        wide[t], _mm512_and_si512(_mm512_srli_epi32(nibbles, static_cast<unsigned>(4 * t)),
                                  _mm512_set1_epi32(15)));
  nibbles = _mm512_setzero_si512();
}

// first_portable, 16 elements at a time, each half added in turn to the one register of
// lanes. Masked operations leave a lane as it is where the position does not count, as the
// portable kernel skips it; products whose rounding matters use the explicit-rounding forms,
// which the compiler never fuses.
LOCKSTEP_COMPARE_AVX512 BlockSums first_avx512(const float* a, const float* b, uint32_t n,
                                               const DecadeTable& dt, uint32_t* diff,
                                               int32_t& window) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m512d sa = _mm512_setzero_pd(), sb = sa, saa = sa, sbb = sa, sab = sa, sdd = sa;
  __m512d md = _mm512_set1_pd(-1.0);
  __m512 lo_a = _mm512_set1_ps(kInfF), lo_b = lo_a;
  __m512 hi_a = _mm512_set1_ps(-kInfF), hi_b = hi_a;
  BlockSums s;
  const __m512 fzero = _mm512_setzero_ps();
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), one = _mm512_set1_epi32(1);
  const int32_t zero = dt.zero();
  const __m512i zero_key = _mm512_set1_epi32(zero);
  // The diff histogram: a nonzero difference of decade index k (1..decades) in the window
  // [window, window + 3] adds 1 to the nibble 4·(k − window + 4·negative) of its lane in
  // `nibbles` (flushed into `wide` before a nibble can pass 15); others go to `side` and are
  // counted one by one.
  const int32_t decades = dt.zero();  // [negative | zero | positive]: zero is at `decades`
  const int32_t w = std::clamp(window, 1, std::max(1, decades - 3));
  const __m512i win = _mm512_set1_epi32(w), four = _mm512_set1_epi32(4);
  __m512i nibbles = _mm512_setzero_si512();
  __m512i wide[8];
  for (auto& x : wide) x = _mm512_setzero_si512();
  int nibble_vectors = 0;
  uint32_t zeros = 0, outside_n = 0;
  alignas(64) int32_t outside[kBlock + 16];
  const bool by_decade = dt.by_decade;
  const __m512i e_bias = _mm512_set1_epi32(127), k1233 = _mm512_set1_epi32(1233);
  const __m512i j_lo = _mm512_set1_epi32(dt.min_decade - 1);
  const __m512i j_hi = _mm512_set1_epi32(dt.max_decade);
  const __m512 power_lo = _mm512_loadu_ps(dt.power), power_hi = _mm512_loadu_ps(dt.power + 16);
  uint32_t paired = 0, agree = 0;
  for (uint32_t i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 va = _mm512_maskz_loadu_ps(live, a + i), vb = _mm512_maskz_loadu_ps(live, b + i);
    const __mmask16 ok_a = finite_mask(live, va), ok_b = finite_mask(live, vb);
    const __mmask16 ok = ok_a & ok_b;
    lo_a = _mm512_mask_min_ps(lo_a, ok_a, lo_a, va);
    hi_a = _mm512_mask_max_ps(hi_a, ok_a, hi_a, va);
    lo_b = _mm512_mask_min_ps(lo_b, ok_b, lo_b, vb);
    hi_b = _mm512_mask_max_ps(hi_b, ok_b, hi_b, vb);

    // DecadeTable::index: by decade_of where it holds (two-register permutes), else gathers,
    // which cost more than the rest of the kernel together.
    const __m512 df = _mm512_sub_ps(vb, va);
    const __m512 ad = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(df), abs_mask));
    const __m512i e = _mm512_srli_epi32(_mm512_castps_si512(ad), 23);
    __m512i k;
    if (by_decade) {
      const __m512i oct =
          _mm512_srai_epi32(_mm512_mullo_epi32(_mm512_sub_epi32(e, e_bias), k1233), 12);
      const __m512i j =
          _mm512_sub_epi32(_mm512_min_epi32(_mm512_max_epi32(oct, j_lo), j_hi), j_lo);
      const __m512 thr = _mm512_permutex2var_ps(power_lo, j, power_hi);
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(ok, ad, thr, _CMP_GE_OQ);
      k = _mm512_max_epi32(j, one);
      k = _mm512_mask_add_epi32(k, ge, k, one);
    } else {
      const __m512i lo = _mm512_mask_i32gather_epi32(one, ok, e, dt.decade_lo, 4);
      const __m512 thr = _mm512_mask_i32gather_ps(fzero, ok, e, dt.threshold, 4);
      const __mmask16 ge = _mm512_mask_cmp_ps_mask(ok, ad, thr, _CMP_GE_OQ);
      k = _mm512_add_epi32(lo, one);
      k = _mm512_mask_add_epi32(k, ge, k, one);
    }
    const __mmask16 pos = _mm512_mask_cmp_ps_mask(ok, df, fzero, _CMP_GT_OQ);
    const __mmask16 neg = _mm512_mask_cmp_ps_mask(ok, df, fzero, _CMP_LT_OQ);
    const __mmask16 nonzero = pos | neg;
    zeros += count(ok & ~nonzero);
    const __m512i rel = _mm512_sub_epi32(k, win);
    const __mmask16 in = _mm512_mask_cmplt_epu32_mask(nonzero, rel, four);
    const __m512i slot = _mm512_mask_add_epi32(rel, neg, rel, four);
    nibbles = _mm512_mask_add_epi32(nibbles, in, nibbles,
                                    _mm512_sllv_epi32(one, _mm512_slli_epi32(slot, 2)));
    if (++nibble_vectors == 15) {
      flush_nibbles(nibbles, wide);
      nibble_vectors = 0;
    }
    const __mmask16 out = nonzero & ~in;
    if (out) {
      __m512i key = _mm512_mask_add_epi32(zero_key, pos, zero_key, k);
      key = _mm512_mask_sub_epi32(key, neg, key, k);
      _mm512_storeu_si512(outside + outside_n, _mm512_maskz_compress_epi32(out, key));
      outside_n += count(out);
    }

    const __mmask16 gt_a = _mm512_cmp_ps_mask(va, fzero, _CMP_GT_OQ);
    const __mmask16 lt_a = _mm512_cmp_ps_mask(va, fzero, _CMP_LT_OQ);
    const __mmask16 gt_b = _mm512_cmp_ps_mask(vb, fzero, _CMP_GT_OQ);
    const __mmask16 lt_b = _mm512_cmp_ps_mask(vb, fzero, _CMP_LT_OQ);
    paired += count(ok);
    agree += count(ok & ~((gt_a ^ gt_b) | (lt_a ^ lt_b)));
    if (ok != live) {
      const __m512 inf = _mm512_set1_ps(kInfF), ninf = _mm512_set1_ps(-kInfF);
      const __m512 v[2] = {va, vb};
      __mmask16 neg_inf[2];
      for (int side = 0; side < 2; ++side) {
        s.nan[side] += count(_mm512_mask_cmp_ps_mask(live, v[side], v[side], _CMP_UNORD_Q));
        s.pos_inf[side] += count(_mm512_mask_cmp_ps_mask(live, v[side], inf, _CMP_EQ_OQ));
        neg_inf[side] = _mm512_mask_cmp_ps_mask(live, v[side], ninf, _CMP_EQ_OQ);
        s.neg_inf[side] += count(neg_inf[side]);
      }
      s.masked += count(neg_inf[0] & neg_inf[1]);
      s.one_sided += count(ok_a ^ ok_b);
    }

    for (int h = 0; h < 2; ++h) {
      const __mmask8 m = static_cast<__mmask8>(ok >> (8 * h));
      const __m512d x =
          _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(va, 1) : _mm512_castps512_ps256(va));
      const __m512d y =
          _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(vb, 1) : _mm512_castps512_ps256(vb));
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
  flush_nibbles(nibbles, wide);
  uint32_t per_decade[102] = {};  // this block's nonzero differences by decade index (<= 101)
  for (int t = 0; t < 4; ++t) {
    const auto p = static_cast<uint32_t>(_mm512_reduce_add_epi32(wide[t]));
    const auto m = static_cast<uint32_t>(_mm512_reduce_add_epi32(wide[t + 4]));
    if (w + t > decades) continue;  // no k reaches past the last decade
    diff[zero + w + t] += p;
    diff[zero - w - t] += m;
    per_decade[w + t] += p + m;
  }
  diff[zero] += zeros;
  for (uint32_t j = 0; j < outside_n; ++j) {
    ++diff[outside[j]];
    ++per_decade[std::abs(outside[j] - zero)];
  }
  uint32_t best = 0;
  for (int32_t v = 1; v + 3 <= std::max(4, decades); ++v) {
    const uint32_t held = per_decade[v] + per_decade[v + 1] + per_decade[v + 2] + per_decade[v + 3];
    if (held > best) best = held, window = v;
  }
  s.sa = combine_lanes(sa);
  s.sb = combine_lanes(sb);
  s.saa = combine_lanes(saa);
  s.sbb = combine_lanes(sbb);
  s.sab = combine_lanes(sab);
  s.sdd = combine_lanes(sdd);
  s.max_abs_diff = _mm512_reduce_max_pd(md);
  s.lo[0] = combine_lo(lo_a);
  s.lo[1] = combine_lo(lo_b);
  s.hi[0] = combine_hi(hi_a);
  s.hi[1] = combine_hi(hi_b);
  s.paired = paired;
  s.agree = agree;
  return s;
}

LOCKSTEP_COMPARE_AVX512 bool values_avx512(const float* a, const float* b, uint32_t n,
                                           const ValueParams& vp, BlockKeys& out) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m512 scale = _mm512_set1_ps(vp.scale), offset = _mm512_set1_ps(vp.offset);
  const __m512 top = _mm512_set1_ps(vp.top);
  const __m512i bins = _mm512_set1_epi32(vp.bins), dump0 = _mm512_set1_epi32(vp.dump0);
  const __m512i dump1 = _mm512_set1_epi32(vp.dump1);
  __mmask16 one_sided = 0;
  for (uint32_t i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 va = _mm512_maskz_loadu_ps(live, a + i), vb = _mm512_maskz_loadu_ps(live, b + i);
    const __mmask16 ok_a = finite_mask(live, va), ok_b = finite_mask(live, vb);
    one_sided |= ok_a ^ ok_b;
    // std::min(t, top) is t unless top < t; _mm512_min_ps(t, top) is t if t < top: the same
    // for every finite t.
    const __m512 ta =
        _mm512_min_ps(_mm512_sub_ps(_mm512_mul_round_ps(va, scale, kRn), offset), top);
    const __m512 tb =
        _mm512_min_ps(_mm512_sub_ps(_mm512_mul_round_ps(vb, scale, kRn), offset), top);
    const __m512i ba = _mm512_cvttps_epi32(ta), bb = _mm512_cvttps_epi32(tb);
    if (vp.joint) {
      const __m512i key = _mm512_add_epi32(_mm512_mullo_epi32(ba, bins), bb);
      _mm512_storeu_si512(out.key0 + i, _mm512_mask_blend_epi32(ok_a & ok_b, dump0, key));
    } else {
      _mm512_storeu_si512(out.key0 + i, _mm512_mask_blend_epi32(ok_a, dump0, ba));
      _mm512_storeu_si512(out.key1 + i, _mm512_mask_blend_epi32(ok_b, dump1, bb));
    }
  }
  return one_sided != 0;
}

LOCKSTEP_COMPARE_AVX512 __m512d exp_avx512(__m512d x) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __mmask8 in = _mm512_cmp_pd_mask(x, _mm512_set1_pd(kExpMin), _CMP_GE_OQ);
  x = _mm512_maskz_mov_pd(in, x);
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_round_pd(x, _mm512_set1_pd(kLog2e), kRn), kRn);
  const __m512d r =
      _mm512_sub_pd(_mm512_sub_pd(x, _mm512_mul_round_pd(n, _mm512_set1_pd(kLn2Hi), kRn)),
                    _mm512_mul_round_pd(n, _mm512_set1_pd(kLn2Lo), kRn));
  __m512d p = _mm512_set1_pd(kExpTaylor[13]);
  for (int k = 12; k >= 0; --k)
    p = _mm512_add_pd(_mm512_mul_round_pd(p, r, kRn),
                      _mm512_set1_pd(kExpTaylor[static_cast<size_t>(k)]));
  const __m512i ni = _mm512_cvtpd_epi64(n), h = _mm512_srai_epi64(ni, 1);
  const __m512i bias = _mm512_set1_epi64(1023);
  const __m512d s1 = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(h, bias), 52));
  const __m512d s2 = _mm512_castsi512_pd(
      _mm512_slli_epi64(_mm512_add_epi64(_mm512_sub_epi64(ni, h), bias), 52));
  return _mm512_maskz_mov_pd(in, _mm512_mul_pd(_mm512_mul_round_pd(p, s1, kRn), s2));
}

LOCKSTEP_COMPARE_AVX512 LogitSums logit_sums_avx512(const float* a, const float* b, size_t n,
                                                    double ma, double mb) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m512d za = _mm512_setzero_pd(), zb = za, s = za;
  const __m512d vma = _mm512_set1_pd(ma), vmb = _mm512_set1_pd(mb);
  for (size_t i = 0; i < n; i += 8) {
    const __mmask8 live = n - i >= 8 ? __mmask8(0xff) : __mmask8((1u << (n - i)) - 1);
    const __m512d x = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(live, a + i));
    const __m512d y = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(live, b + i));
    const __m512d ea = exp_avx512(_mm512_sub_pd(x, vma)), eb = exp_avx512(_mm512_sub_pd(y, vmb));
    za = _mm512_mask_add_pd(za, live, za, ea);
    zb = _mm512_mask_add_pd(zb, live, zb, eb);
    const __mmask8 pos = _mm512_mask_cmp_pd_mask(live, ea, _mm512_setzero_pd(), _CMP_GT_OQ);
    s = _mm512_mask_add_pd(s, pos, s, _mm512_mul_round_pd(ea, _mm512_sub_pd(x, y), kRn));
  }
  return {combine_lanes(za), combine_lanes(zb), combine_lanes(s)};
}

// The AVX2 (+FMA) kernels: first_avx512, values_avx512 and logit_sums_avx512 with 8-float
// registers, for CPUs without AVX-512; the same bits again. A position that does not count is
// zeroed before it is added, where the AVX-512 kernels leave the lane as it is: a lane starts at
// +0 and never becomes −0 (x + (−x) and +0 + −0 are +0), so adding +0 leaves it unchanged.
// Lanes: the 8 double lanes in two registers (lanes 0-3, 4-7), the 16 range lanes likewise
// (0-7, 8-15); 16 elements per step, so element i lands in lane i % 8 and i % 16 in order.
#define LOCKSTEP_COMPARE_AVX2 __attribute__((target("avx2,fma")))

// rounded() for vectors: AVX2 has no multiply with explicit rounding, which the compiler would
// never fuse, so the product is hidden from it instead.
LOCKSTEP_COMPARE_AVX2 inline __m256d keep(__m256d x) {
  asm("" : "+x"(x));
  return x;
}
LOCKSTEP_COMPARE_AVX2 inline __m256 keep(__m256 x) {
  asm("" : "+x"(x));
  return x;
}

LOCKSTEP_COMPARE_AVX2 double combine_lanes(__m256d lo, __m256d hi) {
  const __m256d w = _mm256_add_pd(lo, hi);
  const __m128d u = _mm_add_pd(_mm256_castpd256_pd128(w), _mm256_extractf128_pd(w, 1));
  return _mm_cvtsd_f64(u) + _mm_cvtsd_f64(_mm_unpackhi_pd(u, u));
}
LOCKSTEP_COMPARE_AVX2 float combine_lo(__m256 lo, __m256 hi) {
  const __m256 w = _mm256_min_ps(lo, hi);
  const __m128 u = _mm_min_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
  const __m128 t = _mm_min_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_min_ss(t, _mm_shuffle_ps(t, t, 1)));
}
LOCKSTEP_COMPARE_AVX2 float combine_hi(__m256 lo, __m256 hi) {
  const __m256 w = _mm256_max_ps(lo, hi);
  const __m128 u = _mm_max_ps(_mm256_castps256_ps128(w), _mm256_extractf128_ps(w, 1));
  const __m128 t = _mm_max_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// All ones where |x| is below the exponent of inf (finite), and `live`.
LOCKSTEP_COMPARE_AVX2 __m256 finite_mask(__m256 live, __m256 v) {
  const __m256i bits = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff));
  return _mm256_and_ps(
      live, _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(0x7f800000), bits)));
}

// The lanes of 8-float masks lo (elements 0-7) and hi (8-15) as 16 bits.
LOCKSTEP_COMPARE_AVX2 uint32_t bits16(__m256 lo, __m256 hi) {
  return static_cast<uint32_t>(_mm256_movemask_ps(lo)) |
         static_cast<uint32_t>(_mm256_movemask_ps(hi)) << 8;
}

// Lanes [0, m) of 8 (all for m >= 8).
LOCKSTEP_COMPARE_AVX2 __m256i live_lanes(int32_t m) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// first_avx512's diff histogram, with the window test by compares: in by_decade mode the
// decade index is k = 1 + #{j in [1, decades − 1] : |d| >= power[j]} (the powers rise, so the
// j counted are a prefix; the same k as DecadeTable::index for every exponent by_decade
// accepts), so k is in [w, w + 3] when |d| >= power[w − 1] (always for w = 1) and not
// |d| >= power[w + 3] (NaN past the last decade), and k − w counts power[w .. w + 2] at or below
// |d|. Without by_decade, every nonzero difference is looked up one by one.
LOCKSTEP_COMPARE_AVX2 BlockSums first_avx2(const float* a, const float* b, uint32_t n,
                                           const DecadeTable& dt, uint32_t* diff, int32_t& window) {
  __m256d sa[2], sb[2], saa[2], sbb[2], sab[2], sdd[2];
  for (int h = 0; h < 2; ++h)
    sa[h] = sb[h] = saa[h] = sbb[h] = sab[h] = sdd[h] = _mm256_setzero_pd();
  __m256d md = _mm256_setzero_pd();  // |d| >= 0; -1 below when nothing is paired
  __m256 lo_a[2], lo_b[2], hi_a[2], hi_b[2];
  for (int h = 0; h < 2; ++h) {
    lo_a[h] = lo_b[h] = _mm256_set1_ps(kInfF);
    hi_a[h] = hi_b[h] = _mm256_set1_ps(-kInfF);
  }
  BlockSums s;
  const __m256 fzero = _mm256_setzero_ps();
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  const __m256d dabs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffff));
  const int32_t zero = dt.zero();
  const int32_t decades = dt.zero();
  const int32_t w = std::clamp(window, 1, std::max(1, decades - 3));
  const bool by_decade = dt.by_decade;  // then decades <= 31, and w + 3 <= 31
  const float no_power = kNaNF;
  const __m256 t_in = _mm256_set1_ps(!by_decade ? no_power : w == 1 ? 0.0f : dt.power[w - 1]);
  const __m256 t_out = _mm256_set1_ps(by_decade ? dt.power[w + 3] : no_power);
  const __m256 t1 = _mm256_set1_ps(by_decade ? dt.power[w] : no_power);
  const __m256 t2 = _mm256_set1_ps(by_decade ? dt.power[w + 1] : no_power);
  const __m256 t3 = _mm256_set1_ps(by_decade ? dt.power[w + 2] : no_power);
  const __m256i one = _mm256_set1_epi32(1), sixteen = _mm256_set1_epi32(16);
  const __m256i low_nibbles = _mm256_set1_epi32(0x0f0f0f0f);
  // Nibble 4·(k − w + 4·negative) of a lane counts up to 14 (two elements a step, 7 steps),
  // then goes into bytes: even nibbles in `even`, odd ones in `odd`; a lane sees at most
  // kBlock / 8 = 64 elements, so a byte never passes 255.
  __m256i nibbles = _mm256_setzero_si256(), even = nibbles, odd = nibbles;
  int nibble_steps = 0;
  uint32_t zeros = 0, paired = 0, agree = 0;
  uint32_t per_decade[102] = {};  // this block's nonzero differences by decade index (<= 101)
  for (uint32_t i = 0; i < n; i += 16) {
    __m256 va[2], vb[2], live[2];
    if (n - i >= 16) {
      for (int h = 0; h < 2; ++h) {
        va[h] = _mm256_loadu_ps(a + i + 8 * h);
        vb[h] = _mm256_loadu_ps(b + i + 8 * h);
        live[h] = all;
      }
    } else {
      for (int h = 0; h < 2; ++h) {
        const __m256i m = live_lanes(static_cast<int32_t>(n - i) - 8 * h);
        va[h] = _mm256_maskload_ps(a + i + 8 * h, m);
        vb[h] = _mm256_maskload_ps(b + i + 8 * h, m);
        live[h] = _mm256_castsi256_ps(m);
      }
    }
    __m256 ok_a[2], ok_b[2], ok[2], nonzero[2], in[2], dis[2], df[2];
    for (int h = 0; h < 2; ++h) {
      ok_a[h] = finite_mask(live[h], va[h]);
      ok_b[h] = finite_mask(live[h], vb[h]);
      ok[h] = _mm256_and_ps(ok_a[h], ok_b[h]);
      // min/max as range_lo/range_hi; a position that does not count leaves the lane as it is.
      lo_a[h] = _mm256_blendv_ps(lo_a[h], _mm256_min_ps(lo_a[h], va[h]), ok_a[h]);
      hi_a[h] = _mm256_blendv_ps(hi_a[h], _mm256_max_ps(hi_a[h], va[h]), ok_a[h]);
      lo_b[h] = _mm256_blendv_ps(lo_b[h], _mm256_min_ps(lo_b[h], vb[h]), ok_b[h]);
      hi_b[h] = _mm256_blendv_ps(hi_b[h], _mm256_max_ps(hi_b[h], vb[h]), ok_b[h]);

      df[h] = _mm256_sub_ps(vb[h], va[h]);
      const __m256 ad = _mm256_and_ps(df[h], abs_mask);
      const __m256 pos = _mm256_and_ps(ok[h], _mm256_cmp_ps(df[h], fzero, _CMP_GT_OQ));
      const __m256 neg = _mm256_and_ps(ok[h], _mm256_cmp_ps(df[h], fzero, _CMP_LT_OQ));
      nonzero[h] = _mm256_or_ps(pos, neg);
      in[h] = _mm256_and_ps(_mm256_and_ps(nonzero[h], _mm256_cmp_ps(ad, t_in, _CMP_GE_OQ)),
                            _mm256_cmp_ps(ad, t_out, _CMP_NGE_UQ));
      const __m256i g1 = _mm256_castps_si256(_mm256_cmp_ps(ad, t1, _CMP_GE_OQ));
      const __m256i g2 = _mm256_castps_si256(_mm256_cmp_ps(ad, t2, _CMP_GE_OQ));
      const __m256i g3 = _mm256_castps_si256(_mm256_cmp_ps(ad, t3, _CMP_GE_OQ));
      // 4·(k − w) + 16·negative: the masks are −1 where set.
      const __m256i rel =
          _mm256_sub_epi32(_mm256_sub_epi32(_mm256_setzero_si256(), g1), _mm256_add_epi32(g2, g3));
      const __m256i shift = _mm256_add_epi32(_mm256_slli_epi32(rel, 2),
                                             _mm256_and_si256(_mm256_castps_si256(neg), sixteen));
      nibbles = _mm256_add_epi32(
          nibbles, _mm256_and_si256(_mm256_sllv_epi32(one, shift), _mm256_castps_si256(in[h])));

      const __m256 gt_a = _mm256_cmp_ps(va[h], fzero, _CMP_GT_OQ);
      const __m256 lt_a = _mm256_cmp_ps(va[h], fzero, _CMP_LT_OQ);
      const __m256 gt_b = _mm256_cmp_ps(vb[h], fzero, _CMP_GT_OQ);
      const __m256 lt_b = _mm256_cmp_ps(vb[h], fzero, _CMP_LT_OQ);
      dis[h] = _mm256_or_ps(_mm256_xor_ps(gt_a, gt_b), _mm256_xor_ps(lt_a, lt_b));
    }
    if (++nibble_steps == 7) {
      even = _mm256_add_epi32(even, _mm256_and_si256(nibbles, low_nibbles));
      odd = _mm256_add_epi32(odd, _mm256_and_si256(_mm256_srli_epi32(nibbles, 4), low_nibbles));
      nibbles = _mm256_setzero_si256();
      nibble_steps = 0;
    }
    const uint32_t ok16 = bits16(ok[0], ok[1]), nonzero16 = bits16(nonzero[0], nonzero[1]);
    paired += static_cast<uint32_t>(std::popcount(ok16));
    agree += static_cast<uint32_t>(std::popcount(ok16 & ~bits16(dis[0], dis[1])));
    zeros += static_cast<uint32_t>(std::popcount(ok16 & ~nonzero16));
    if (const uint32_t out = nonzero16 & ~bits16(in[0], in[1])) {
      alignas(32) float d[16];
      _mm256_store_ps(d, df[0]);
      _mm256_store_ps(d + 8, df[1]);
      for (uint32_t m = out; m; m &= m - 1) {
        const int key = dt.index(d[std::countr_zero(m)]);
        ++diff[key];
        ++per_decade[std::abs(key - zero)];
      }
    }
    const uint32_t live16 = bits16(live[0], live[1]);
    if (ok16 != live16) {
      const __m256 inf = _mm256_set1_ps(kInfF), ninf = _mm256_set1_ps(-kInfF);
      uint32_t neg_inf[2];
      for (int side = 0; side < 2; ++side) {
        const __m256* v = side ? vb : va;
        const __m256 nan0 = _mm256_and_ps(live[0], _mm256_cmp_ps(v[0], v[0], _CMP_UNORD_Q));
        const __m256 nan1 = _mm256_and_ps(live[1], _mm256_cmp_ps(v[1], v[1], _CMP_UNORD_Q));
        s.nan[side] += static_cast<uint32_t>(std::popcount(bits16(nan0, nan1)));
        s.pos_inf[side] += static_cast<uint32_t>(std::popcount(
            bits16(_mm256_cmp_ps(v[0], inf, _CMP_EQ_OQ), _mm256_cmp_ps(v[1], inf, _CMP_EQ_OQ)) &
            live16));
        neg_inf[side] =
            bits16(_mm256_cmp_ps(v[0], ninf, _CMP_EQ_OQ), _mm256_cmp_ps(v[1], ninf, _CMP_EQ_OQ)) &
            live16;
        s.neg_inf[side] += static_cast<uint32_t>(std::popcount(neg_inf[side]));
      }
      s.masked += static_cast<uint32_t>(std::popcount(neg_inf[0] & neg_inf[1]));
      s.one_sided +=
          static_cast<uint32_t>(std::popcount(bits16(ok_a[0], ok_a[1]) ^ bits16(ok_b[0], ok_b[1])));
    }

    // The sums: elements 0-3 and 8-11 of the step into lanes 0-3, 4-7 and 12-15 into lanes 4-7.
    for (int h = 0; h < 2; ++h) {
      const __m256 xa = _mm256_and_ps(va[h], ok[h]), xb = _mm256_and_ps(vb[h], ok[h]);
      for (int q = 0; q < 2; ++q) {
        const __m256d x =
            _mm256_cvtps_pd(q ? _mm256_extractf128_ps(xa, 1) : _mm256_castps256_ps128(xa));
        const __m256d y =
            _mm256_cvtps_pd(q ? _mm256_extractf128_ps(xb, 1) : _mm256_castps256_ps128(xb));
        const __m256d d = _mm256_sub_pd(y, x);
        sa[q] = _mm256_add_pd(sa[q], x);
        sb[q] = _mm256_add_pd(sb[q], y);
        saa[q] = _mm256_fmadd_pd(x, x, saa[q]);  // exact products: fused or not, the same
        sbb[q] = _mm256_fmadd_pd(y, y, sbb[q]);
        sab[q] = _mm256_fmadd_pd(x, y, sab[q]);
        sdd[q] = _mm256_add_pd(sdd[q], keep(_mm256_mul_pd(d, d)));
        md = _mm256_max_pd(md, _mm256_and_pd(d, dabs_mask));
      }
    }
  }
  even = _mm256_add_epi32(even, _mm256_and_si256(nibbles, low_nibbles));
  odd = _mm256_add_epi32(odd, _mm256_and_si256(_mm256_srli_epi32(nibbles, 4), low_nibbles));
  alignas(32) uint8_t byte[2][32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(byte[0]), even);
  _mm256_store_si256(reinterpret_cast<__m256i*>(byte[1]), odd);
  uint32_t slot[8] = {};  // slot t: k = w + t positive (t < 4), negative (t >= 4)
  for (int lane = 0; lane < 8; ++lane)
    for (int t = 0; t < 8; ++t) slot[t] += byte[t % 2][4 * lane + t / 2];
  for (int t = 0; t < 4; ++t) {
    if (w + t > decades) continue;  // no k reaches past the last decade
    diff[zero + w + t] += slot[t];
    diff[zero - w - t] += slot[t + 4];
    per_decade[w + t] += slot[t] + slot[t + 4];
  }
  diff[zero] += zeros;
  uint32_t best = 0;
  for (int32_t v = 1; v + 3 <= std::max(4, decades); ++v) {
    const uint32_t held = per_decade[v] + per_decade[v + 1] + per_decade[v + 2] + per_decade[v + 3];
    if (held > best) best = held, window = v;
  }
  s.sa = combine_lanes(sa[0], sa[1]);
  s.sb = combine_lanes(sb[0], sb[1]);
  s.saa = combine_lanes(saa[0], saa[1]);
  s.sbb = combine_lanes(sbb[0], sbb[1]);
  s.sab = combine_lanes(sab[0], sab[1]);
  s.sdd = combine_lanes(sdd[0], sdd[1]);
  {
    const __m128d u = _mm_max_pd(_mm256_castpd256_pd128(md), _mm256_extractf128_pd(md, 1));
    s.max_abs_diff = paired ? _mm_cvtsd_f64(_mm_max_sd(u, _mm_unpackhi_pd(u, u))) : -1.0;
  }
  s.lo[0] = combine_lo(lo_a[0], lo_a[1]);
  s.lo[1] = combine_lo(lo_b[0], lo_b[1]);
  s.hi[0] = combine_hi(hi_a[0], hi_a[1]);
  s.hi[1] = combine_hi(hi_b[0], hi_b[1]);
  s.paired = paired;
  s.agree = agree;
  return s;
}

LOCKSTEP_COMPARE_AVX2 bool values_avx2(const float* a, const float* b, uint32_t n,
                                       const ValueParams& vp, BlockKeys& out) {
  const __m256 scale = _mm256_set1_ps(vp.scale), offset = _mm256_set1_ps(vp.offset);
  const __m256 top = _mm256_set1_ps(vp.top);
  const __m256i bins = _mm256_set1_epi32(vp.bins), dump0 = _mm256_set1_epi32(vp.dump0);
  const __m256i dump1 = _mm256_set1_epi32(vp.dump1);
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  __m256 one_sided = _mm256_setzero_ps();
  // key0 and key1 hold kBlock entries: a last step of fewer than 8 writes inside them.
  for (uint32_t i = 0; i < n; i += 8) {
    __m256 va, vb, live = all;
    if (n - i >= 8) {
      va = _mm256_loadu_ps(a + i);
      vb = _mm256_loadu_ps(b + i);
    } else {
      const __m256i m = live_lanes(static_cast<int32_t>(n - i));
      va = _mm256_maskload_ps(a + i, m);
      vb = _mm256_maskload_ps(b + i, m);
      live = _mm256_castsi256_ps(m);
    }
    const __m256 ok_a = finite_mask(live, va), ok_b = finite_mask(live, vb);
    one_sided = _mm256_or_ps(one_sided, _mm256_xor_ps(ok_a, ok_b));
    // As in values_avx512: min(t, top) is std::min(t, top) for every finite t.
    const __m256 ta = _mm256_min_ps(_mm256_sub_ps(keep(_mm256_mul_ps(va, scale)), offset), top);
    const __m256 tb = _mm256_min_ps(_mm256_sub_ps(keep(_mm256_mul_ps(vb, scale)), offset), top);
    const __m256i ba = _mm256_cvttps_epi32(ta), bb = _mm256_cvttps_epi32(tb);
    if (vp.joint) {
      const __m256i key = _mm256_add_epi32(_mm256_mullo_epi32(ba, bins), bb);
      const __m256i ok = _mm256_castps_si256(_mm256_and_ps(ok_a, ok_b));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.key0 + i),
                          _mm256_blendv_epi8(dump0, key, ok));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.key0 + i),
                          _mm256_blendv_epi8(dump0, ba, _mm256_castps_si256(ok_a)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.key1 + i),
                          _mm256_blendv_epi8(dump1, bb, _mm256_castps_si256(ok_b)));
    }
  }
  return _mm256_movemask_ps(one_sided) != 0;
}

// exp_nonpositive on 4 lanes; n is an integer in [-1075, 0] (for lanes it is not, the result
// is masked away by the caller), so it converts through 32 bits.
LOCKSTEP_COMPARE_AVX2 __m256d exp_avx2(__m256d x) {
  constexpr int kRn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  const __m256d in = _mm256_cmp_pd(x, _mm256_set1_pd(kExpMin), _CMP_GE_OQ);
  x = _mm256_and_pd(x, in);
  const __m256d n = _mm256_round_pd(keep(_mm256_mul_pd(x, _mm256_set1_pd(kLog2e))), kRn);
  const __m256d r = _mm256_sub_pd(_mm256_sub_pd(x, keep(_mm256_mul_pd(n, _mm256_set1_pd(kLn2Hi)))),
                                  keep(_mm256_mul_pd(n, _mm256_set1_pd(kLn2Lo))));
  __m256d p = _mm256_set1_pd(kExpTaylor[13]);
  for (int k = 12; k >= 0; --k)
    p = _mm256_add_pd(keep(_mm256_mul_pd(p, r)),
                      _mm256_set1_pd(kExpTaylor[static_cast<size_t>(k)]));
  const __m128i ni = _mm256_cvtpd_epi32(n), h = _mm_srai_epi32(ni, 1);
  const __m128i bias = _mm_set1_epi32(1023);
  const __m256d s1 =
      _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_cvtepi32_epi64(_mm_add_epi32(h, bias)), 52));
  const __m256d s2 = _mm256_castsi256_pd(
      _mm256_slli_epi64(_mm256_cvtepi32_epi64(_mm_add_epi32(_mm_sub_epi32(ni, h), bias)), 52));
  return _mm256_and_pd(in, _mm256_mul_pd(keep(_mm256_mul_pd(p, s1)), s2));
}

LOCKSTEP_COMPARE_AVX2 LogitSums logit_sums_avx2(const float* a, const float* b, size_t n, double ma,
                                                double mb) {
  __m256d za[2], zb[2], s[2];
  for (int q = 0; q < 2; ++q) za[q] = zb[q] = s[q] = _mm256_setzero_pd();
  const __m256d vma = _mm256_set1_pd(ma), vmb = _mm256_set1_pd(mb);
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  for (size_t i = 0; i < n; i += 8) {
    __m256 fa, fb, live = all;
    if (n - i >= 8) {
      fa = _mm256_loadu_ps(a + i);
      fb = _mm256_loadu_ps(b + i);
    } else {
      const __m256i m = live_lanes(static_cast<int32_t>(n - i));
      fa = _mm256_maskload_ps(a + i, m);
      fb = _mm256_maskload_ps(b + i, m);
      live = _mm256_castsi256_ps(m);
    }
    for (int q = 0; q < 2; ++q) {
      const __m256d x =
          _mm256_cvtps_pd(q ? _mm256_extractf128_ps(fa, 1) : _mm256_castps256_ps128(fa));
      const __m256d y =
          _mm256_cvtps_pd(q ? _mm256_extractf128_ps(fb, 1) : _mm256_castps256_ps128(fb));
      const __m256d lv = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(
          _mm_castps_si128(q ? _mm256_extractf128_ps(live, 1) : _mm256_castps256_ps128(live))));
      const __m256d ea = exp_avx2(_mm256_sub_pd(x, vma)), eb = exp_avx2(_mm256_sub_pd(y, vmb));
      za[q] = _mm256_add_pd(za[q], _mm256_and_pd(lv, ea));
      zb[q] = _mm256_add_pd(zb[q], _mm256_and_pd(lv, eb));
      const __m256d pos = _mm256_and_pd(lv, _mm256_cmp_pd(ea, _mm256_setzero_pd(), _CMP_GT_OQ));
      s[q] = _mm256_add_pd(s[q], _mm256_and_pd(pos, keep(_mm256_mul_pd(ea, _mm256_sub_pd(x, y)))));
    }
  }
  return {combine_lanes(za[0], za[1]), combine_lanes(zb[0], zb[1]), combine_lanes(s[0], s[1])};
}
#endif

// The kernels for this comparison: AVX-512 where the CPU has it, else AVX2, unless
// LOCKSTEP_CPU_ISA (cpu_kernels.h) asks for less; all give the same bits.
Kernels pick_kernels() {
#if defined(LOCKSTEP_HAVE_X86_KERNELS)
  cpu::Isa isa = cpu::Isa::Scalar;
  try {
    isa = cpu::best_isa();
  } catch (const Error&) {
    isa = cpu::supported_isas().back();  // a bad LOCKSTEP_CPU_ISA is the cpu lane's error
  }
  if (isa == cpu::Isa::Avx512) return {first_avx512, values_avx512, logit_sums_avx512};
  if (isa == cpu::Isa::Avx2) return {first_avx2, values_avx2, logit_sums_avx2};
#endif
  return {first_portable, values_portable, logit_sums_portable};
}

// Up to this many value bins, a block counts both sides with one increment into a joint
// [bins, bins] table (16 KiB at 64 bins, in L1), summed into the two histograms per chunk: the
// increments, not the arithmetic, are what the histogram loop spends its time on.
constexpr int kMaxJointBins = 64;

// The positions of a block finite in one side only: that side's sums and count, in order.
void one_sided_sums(const float* pa, const float* pb, uint64_t n, ChunkAcc& acc) {
  for (uint64_t i = 0; i < n; ++i) {
    const float fa = pa[i], fb = pb[i];
    const bool ok_a = std::isfinite(fa), ok_b = std::isfinite(fb);
    if (ok_a == ok_b) continue;
    const float v = ok_a ? fa : fb;
    SideAcc& side = ok_a ? acc.a : acc.b;
    side.sum += v;
    side.sum2 += static_cast<double>(v) * v;
    ++side.finite;
  }
}

// First pass over one piece [begin, end) of one segment, inside one chunk: per block of
// kBlock, the kernel's sums and diff keys, the positions not paired, then the increments.
void first_pass_piece(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const DecadeTable& dt, FirstKernel kernel, uint32_t* diff, int32_t& window,
                      ChunkAcc& acc, float (&lo)[2], float (&hi)[2], SegmentPartial& seg) {
  for (uint64_t blk = begin; blk < end; blk += kBlock) {
    const auto n = static_cast<uint32_t>(std::min(kBlock, end - blk));
    const float* pa = a + blk;
    const float* pb = b + blk;
    const BlockSums s = kernel(pa, pb, n, dt, diff, window);
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
    for (int side = 0; side < 2; ++side) {
      lo[side] = range_lo(lo[side], s.lo[side]);
      hi[side] = range_hi(hi[side], s.hi[side]);
    }
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
      if (s.one_sided) one_sided_sums(pa, pb, n, acc);
    }
  }
}

// The first pass over a chunk: everything but the value histogram, and the finite range of
// each side, which the value pass waits for.
void first_pass_chunk(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const Layout& layout, const DecadeTable& dt, FirstKernel kernel,
                      ChunkAcc& out, float (&lo)[2], float (&hi)[2]) {
  // Accumulated here and moved out at the end: neighbouring chunks' results share cache lines,
  // and other threads work on them.
  ChunkAcc acc;
  const size_t nd = static_cast<size_t>(2 * dt.zero() + 1);
  acc.diff.assign(nd, 0);
  acc.segments.reserve((end - begin) / layout.segment_len + 2);
  thread_local int32_t window = 1;  // the kernel's, carried from chunk to chunk
  lo[0] = lo[1] = kInfF;
  hi[0] = hi[1] = -kInfF;
  for (uint64_t i = begin; i < end;) {
    const uint64_t s = i / layout.segment_len;
    const uint64_t piece_end = std::min(end, (s + 1) * layout.segment_len);
    SegmentPartial seg;
    seg.segment = s;
    first_pass_piece(a, b, i, piece_end, dt, kernel, acc.diff.data(), window, acc, lo, hi, seg);
    acc.segments.push_back(seg);
    i = piece_end;
  }
  out = std::move(acc);
}

// The value pass over a chunk: both value histograms.
void value_pass_chunk(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const ValueParams& vp, ValueKernel kernel, ChunkAcc& acc) {
  const auto nb = static_cast<size_t>(vp.bins);
  // The joint table in two 16-bit copies (even and odd positions; each sees at most half a
  // chunk): 16 KiB at 64 bins, and a run of one bin, as in a peaked distribution, does not
  // chain one counter's increments.
  static_assert(kCompareChunk / 2 <= std::numeric_limits<uint16_t>::max());
  const size_t joint_size = vp.joint ? nb * nb + 1 : 0;
  thread_local std::vector<uint16_t> joint;           // [2, bins · bins + 1]
  thread_local std::vector<uint32_t> hist_a, hist_b;  // [bins + 1]
  thread_local std::unique_ptr<BlockKeys> keys;
  if (!keys) keys = std::make_unique<BlockKeys>();
  joint.assign(2 * joint_size, 0);
  hist_a.assign(nb + 1, 0);
  hist_b.assign(nb + 1, 0);
  uint16_t* j0 = joint.data();
  uint16_t* j1 = j0 + joint_size;
  uint32_t* key0_table = hist_a.data();
  uint32_t* key1_table = hist_b.data();
  for (uint64_t blk = begin; blk < end; blk += kBlock) {
    const auto n = static_cast<uint32_t>(std::min(kBlock, end - blk));
    const float* pa = a + blk;
    const float* pb = b + blk;
    const bool one_sided = kernel(pa, pb, n, vp, *keys);
    if (vp.joint) {
      uint32_t i = 0;
      for (; i + 4 <= n; i += 4) {
        ++j0[keys->key0[i]];
        ++j1[keys->key0[i + 1]];
        ++j0[keys->key0[i + 2]];
        ++j1[keys->key0[i + 3]];
      }
      for (; i < n; ++i) ++j0[keys->key0[i]];
      if (one_sided)
        for (uint32_t e = 0; e < n; ++e) {
          const bool ok_a = std::isfinite(pa[e]), ok_b = std::isfinite(pb[e]);
          if (ok_a != ok_b) ++(ok_a ? hist_a : hist_b)[vp.value_bin(ok_a ? pa[e] : pb[e])];
        }
    } else {
      for (uint32_t i = 0; i < n; ++i) {
        ++key0_table[keys->key0[i]];
        ++key1_table[keys->key1[i]];
      }
    }
  }
  acc.hist_a.assign(hist_a.begin(), hist_a.begin() + static_cast<ptrdiff_t>(nb));
  acc.hist_b.assign(hist_b.begin(), hist_b.begin() + static_cast<ptrdiff_t>(nb));
  if (vp.joint)
    for (size_t i = 0; i < nb; ++i)
      for (size_t j = 0; j < nb; ++j) {
        const uint32_t c = uint32_t{j0[i * nb + j]} + j1[i * nb + j];
        acc.hist_a[i] += c;
        acc.hist_b[j] += c;
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
  const auto n = static_cast<uint32_t>(row.size());
  for (uint32_t i = 0; i < n;) {
    // Once the buffer is full, a later index must be strictly larger than its last to enter:
    // blocks of 16 with none such (NaN never is) are skipped with one vectorised test.
    if (top.size() == k && n - i >= 16) {
      const float bar = std::isnan(row[top.back()]) ? -kInfF : row[top.back()];
      bool any = false;
#pragma omp simd reduction(|| : any)
      for (uint32_t j = 0; j < 16; ++j) any = any || row[i + j] > bar;
      if (!any) {
        i += 16;
        continue;
      }
    }
    const uint32_t stop = std::min(n, i + 16);
    for (; i < stop; ++i) {
      if (top.size() == k && !better(i, top.back())) continue;
      top.insert(std::upper_bound(top.begin(), top.end(), i, better), i);
      if (top.size() > k) top.pop_back();
    }
  }
  return top;
}

// KL(softmax(a) ‖ softmax(b)) in nats, as metrics.h's kl_divergence but without its two
// vocab-sized buffers: with p = e^(a−ma)/Za, KL = Σ p·(a − b) − (ma + ln Za) + (mb + ln Zb).
double row_kl(std::span<const float> a, std::span<const float> b, LogitKernel kernel) {
  float ma = -kInfF, mb = -kInfF;
  bool nan = false;
#pragma omp simd reduction(max : ma, mb) reduction(|| : nan)
  for (size_t i = 0; i < a.size(); ++i) {
    nan = nan || a[i] != a[i] || b[i] != b[i];
    ma = std::max(ma, a[i]);
    mb = std::max(mb, b[i]);
  }
  if (nan) return kNaN;
  const LogitSums z = kernel(a.data(), b.data(), a.size(), ma, mb);
  return z.s / z.za - (ma + std::log(z.za)) + (mb + std::log(z.zb));
}

struct LogitRows {
  std::vector<double> kl;
  std::vector<uint8_t> top1;
  std::vector<uint32_t> overlap;
};

void compare_logit_row(const Tensor& a, const Tensor& b, uint64_t t, uint32_t k,
                       LogitKernel kernel, LogitRows& out) {
  const uint64_t vocab = a.shape[1];
  std::span<const float> ra(a.data.data() + t * vocab, vocab);
  std::span<const float> rb(b.data.data() + t * vocab, vocab);
  out.kl[t] = row_kl(ra, rb, kernel);
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
  std::atomic<bool> binned{false};  // set (and notified) once values is final
  ValueParams values;
  const DecadeTable* decades = nullptr;
  Kernels kernels;
  float lo_a = kInfF, hi_a = -kInfF, lo_b = kInfF, hi_b = -kInfF;

  std::vector<ChunkAcc> acc;  // per chunk
  LogitRows rows;
  std::atomic<uint64_t> work_left{0};  // main chunks + logit items
  std::atomic<bool> done{false};
  std::atomic<bool> aborted{false};  // a thread failed: nothing more is computed
};

// Checks shapes and sizes the job; false when there is nothing to compute (a mismatch).
bool prepare_job(CellJob& job, const Cell& cell, const Tensor& a, const Tensor& b,
                 const CompareOptions& options, const DecadeTable& decades, Kernels kernels) {
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
  const auto nb = static_cast<int32_t>(options.value_bins);
  job.values.bins = nb;
  job.values.top = static_cast<float>(nb - 1);
  job.values.joint = nb <= kMaxJointBins;
  job.values.dump0 = job.values.joint ? nb * nb : nb;
  job.values.dump1 = nb;
  job.decades = &decades;
  job.kernels = kernels;
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
    job.values.scale = width > 0 ? static_cast<float>(job.values.bins / width) : 0.0f;
    job.values.offset = lo * job.values.scale;
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
    const uint64_t begin = it.index * kCompareChunk, end = std::min(job.n, begin + kCompareChunk);
    float lo[2], hi[2];
    first_pass_chunk(a, b, begin, end, job.layout, *job.decades, job.kernels.first,
                     job.acc[it.index], lo, hi);
    job.range_a[it.index] = {lo[0], hi[0]};
    job.range_b[it.index] = {lo[1], hi[1]};
    if (job.ranges_left.fetch_sub(1) == 1) set_bins(job);
    return;
  }
  if (it.kind == ItemKind::Main) {
    // Every range item of this cell was handed out before this one, so the wait is only for
    // those still running on other threads.
    job.binned.wait(false);
    if (job.aborted.load()) return;
    const uint64_t begin = it.index * kCompareChunk, end = std::min(job.n, begin + kCompareChunk);
    value_pass_chunk(a, b, begin, end, job.values, job.kernels.value, job.acc[it.index]);
  } else {
    const uint32_t k =
        static_cast<uint32_t>(std::min<uint64_t>(job.options->topk, job.layout.width));
    const uint64_t first = it.index * job.rows_per_item;
    const uint64_t last = std::min(job.layout.tokens, first + job.rows_per_item);
    for (uint64_t t = first; t < last; ++t) compare_logit_row(*job.a, *job.b, t, k, job.kernels.logit, job.rows);
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
  // A cell's value and logit items go right after its first-pass items, while its data is
  // still in cache, but behind the first `threads` first-pass items of the next cell: a thread
  // that reaches them seldom has to wait for the others to finish the first pass they need.
  std::vector<Item> items;
  std::vector<uint32_t> live;
  for (uint32_t j = 0; j < jobs.size(); ++j)
    if (!jobs[j]->done) live.push_back(j);
  std::vector<uint64_t> ranges_out(jobs.size(), 0);
  auto first_pass = [&](uint32_t j, uint64_t upto) {
    for (; ranges_out[j] < std::min(upto, jobs[j]->chunks); ++ranges_out[j])
      items.push_back({j, ItemKind::Range, ranges_out[j]});
  };
  for (size_t l = 0; l < live.size(); ++l) {
    const uint32_t j = live[l];
    first_pass(j, jobs[j]->chunks);
    if (l + 1 < live.size()) first_pass(live[l + 1], threads);
    for (uint64_t c = 0; c < jobs[j]->chunks; ++c) items.push_back({j, ItemKind::Main, c});
    for (uint64_t c = 0; c < jobs[j]->logit_items; ++c) items.push_back({j, ItemKind::Logits, c});
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

json num(double v) { return formats::json_number(v); }
json nums(const std::vector<double>& v) { return formats::json_numbers(v); }

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
    if (attention_matrix(cell.stage) && tensor.shape.size() == 3 && tensor.shape[0]) {
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
  prepare_job(*jobs[0], cell, a, b, options, decades, pick_kernels());
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
  const Kernels kernels = pick_kernels();
  std::vector<std::unique_ptr<CellJob>> jobs;
  for (const auto& [cell, t] : a.cells()) {
    const Tensor* u = b.find(cell);
    if (!u) {
      out.only_in_a.push_back(cell);
      continue;
    }
    jobs.push_back(std::make_unique<CellJob>());
    prepare_job(*jobs.back(), cell, t, *u, out.options, decades, kernels);
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
