#include "engine/compare.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <iterator>
#include <limits>
#include <numeric>
#include <thread>

#include "engine/metrics.h"
#include "formats/error.h"

namespace lockstep::engine {
namespace {

using json = nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// Elements handled per inner block: the vectorised sums, then the histogram loop, over data
// still in L1.
constexpr uint64_t kBlock = 512;

bool is_per_head_rows(Stage s) {
  return s == Stage::QkvMatmul || s == Stage::QkvBias || s == Stage::QPostRope ||
         s == Stage::KPostRope || s == Stage::Attention;
}
bool is_attention_matrix(Stage s) { return s == Stage::AttnScores || s == Stage::AttnSoftmax; }

// How flat indices map to tokens and heads. A segment is the finest unit with its own partial
// sums: one (token, head) slice, one token row, one (head, token) row of keys, or everything.
struct Layout {
  enum class Kind { Rows, Attention, Flat } kind = Kind::Flat;
  uint64_t tokens = 0, width = 0;  // Rows: [tokens, width]; Attention: [heads, tokens, ctx]
  uint64_t heads = 0, head_dim = 0, ctx = 0;
  uint64_t segment_len = 0, segments = 0;

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
      case Kind::Flat: m.channel = static_cast<int64_t>(i); break;
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
  } else if (shape.size() == 3 && is_attention_matrix(stage) && shape[0] && shape[1] &&
             shape[2]) {
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
  std::vector<uint64_t> hist_a, hist_b, diff_neg, diff_pos;
  uint64_t diff_zero = 0;
  std::vector<SegmentPartial> segments;
};

// What every chunk needs to know, fixed before the main pass.
struct Binning {
  double lo = 0, scale = 0;  // value bin = (x − lo) · scale, clamped to [0, bins − 1]
  int bins = 1;
  int min_decade = 0, max_decade = 0;
  std::vector<double> pow10;  // 10^k for k in [min_decade, max_decade + 1]

  int value_bin(double x) const {
    double f = (x - lo) * scale;
    int i = f < static_cast<double>(bins) ? static_cast<int>(f) : bins - 1;
    return i < 0 ? 0 : i;
  }
  // Bucket of |d| > 0: its decade floor(log10 |d|), clamped to [min_decade, max_decade],
  // minus min_decade. The binary exponent gives the decade to within one; a table settles it.
  int decade_bucket(double ad) const {
    const int e2 = static_cast<int>((std::bit_cast<uint64_t>(ad) >> 52) & 0x7ff) - 1023;
    int k = (e2 * 78913) >> 18;  // floor(e2 · log10 2), exact for |e2| < 1650
    k = std::clamp(k, min_decade - 1, max_decade);
    if (ad >= pow10[k + 1 - min_decade]) ++k;
    return std::clamp(k, min_decade, max_decade) - min_decade;
  }
};

int sign_of(double x) { return (x > 0) - (x < 0); }

// Relative RMS from partial sums, with metrics.h's convention.
double relative_from(double d2, double a2, bool nan, bool unpaired) {
  if (nan) return kNaN;
  if (unpaired) return kInf;
  if (d2 == 0.0) return 0.0;
  return a2 == 0.0 ? kInf : std::sqrt(d2 / a2);
}

// Finite range of one side over [begin, end): branch-free so it vectorises.
void finite_range(const float* x, uint64_t n, float& lo, float& hi) {
  float mn = std::numeric_limits<float>::infinity(), mx = -mn;
#pragma omp simd reduction(min : mn) reduction(max : mx)
  for (uint64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const bool fin = std::fabs(v) <= std::numeric_limits<float>::max();
    mn = std::min(mn, fin ? v : mn);
    mx = std::max(mx, fin ? v : mx);
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

// One piece [begin, end) of one segment, inside one chunk.
void accumulate_piece(const float* a, const float* b, uint64_t begin, uint64_t end,
                      const Binning& bins, ChunkAcc& acc, SegmentPartial& seg) {
  for (uint64_t blk = begin; blk < end; blk += kBlock) {
    const uint64_t n = std::min(kBlock, end - blk);
    const float* pa = a + blk;
    const float* pb = b + blk;
    if (all_finite(pa, pb, n)) {
      double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0, sdd = 0, md = 0;
      uint64_t agree = 0;
#pragma omp simd reduction(+ : sa, sb, saa, sbb, sab, sdd, agree) reduction(max : md)
      for (uint64_t i = 0; i < n; ++i) {
        const double x = pa[i], y = pb[i], d = y - x;
        sa += x;
        sb += y;
        saa += x * x;
        sbb += y * y;
        sab += x * y;
        sdd += d * d;
        md = std::max(md, std::fabs(d));
        agree += static_cast<uint64_t>(sign_of(x) == sign_of(y));
      }
      acc.a.sum += sa;
      acc.b.sum += sb;
      acc.a.sum2 += saa;
      acc.b.sum2 += sbb;
      acc.a.finite += n;
      acc.b.finite += n;
      acc.aa += saa;
      acc.bb += sbb;
      acc.ab += sab;
      acc.dd += sdd;
      acc.paired += n;
      acc.sign_agree += agree;
      seg.d2 += sdd;
      seg.a2 += saa;
      if (md > acc.max_abs_diff) {
        for (uint64_t i = 0; i < n; ++i)
          if (std::fabs(static_cast<double>(pb[i]) - static_cast<double>(pa[i])) == md) {
            acc.max_abs_diff = md;
            acc.max_index = blk + i;
            break;
          }
      }
      for (uint64_t i = 0; i < n; ++i) {
        const double x = pa[i], y = pb[i], d = y - x;
        ++acc.hist_a[bins.value_bin(x)];
        ++acc.hist_b[bins.value_bin(y)];
        if (d == 0)
          ++acc.diff_zero;
        else
          ++(d > 0 ? acc.diff_pos : acc.diff_neg)[bins.decade_bucket(std::fabs(d))];
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
        ++acc.hist_a[bins.value_bin(fa)];
      } else {
        count_side(acc.a, fa);
      }
      if (ok_b) {
        acc.b.sum += fb;
        acc.b.sum2 += static_cast<double>(fb) * fb;
        ++acc.b.finite;
        ++acc.hist_b[bins.value_bin(fb)];
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
      if (d == 0)
        ++acc.diff_zero;
      else
        ++(d > 0 ? acc.diff_pos : acc.diff_neg)[bins.decade_bucket(std::fabs(d))];
    }
  }
}

void compare_chunk(const float* a, const float* b, uint64_t begin, uint64_t end,
                   const Layout& layout, const Binning& bins, ChunkAcc& acc) {
  acc.hist_a.assign(static_cast<size_t>(bins.bins), 0);
  acc.hist_b.assign(static_cast<size_t>(bins.bins), 0);
  const size_t decades = static_cast<size_t>(bins.max_decade - bins.min_decade + 1);
  acc.diff_neg.assign(decades, 0);
  acc.diff_pos.assign(decades, 0);
  for (uint64_t i = begin; i < end;) {
    const uint64_t s = i / layout.segment_len;
    const uint64_t piece_end = std::min(end, (s + 1) * layout.segment_len);
    SegmentPartial seg;
    seg.segment = s;
    accumulate_piece(a, b, i, piece_end, bins, acc, seg);
    acc.segments.push_back(seg);
    i = piece_end;
  }
}

unsigned resolve_threads(unsigned t) {
  if (t) return t;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs f(i) for i in [0, n) on up to `threads` threads; `cancel` skips what has not started.
template <typename F>
void parallel_for(uint64_t n, unsigned threads, const std::atomic<bool>* cancel, F f) {
  const auto count = static_cast<int64_t>(n);
  const int t = static_cast<int>(std::min<uint64_t>(threads, std::max<uint64_t>(n, 1)));
  if (t <= 1) {
    for (int64_t i = 0; i < count; ++i) {
      if (cancel && cancel->load(std::memory_order_relaxed)) return;
      f(static_cast<uint64_t>(i));
    }
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
  for (int64_t i = 0; i < count; ++i) {
    if (cancel && cancel->load(std::memory_order_relaxed)) continue;
    f(static_cast<uint64_t>(i));
  }
}

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

// Row order for top-k: larger logit first, NaN last, ties by lower index.
std::vector<uint32_t> top_indices(std::span<const float> row, uint32_t k) {
  std::vector<uint32_t> idx(row.size());
  std::iota(idx.begin(), idx.end(), 0u);
  auto key = [&](uint32_t i) { return std::isnan(row[i]) ? -kInf : static_cast<double>(row[i]); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](uint32_t x, uint32_t y) {
    const double kx = key(x), ky = key(y);
    return kx != ky ? kx > ky : x < y;
  });
  idx.resize(k);
  return idx;
}

LogitComparison compare_logits(const Tensor& a, const Tensor& b, const CompareOptions& options,
                               unsigned threads, const std::atomic<bool>* cancel) {
  LogitComparison l;
  l.tokens = a.shape[0];
  const uint64_t vocab = a.shape[1];
  l.k = static_cast<uint32_t>(std::min<uint64_t>(options.topk, vocab));
  l.kl.assign(l.tokens, 0.0);
  std::vector<uint8_t> top1(l.tokens, 0);
  std::vector<uint32_t> overlap(l.tokens, 0);
  parallel_for(l.tokens, threads, cancel, [&](uint64_t t) {
    std::span<const float> ra(a.data.data() + t * vocab, vocab), rb(b.data.data() + t * vocab, vocab);
    l.kl[t] = kl_divergence(ra, rb);
    std::vector<uint32_t> ta = top_indices(ra, l.k), tb = top_indices(rb, l.k);
    top1[t] = ta[0] == tb[0];
    std::sort(ta.begin(), ta.end());
    std::sort(tb.begin(), tb.end());
    std::vector<uint32_t> common;
    std::set_intersection(ta.begin(), ta.end(), tb.begin(), tb.end(), std::back_inserter(common));
    overlap[t] = static_cast<uint32_t>(common.size());
  });
  double kl = 0, agree = 0, ov = 0;
  for (uint64_t t = 0; t < l.tokens; ++t) {
    kl += l.kl[t];
    agree += top1[t];
    ov += static_cast<double>(overlap[t]) / l.k;
  }
  const double n = static_cast<double>(l.tokens);
  l.mean_kl = kl / n;
  l.top1_agreement = agree / n;
  l.topk_overlap = ov / n;
  return l;
}

void check_options(const CompareOptions& o) {
  if (o.value_bins == 0) throw Error("compare options: expected value_bins >= 1, found 0");
  if (o.value_bins > (1u << 20))
    throw Error("compare options: expected value_bins <= 1048576, found " +
                std::to_string(o.value_bins));
  if (o.topk == 0) throw Error("compare options: expected topk >= 1, found 0");
  if (o.diff_min_decade > o.diff_max_decade || o.diff_min_decade < -300 ||
      o.diff_max_decade > 300)
    throw Error("compare options: expected -300 <= diff_min_decade <= diff_max_decade <= 300, "
                "found " + std::to_string(o.diff_min_decade) + ".." +
                std::to_string(o.diff_max_decade));
  if (!(o.headroom_factor >= 1.0))
    throw Error("compare options: expected headroom_factor >= 1");
}

std::string shape_text(const std::vector<uint64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// compare_cell with a thread count and cancel flag; returns false when cancelled.
bool compare_cell_into(CellComparison& r, const Tensor& a, const Tensor& b,
                       const CompareOptions& options, const std::atomic<bool>* cancel) {
  r.shape_a = a.shape;
  r.shape_b = b.shape;
  const uint64_t n = a.data.size();
  if (a.shape != b.shape || a.elements() != n || b.elements() != b.data.size()) {
    r.shape_mismatch = true;
    r.elements = std::max<uint64_t>(n, b.data.size());
    r.error = a.shape != b.shape
                  ? "shapes differ: " + shape_text(a.shape) + " vs " + shape_text(b.shape)
                  : "data does not fill the shape " + shape_text(a.shape);
    return true;
  }
  r.elements = n;
  const unsigned threads = resolve_threads(options.threads);
  const uint64_t chunks = (n + kCompareChunk - 1) / kCompareChunk;
  const Layout layout = make_layout(r.cell.stage, a.shape, n, options.head_dim);

  // Pass 1: finite range of each side.
  std::vector<std::pair<float, float>> ra(chunks), rb(chunks);
  parallel_for(chunks, threads, cancel, [&](uint64_t c) {
    const uint64_t begin = c * kCompareChunk, len = std::min(kCompareChunk, n - begin);
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    finite_range(a.data.data() + begin, len, lo, hi);
    ra[c] = {lo, hi};
    lo = std::numeric_limits<float>::infinity(), hi = -lo;
    finite_range(b.data.data() + begin, len, lo, hi);
    rb[c] = {lo, hi};
  });
  if (cancel && cancel->load()) return false;
  float lo_a = std::numeric_limits<float>::infinity(), hi_a = -lo_a, lo_b = lo_a, hi_b = hi_a;
  for (uint64_t c = 0; c < chunks; ++c) {
    lo_a = std::min(lo_a, ra[c].first), hi_a = std::max(hi_a, ra[c].second);
    lo_b = std::min(lo_b, rb[c].first), hi_b = std::max(hi_b, rb[c].second);
  }

  Binning bins;
  bins.bins = static_cast<int>(options.value_bins);
  bins.min_decade = options.diff_min_decade;
  bins.max_decade = options.diff_max_decade;
  for (int k = bins.min_decade; k <= bins.max_decade + 1; ++k) bins.pow10.push_back(std::pow(10.0, k));
  const double lo = std::min(lo_a, lo_b), hi = std::max(hi_a, hi_b);
  if (lo <= hi) {
    bins.lo = lo;
    bins.scale = hi > lo ? bins.bins / (hi - lo) : 0.0;
    r.value_histogram.min = lo;
    r.value_histogram.max = hi;
  }

  // Pass 2: everything else, chunk partials combined in chunk order.
  std::vector<ChunkAcc> acc(chunks);
  parallel_for(chunks, threads, cancel, [&](uint64_t c) {
    const uint64_t begin = c * kCompareChunk, end = std::min(n, begin + kCompareChunk);
    compare_chunk(a.data.data(), b.data.data(), begin, end, layout, bins, acc[c]);
  });
  if (cancel && cancel->load()) return false;

  ChunkAcc total;
  total.hist_a.assign(options.value_bins, 0);
  total.hist_b.assign(options.value_bins, 0);
  const size_t decades = static_cast<size_t>(bins.max_decade - bins.min_decade + 1);
  total.diff_neg.assign(decades, 0);
  total.diff_pos.assign(decades, 0);
  std::vector<SegmentPartial> segs(layout.segments);
  for (const ChunkAcc& c : acc) {
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
    for (size_t i = 0; i < c.hist_a.size(); ++i) total.hist_a[i] += c.hist_a[i];
    for (size_t i = 0; i < c.hist_b.size(); ++i) total.hist_b[i] += c.hist_b[i];
    for (size_t i = 0; i < decades; ++i) {
      total.diff_neg[i] += c.diff_neg[i];
      total.diff_pos[i] += c.diff_pos[i];
    }
    total.diff_zero += c.diff_zero;
    for (const SegmentPartial& p : c.segments) {
      if (p.segment >= segs.size()) continue;
      SegmentPartial& s = segs[p.segment];
      s.d2 += p.d2;
      s.a2 += p.a2;
      s.nan = s.nan || p.nan;
      s.unpaired = s.unpaired || p.unpaired;
    }
  }

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
    r.max_diff_at.a = a.data[total.max_index];
    r.max_diff_at.b = b.data[total.max_index];
  }
  finish_side(r.a, total.a, lo_a, hi_a, options.headroom_factor);
  finish_side(r.b, total.b, lo_b, hi_b, options.headroom_factor);
  r.value_histogram.counts_a = std::move(total.hist_a);
  r.value_histogram.counts_b = std::move(total.hist_b);
  r.diff_histogram.min_decade = bins.min_decade;
  r.diff_histogram.max_decade = bins.max_decade;
  r.diff_histogram.negative = std::move(total.diff_neg);
  r.diff_histogram.positive = std::move(total.diff_pos);
  r.diff_histogram.zero = total.diff_zero;

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
    for (const auto& t : tok) r.per_token_relative_rms.push_back(relative_from(t.d2, t.a2, t.nan, t.unpaired));
    for (const auto& h : head) r.per_head_relative_rms.push_back(relative_from(h.d2, h.a2, h.nan, h.unpaired));
  }

  if (r.cell.stage == Stage::LmHead && layout.kind == Layout::Kind::Rows) {
    r.logits = compare_logits(a, b, options, threads, cancel);
    if (cancel && cancel->load()) return false;
  }
  return true;
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
  return {{"mean", num(s.mean)},       {"std", num(s.std)},
          {"min", num(s.min)},         {"max", num(s.max)},
          {"max_abs", num(s.max_abs)}, {"finite", s.finite},
          {"nan", s.nan},              {"pos_inf", s.pos_inf},
          {"neg_inf", s.neg_inf},      {"near_f16_limit", s.near_f16_limit},
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
        tensor.shape.size() == 2 && tensor.shape[1] % *heads == 0 && tensor.shape[1])
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
  CellComparison r;
  r.cell = cell;
  compare_cell_into(r, a, b, options, nullptr);
  return r;
}

TraceComparison compare_traces(const Trace& a, const Trace& b, const CompareOptions& options,
                               const CompareProgressFn& progress,
                               const std::atomic<bool>* cancel) {
  check_options(options);
  TraceComparison out;
  out.lane_a = a.lane;
  out.lane_b = b.lane;
  out.options = options;
  if (!out.options.head_dim) {
    out.options.head_dim = derive_head_dim(a);
    if (!out.options.head_dim) out.options.head_dim = derive_head_dim(b);
  }
  CompareProgress p;
  for (const auto& [cell, t] : a.cells()) {
    if (const Tensor* u = b.find(cell)) {
      ++p.cells_total;
      p.bytes_total += (t.data.size() + u->data.size()) * sizeof(float);
    } else {
      out.only_in_a.push_back(cell);
    }
  }
  for (const auto& [cell, t] : b.cells())
    if (!a.find(cell)) out.only_in_b.push_back(cell);

  for (const auto& [cell, t] : a.cells()) {
    const Tensor* u = b.find(cell);
    if (!u) continue;
    if (cancel && cancel->load()) {
      out.cancelled = true;
      break;
    }
    CellComparison r;
    r.cell = cell;
    if (!compare_cell_into(r, t, *u, out.options, cancel)) {
      out.cancelled = true;
      break;
    }
    out.cells.push_back(std::move(r));
    ++p.cells_done;
    p.bytes_done += (t.data.size() + u->data.size()) * sizeof(float);
    p.last = &out.cells.back().cell;
    if (progress) progress(p);
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
                      {"head", m.head},   {"a", num(m.a)},     {"b", num(m.b)}};
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
