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

#include "formats/error.h"

namespace lockstep::engine {
namespace {

using json = nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kInfF = std::numeric_limits<float>::infinity();
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
// of ten inside the octave, if any) on. Buckets are decade − min_decade, clamped. Built once per
// comparison.
struct DecadeTable {
  int min_decade = 0, max_decade = 0;
  int32_t decade_lo[256] = {};
  float threshold[256] = {};

  DecadeTable(int min_d, int max_d) : min_decade(min_d), max_decade(max_d) {
    for (int e = 0; e < 256; ++e) {
      threshold[e] = kInfF;
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
  }
  int zero() const { return max_decade - min_decade + 1; }
  // Index into the [negative | zero | positive] array for d = b − a (float arithmetic).
  int index(float d) const {
    if (d == 0) return zero();
    const float ad = std::fabs(d);
    const auto e = static_cast<int>(std::bit_cast<uint32_t>(ad) >> 23);
    const int k = decade_lo[e] + (ad >= threshold[e]) + 1;
    return d > 0 ? zero() + k : zero() - k;
  }
};

// What every chunk of one cell needs, fixed before the main pass.
struct Binning {
  // value bin = x · scale − offset in float (offset = lo · scale; no overflow even for a
  // range of ±3e38), truncated and clamped to bins − 1; x ≥ lo keeps it ≥ 0.
  float scale = 0, offset = 0;
  int bins = 1;
  const DecadeTable* decades = nullptr;

  int value_bin(float x) const {
    return static_cast<int>(std::min(x * scale - offset, static_cast<float>(bins - 1)));
  }
};

int sign_of(double x) {
  return (x > 0) - (x < 0);
}

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

bool all_finite(const float* a, const float* b, uint64_t n) {
  uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (uint64_t i = 0; i < n; ++i) {
    // exponent all ones: Inf or NaN
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(a[i]) & 0x7f800000u) == 0x7f800000u);
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(b[i]) & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void merge_side(SideAcc& s, const SideAcc& p) {
  s.sum += p.sum;
  s.sum2 += p.sum2;
  s.finite += p.finite;
  s.nan += p.nan;
  s.pos_inf += p.pos_inf;
  s.neg_inf += p.neg_inf;
}

void count_side(SideAcc& s, float v) {
  if (std::isnan(v))
    ++s.nan;
  else if (std::isinf(v))
    ++(v > 0 ? s.pos_inf : s.neg_inf);
}

// Sums over one block with no NaN/Inf, in kLanes fixed lanes (element i of the block goes to
// lane i % kLanes, each lane summed in order, lanes added in order): the same bits whether
// the compiler uses SSE2 or AVX2 and whatever the thread count. GCC vector types keep the
// accumulators in registers (plain arrays under `omp simd` were spilled to the stack).
constexpr int kLanes = 4;
using V4d = double __attribute__((vector_size(32)));
using V4f = float __attribute__((vector_size(16)));
using V4l = int64_t __attribute__((vector_size(32)));

struct BlockSums {
  double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0, sdd = 0, max_abs_diff = 0;
  uint64_t agree = 0;
};

[[gnu::target_clones("avx2", "default")]] BlockSums block_sums(const float* a, const float* b,
                                                               uint64_t n) {
  V4d sa = {}, sb = {}, saa = {}, sbb = {}, sab = {}, sdd = {}, md = {};
  V4l agree = {};
  uint64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V4f fa, fb;
    std::memcpy(&fa, a + i, sizeof fa);
    std::memcpy(&fb, b + i, sizeof fb);
    const V4d x = __builtin_convertvector(fa, V4d), y = __builtin_convertvector(fb, V4d);
    const V4d d = y - x;
    sa += x;
    sb += y;
    saa += x * x;
    sbb += y * y;
    sab += x * y;
    sdd += d * d;
    const V4d ad = d < 0 ? -d : d;
    md = ad > md ? ad : md;
    // Comparisons give -1 for true: sign = (x < 0) − (x > 0) negated twice.
    const V4l sx = (x < 0) - (x > 0), sy = (y < 0) - (y > 0);
    agree -= sx == sy;
  }
  double lanes[7][kLanes];
  std::memcpy(lanes[0], &sa, sizeof sa);
  std::memcpy(lanes[1], &sb, sizeof sb);
  std::memcpy(lanes[2], &saa, sizeof saa);
  std::memcpy(lanes[3], &sbb, sizeof sbb);
  std::memcpy(lanes[4], &sab, sizeof sab);
  std::memcpy(lanes[5], &sdd, sizeof sdd);
  std::memcpy(lanes[6], &md, sizeof md);
  int64_t agree_lanes[kLanes];
  std::memcpy(agree_lanes, &agree, sizeof agree);
  for (int j = 0; i < n; ++i, ++j) {
    const double x = a[i], y = b[i], d = y - x;
    lanes[0][j] += x;
    lanes[1][j] += y;
    lanes[2][j] += x * x;
    lanes[3][j] += y * y;
    lanes[4][j] += x * y;
    lanes[5][j] += d * d;
    lanes[6][j] = std::max(lanes[6][j], std::fabs(d));
    agree_lanes[j] += ((x > 0) - (x < 0)) == ((y > 0) - (y < 0));
  }
  BlockSums s;
  for (int j = 0; j < kLanes; ++j) {
    s.sa += lanes[0][j];
    s.sb += lanes[1][j];
    s.saa += lanes[2][j];
    s.sbb += lanes[3][j];
    s.sab += lanes[4][j];
    s.sdd += lanes[5][j];
    s.max_abs_diff = std::max(s.max_abs_diff, lanes[6][j]);
    s.agree += static_cast<uint64_t>(agree_lanes[j]);
  }
  return s;
}

// Histogram keys of a block with no NaN/Inf: the value bins of both sides (or, with `joint`,
// the one key bin_a · bins + bin_b), and the diff's index into the [negative | zero |
// positive] array (DecadeTable::index, vectorised: the table lookups become gathers).
struct BlockKeys {
  int32_t bin_a[kBlock], bin_b[kBlock], diff[kBlock];
};

[[gnu::target_clones("avx2", "default")]] void block_keys(const float* a, const float* b,
                                                          uint64_t n, const Binning& bins,
                                                          bool joint, BlockKeys& out) {
  const float scale = bins.scale, offset = bins.offset, top = static_cast<float>(bins.bins - 1);
  // joint: bin_a · bins + bin_b; else bin_a.
  const int32_t stride = joint ? bins.bins : 1, mix = joint ? 1 : 0;
  const DecadeTable& dt = *bins.decades;
  const int32_t zero = dt.zero();
  const int32_t* decade_lo = dt.decade_lo;
  const float* threshold = dt.threshold;
#pragma omp simd
  for (uint64_t i = 0; i < n; ++i) {
    const float x = a[i], y = b[i], d = y - x, ad = std::fabs(d);
    const auto ba = static_cast<int32_t>(std::min(x * scale - offset, top));
    const auto bb = static_cast<int32_t>(std::min(y * scale - offset, top));
    out.bin_a[i] = ba * stride + bb * mix;
    out.bin_b[i] = bb;
    const auto e = static_cast<int32_t>(std::bit_cast<uint32_t>(ad) >> 23);
    const int32_t k = decade_lo[e] + static_cast<int32_t>(ad >= threshold[e]) + 1;
    const int32_t sign = (d > 0) - (d < 0);
    out.diff[i] = zero + sign * k;
  }
}

// Up to this many value bins, a block counts both sides with one increment into a joint
// [bins, bins] table (16 KiB at 64 bins, in L1), summed into the two histograms per chunk: the
// increments, not the arithmetic, are what the histogram loop spends its time on.
constexpr int kMaxJointBins = 64;

// Per-chunk counters: a chunk holds < 2^32 elements.
struct ChunkCounts {
  std::vector<uint32_t> joint;           // [bins, bins] when bins <= kMaxJointBins
  std::vector<uint32_t> hist_a, hist_b;  // [bins]
  std::vector<uint32_t> diff;            // [2 · decades + 1]
};

// One piece [begin, end) of one segment, inside one chunk.
void accumulate_piece(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const Binning& bins, BlockKeys& keys, ChunkAcc& acc, ChunkCounts& counts,
                      SegmentPartial& seg) {
  const DecadeTable& dt = *bins.decades;
  const bool joint = !counts.joint.empty();
  uint32_t* hist_a = counts.hist_a.data();
  uint32_t* hist_b = counts.hist_b.data();
  uint32_t* pair_counts = counts.joint.data();
  uint32_t* diff = counts.diff.data();
  for (uint64_t blk = begin; blk < end; blk += kBlock) {
    const uint64_t n = std::min(kBlock, end - blk);
    const float* pa = a + blk;
    const float* pb = b + blk;
    if (all_finite(pa, pb, n)) {
      const BlockSums s = block_sums(pa, pb, n);
      acc.a.sum += s.sa;
      acc.b.sum += s.sb;
      acc.a.sum2 += s.saa;
      acc.b.sum2 += s.sbb;
      acc.a.finite += n;
      acc.b.finite += n;
      acc.aa += s.saa;
      acc.bb += s.sbb;
      acc.ab += s.sab;
      acc.dd += s.sdd;
      acc.paired += n;
      acc.sign_agree += s.agree;
      seg.d2 += s.sdd;
      seg.a2 += s.saa;
      if (s.max_abs_diff > acc.max_abs_diff) {
        for (uint64_t i = 0; i < n; ++i)
          if (std::fabs(static_cast<double>(pb[i]) - static_cast<double>(pa[i])) ==
              s.max_abs_diff) {
            acc.max_abs_diff = s.max_abs_diff;
            acc.max_index = blk + i;
            break;
          }
      }
      block_keys(pa, pb, n, bins, joint, keys);
      if (joint) {
        for (uint64_t i = 0; i < n; ++i) {
          ++pair_counts[keys.bin_a[i]];
          ++diff[keys.diff[i]];
        }
      } else {
        for (uint64_t i = 0; i < n; ++i) {
          ++hist_a[keys.bin_a[i]];
          ++hist_b[keys.bin_b[i]];
          ++diff[keys.diff[i]];
        }
      }
      continue;
    }
    for (uint64_t i = 0; i < n; ++i) {
      const float fa = pa[i], fb = pb[i];
      const bool ok_a = std::isfinite(fa), ok_b = std::isfinite(fb);
      if (ok_a) {
        acc.a.sum += fa;
        acc.a.sum2 += static_cast<double>(fa) * fa;
        ++acc.a.finite;
        ++hist_a[bins.value_bin(fa)];
      } else {
        count_side(acc.a, fa);
      }
      if (ok_b) {
        acc.b.sum += fb;
        acc.b.sum2 += static_cast<double>(fb) * fb;
        ++acc.b.finite;
        ++hist_b[bins.value_bin(fb)];
      } else {
        count_side(acc.b, fb);
      }
      if (!ok_a || !ok_b) {
        if (std::isinf(fa) && fa < 0 && fa == fb) {
          ++acc.masked;
          continue;
        }
        ++acc.unpaired;
        seg.unpaired = true;
        if (std::isnan(fa) || std::isnan(fb)) seg.nan = acc.nan = true;
        continue;
      }
      const double x = fa, y = fb, d = y - x;
      acc.aa += x * x;
      acc.bb += y * y;
      acc.ab += x * y;
      acc.dd += d * d;
      ++acc.paired;
      acc.sign_agree += static_cast<uint64_t>(sign_of(x) == sign_of(y));
      seg.d2 += d * d;
      seg.a2 += x * x;
      if (std::fabs(d) > acc.max_abs_diff) {
        acc.max_abs_diff = std::fabs(d);
        acc.max_index = blk + i;
      }
      ++diff[dt.index(fb - fa)];
    }
  }
}

void compare_chunk(const float* a, const float* b, uint64_t begin, uint64_t end,
                   const Layout& layout, const Binning& bins, ChunkAcc& acc) {
  const size_t nb = static_cast<size_t>(bins.bins);
  const size_t nd = static_cast<size_t>(2 * bins.decades->zero() + 1);
  // Per-thread scratch, reused from chunk to chunk.
  thread_local ChunkCounts counts;
  thread_local std::unique_ptr<BlockKeys> keys;
  if (!keys) keys = std::make_unique<BlockKeys>();
  counts.joint.assign(nb <= kMaxJointBins ? nb * nb : 0, 0);
  counts.hist_a.assign(nb, 0);
  counts.hist_b.assign(nb, 0);
  counts.diff.assign(nd, 0);
  for (uint64_t i = begin; i < end;) {
    const uint64_t s = i / layout.segment_len;
    const uint64_t piece_end = std::min(end, (s + 1) * layout.segment_len);
    SegmentPartial seg;
    seg.segment = s;
    accumulate_piece(a, b, i, piece_end, bins, *keys, acc, counts, seg);
    acc.segments.push_back(seg);
    i = piece_end;
  }
  acc.hist_a = counts.hist_a;
  acc.hist_b = counts.hist_b;
  acc.diff = counts.diff;
  if (!counts.joint.empty())
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
                 const CompareOptions& options, const DecadeTable& decades) {
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
  prepare_job(*jobs[0], cell, a, b, options, decades);
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
  std::vector<std::unique_ptr<CellJob>> jobs;
  for (const auto& [cell, t] : a.cells()) {
    const Tensor* u = b.find(cell);
    if (!u) {
      out.only_in_a.push_back(cell);
      continue;
    }
    jobs.push_back(std::make_unique<CellJob>());
    prepare_job(*jobs.back(), cell, t, *u, out.options, decades);
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
