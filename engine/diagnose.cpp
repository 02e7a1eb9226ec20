#include "engine/diagnose.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <queue>
#include <utility>

#include "engine/compare.h"
#include "formats/json_util.h"

namespace lockstep::engine {
namespace {

using json = nlohmann::json;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNegInfF = -std::numeric_limits<float>::infinity();

// Numbers in text: three significant digits; non-finite as in the JSON.
std::string num(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}
std::string pct(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f%%", fraction * 100.0);
  return buf;
}

json jnum(double v) { return formats::json_number(v); }
json jopt(const std::optional<double>& v) {
  return v ? jnum(*v) : json(nullptr);
}

// Whether a finite float survives a round trip through fp16 (normals: the low 13 mantissa bits
// are zero; subnormals: a multiple of 2^-24) or bf16 (the low 16 bits are zero).
bool f16_exact(float x) {
  const float ax = std::fabs(x);
  if (ax == 0.0f) return true;
  if (ax > 65504.0f) return false;
  if (ax >= 6.103515625e-05f) {  // 2^-14, the smallest fp16 normal
    uint32_t u;
    std::memcpy(&u, &ax, sizeof u);
    return (u & 0x1FFFu) == 0;
  }
  const double m = static_cast<double>(ax) * 16777216.0;  // 2^24
  return m == std::floor(m);
}
bool bf16_exact(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0xFFFFu) == 0;
}

// ‖b−a‖/‖a‖ from sums, as metrics.h defines it.
struct Sums {
  double d2 = 0, a2 = 0, b2 = 0, ab = 0;
  bool nan = false, unpaired = false;
  void add(const Sums& o) {
    d2 += o.d2, a2 += o.a2, b2 += o.b2, ab += o.ab;
    nan = nan || o.nan;
    unpaired = unpaired || o.unpaired;
  }
  double relative() const {
    if (nan) return std::numeric_limits<double>::quiet_NaN();
    if (unpaired) return kInf;
    if (d2 == 0) return 0;
    return a2 == 0 ? kInf : std::sqrt(d2 / a2);
  }
};


// How the flat data splits into rows: token rows of [tokens, width], (head, query) rows of
// [heads, tokens, ctx], or one flat row.
struct Rows {
  enum class Kind { Tokens, Attention, Flat } kind = Kind::Flat;
  uint64_t rows = 1, width = 0, tokens = 1, heads = 0;
  uint64_t head_dim = 0;  // per-head [tokens, width] cells
  uint64_t token_of(uint64_t r) const { return kind == Kind::Attention ? r % tokens : r; }
};

Rows rows_of(const Cell& cell, const std::vector<uint64_t>& shape, uint64_t n,
             const ModelConfig& config) {
  Rows g;
  if (shape.size() == 2 && shape[0] && shape[1]) {
    g.kind = Rows::Kind::Tokens;
    g.rows = g.tokens = shape[0];
    g.width = shape[1];
    if (per_head_rows(cell.stage) && config.head_dim && g.width % config.head_dim == 0)
      g.head_dim = config.head_dim;
  } else if (shape.size() == 3 && attention_matrix(cell.stage) && shape[0] && shape[1] &&
             shape[2]) {
    g.kind = Rows::Kind::Attention;
    g.heads = shape[0];
    g.tokens = shape[1];
    g.width = shape[2];
    g.rows = g.heads * g.tokens;
  } else {
    g.width = n;
  }
  return g;
}

std::string head_name(const Cell& cell, const ModelConfig& c, size_t h) {
  if ((cell.stage == Stage::QkvMatmul || cell.stage == Stage::QkvBias) && c.heads) {
    // Built by appending: `"Q" + std::to_string(h)` trips GCC 12's -Wrestrict false positive
    // (bug 105329) at -O3.
    std::string name(1, h < c.heads ? 'Q' : h < c.heads + c.kv_heads ? 'K' : 'V');
    name += std::to_string(h < c.heads                ? h
                           : h < c.heads + c.kv_heads ? h - c.heads
                                                      : h - c.heads - c.kv_heads);
    return name;
  }
  return std::to_string(h);
}

std::string head_list(const Cell& cell, const ModelConfig& c, const std::vector<size_t>& heads) {
  std::string s;
  for (size_t i = 0; i < heads.size() && i < 8; ++i)
    s += (i ? ", " : "") + head_name(cell, c, heads[i]);
  if (heads.size() > 8) s += ", ... (" + std::to_string(heads.size()) + ")";
  return s;
}

// Everything one pass over both tensors gives.
struct Scan {
  std::vector<Sums> row;         // per row
  std::vector<double> chan_sum;  // [width] Tokens only: sum over tokens of b - a
  std::vector<uint64_t> chan_n;
  std::vector<Sums> head_offset;  // [heads][head_dim] per-head Tokens cells
  uint64_t new_nonfinite = 0, mask_mismatch = 0, a_nonfinite = 0;
  uint64_t differing = 0, f16_a = 0, f16_b = 0, bf16_a = 0, bf16_b = 0;
  // Top-|b−a| positions as (|d|, signs differ), smallest on top.
  std::priority_queue<std::pair<double, bool>, std::vector<std::pair<double, bool>>, std::greater<>>
      top;
  // Zero tails: rows where b is exactly 0 from k on and a is not (k → rows), their prefix sums.
  std::map<uint64_t, uint64_t> tails;
  uint64_t tail_rows = 0, dead_rows = 0;
  Sums before_tail;
};

Scan scan(const Cell& cell, const Tensor& a, const Tensor& b, const Rows& g) {
  Scan s;
  s.row.resize(g.rows);
  const bool tokens = g.kind == Rows::Kind::Tokens;
  if (tokens) {
    s.chan_sum.assign(g.width, 0.0);
    s.chan_n.assign(g.width, 0);
  }
  if (g.head_dim) s.head_offset.resize(g.width);
  const bool attention = g.kind == Rows::Kind::Attention;
  for (uint64_t r = 0; r < g.rows; ++r) {
    const float* x = a.data.data() + r * g.width;
    const float* y = b.data.data() + r * g.width;
    Sums& rs = s.row[r];
    for (uint64_t i = 0; i < g.width; ++i) {
      const float av = x[i], bv = y[i];
      const bool fa = std::isfinite(av), fb = std::isfinite(bv);
      if (fa && fb) {
        const double d = double(bv) - double(av);
        const double d2 = d * d, a2 = double(av) * av;
        rs.d2 += d2, rs.a2 += a2, rs.b2 += double(bv) * bv, rs.ab += double(av) * bv;
        if (tokens) s.chan_sum[i] += d, ++s.chan_n[i];
        if (g.head_dim) s.head_offset[i].d2 += d2, s.head_offset[i].a2 += a2;
        if (av != bv) {
          ++s.differing;
          s.f16_a += f16_exact(av), s.f16_b += f16_exact(bv);
          s.bf16_a += bf16_exact(av), s.bf16_b += bf16_exact(bv);
          const bool flip = (av > 0 && bv < 0) || (av < 0 && bv > 0);
          if (s.top.size() < kTopK) {
            s.top.emplace(std::abs(d), flip);
          } else if (std::abs(d) > s.top.top().first) {
            s.top.pop();
            s.top.emplace(std::abs(d), flip);
          }
        }
        continue;
      }
      if (av == kNegInfF && bv == kNegInfF) continue;  // masked in both
      rs.unpaired = true;
      rs.nan = rs.nan || std::isnan(av) || std::isnan(bv);
      if (fa) {
        if (attention && bv == kNegInfF)
          ++s.mask_mismatch;
        else
          ++s.new_nonfinite;
      } else {
        ++s.a_nonfinite;
        if (attention && av == kNegInfF && fb) ++s.mask_mismatch;
      }
    }
    // Zero tail: b exactly 0 from k on, where a has finite non-zero values.
    uint64_t k = g.width;
    while (k > 0 && y[k - 1] == 0.0f) --k;
    uint64_t nonzero = 0;
    for (uint64_t i = k; i < g.width; ++i) nonzero += std::isfinite(x[i]) && x[i] != 0.0f;
    if (nonzero == 0) continue;
    if (k == 0 && cell.stage == Stage::AttnSoftmax) {
      ++s.dead_rows;
      continue;
    }
    ++s.tail_rows;
    ++s.tails[k];
    for (uint64_t i = 0; i < k; ++i) {
      if (std::isfinite(x[i]) && std::isfinite(y[i])) {
        const double d = double(y[i]) - double(x[i]);
        s.before_tail.d2 += d * d;
        s.before_tail.a2 += double(x[i]) * x[i];
      } else if (!(x[i] == kNegInfF && y[i] == kNegInfF)) {
        s.before_tail.unpaired = true;
        s.before_tail.nan = s.before_tail.nan || std::isnan(x[i]) || std::isnan(y[i]);
      }
    }
  }
  return s;
}

}  // namespace

Diagnosis diagnose(const Cell& cell, const Tensor& a, const Tensor& b, const ModelConfig& config,
                   uint32_t pos, double threshold) {
  Diagnosis d;
  d.threshold = threshold;
  const std::string name = cell_name(cell);
  CompareOptions options;
  options.threads = 1;
  if (config.head_dim) options.head_dim = config.head_dim;
  const CellComparison c = compare_cell(cell, a, b, options);
  if (c.shape_mismatch) {
    d.diverges = true;
    d.relative_rms = kInf;
    d.headline = "no diagnosis: " + c.error;
    d.evidence.push_back(c.error);
    return d;
  }
  d.cosine = c.cosine;
  d.relative_rms = c.relative_rms;
  d.paired = c.paired;
  d.per_head_relative_rms = c.per_head_relative_rms;
  d.near_f16_limit = c.a.near_f16_limit || c.b.near_f16_limit;

  const Rows g = rows_of(cell, a.shape, a.data.size(), config);
  Scan s = scan(cell, a, b, g);
  d.new_nonfinite = s.new_nonfinite;
  d.mask_mismatch = s.mask_mismatch;
  d.dead_softmax_rows = s.dead_rows;

  Sums all;
  for (const Sums& r : s.row) all.add(r);
  d.norm_ratio = all.a2 > 0 ? std::sqrt(all.b2 / all.a2) : (all.b2 > 0 ? kInf : 1.0);
  d.scale = all.a2 > 0 ? all.ab / all.a2 : 0.0;
  d.scale_share =
      all.d2 > 0 && all.a2 > 0 ? (all.ab - all.a2) * (all.ab - all.a2) / all.a2 / all.d2 : 0.0;
  if (s.differing) {
    const double n = static_cast<double>(s.differing);
    d.f16_exact_a = double(s.f16_a) / n, d.f16_exact_b = double(s.f16_b) / n;
    d.bf16_exact_a = double(s.bf16_a) / n, d.bf16_exact_b = double(s.bf16_b) / n;
  }
  d.zero_tail_rows = g.rows ? double(s.tail_rows) / double(g.rows) : 0.0;
  if (s.tail_rows) {
    d.zero_from =
        std::max_element(s.tails.begin(), s.tails.end(), [](const auto& x, const auto& y) {
          return x.second < y.second;
        })->first;
    d.before_zero_relative_rms = s.before_tail.relative();
  }
  // Per token: rows of [tokens, width]; every head's row of a query in [heads, tokens, ctx].
  const bool by_token = g.kind != Rows::Kind::Flat;
  if (by_token && g.tokens >= 2 && pos == 0) {
    Sums first, later;
    for (uint64_t r = 0; r < g.rows; ++r) (g.token_of(r) == 0 ? first : later).add(s.row[r]);
    d.first_position_relative_rms = first.relative();
    d.later_positions_relative_rms = later.relative();
  }
  std::vector<size_t> agree_heads, diverge_heads;
  for (size_t h = 0; h < c.per_head_relative_rms.size(); ++h)
    (c.per_head_relative_rms[h] <= threshold ? agree_heads : diverge_heads).push_back(h);
  d.heads_agreeing = static_cast<uint32_t>(agree_heads.size());
  d.heads_diverging = static_cast<uint32_t>(diverge_heads.size());
  // Periodic in channel: offsets within a head that agree in every head.
  bool periodic = false;
  std::vector<uint64_t> clean_offsets;
  if (g.head_dim) {
    const uint64_t hd = g.head_dim, heads = g.width / hd;
    bool consistent = true;
    for (uint64_t o = 0; o < hd; ++o) {
      Sums total;
      uint64_t dirty_heads = 0;
      for (uint64_t h = 0; h < heads; ++h) {
        Sums cell_sums = s.head_offset[h * hd + o];
        total.add(cell_sums);
        dirty_heads += !(cell_sums.relative() <= threshold);
      }
      if (total.relative() <= threshold)
        clean_offsets.push_back(o);
      else if (2 * dirty_heads < heads)
        consistent = false;
    }
    d.offsets_agreeing = static_cast<uint32_t>(clean_offsets.size());
    periodic = heads >= 2 && agree_heads.empty() && !clean_offsets.empty() &&
               clean_offsets.size() < hd && consistent;
  }
  if (g.kind == Rows::Kind::Tokens && g.tokens >= 2 && all.d2 > 0) {
    double explained = 0;
    for (uint64_t i = 0; i < g.width; ++i)
      if (s.chan_n[i]) explained += s.chan_sum[i] * s.chan_sum[i] / double(s.chan_n[i]);
    d.offset_share = explained / all.d2;
  }
  if (g.kind == Rows::Kind::Tokens && all.d2 > 0) {
    double explained = 0, lo = kInf, hi = 0;
    for (const Sums& r : s.row) {
      if (r.a2 <= 0) continue;
      explained += (r.ab - r.a2) * (r.ab - r.a2) / r.a2;
      const double ratio = std::sqrt(r.b2 / r.a2);
      lo = std::min(lo, ratio), hi = std::max(hi, ratio);
    }
    d.token_scale_share = explained / all.d2;
    if (hi > 0) d.token_norm_ratio_min = lo, d.token_norm_ratio_max = hi;
  }
  if (all.d2 > 0 && d.paired >= 256) {
    // Bins over a's finite range among paired positions; chance explains ~bins/N.
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (size_t i = 0; i < a.data.size(); ++i)
      if (std::isfinite(a.data[i]) && std::isfinite(b.data[i]))
        lo = std::min(lo, a.data[i]), hi = std::max(hi, a.data[i]);
    const uint64_t bins = std::clamp<uint64_t>(d.paired / 64, 8, 256);
    std::vector<double> sum(bins, 0.0), d2(bins, 0.0);
    std::vector<uint64_t> count(bins, 0);
    const double width = hi > lo ? (double(hi) - double(lo)) / double(bins) : 1.0;
    for (size_t i = 0; i < a.data.size(); ++i) {
      if (!std::isfinite(a.data[i]) || !std::isfinite(b.data[i])) continue;
      const uint64_t k =
          std::min<uint64_t>(bins - 1, static_cast<uint64_t>((double(a.data[i]) - lo) / width));
      const double diff = double(b.data[i]) - double(a.data[i]);
      sum[k] += diff, d2[k] += diff * diff, ++count[k];
    }
    double explained = 0, total = 0;
    for (uint64_t k = 0; k < bins; ++k) {
      total += d2[k];
      if (count[k]) explained += sum[k] * sum[k] / double(count[k]);
    }
    if (total > 0) d.value_share = explained / total;
    d.value_bins = static_cast<uint32_t>(bins);
  }
  d.top_k = static_cast<uint32_t>(s.top.size());
  uint32_t flips = 0;
  for (; !s.top.empty(); s.top.pop()) flips += s.top.top().second;
  d.sign_flip_top = d.top_k ? double(flips) / d.top_k : 0.0;

  // ---- the rules, in the header's order ----
  const auto label = [](BugClass k) { return std::string(bug_class_label(k)); };
  auto& ev = d.evidence;
  ev.push_back(name + ": relative RMS " + num(d.relative_rms) + " (threshold " + num(threshold) +
               "), cosine " + num(d.cosine) + ", norm ratio " + num(d.norm_ratio) + " over " +
               std::to_string(d.paired) + " paired values");
  auto decide = [&](BugClass k, std::string why) {
    if (!d.bug) {
      d.bug = k;
      d.headline = label(k) + ": " + why;
    }
  };

  // 1. Non-finite.
  if (s.new_nonfinite || s.dead_rows) {
    std::string why;
    if (s.new_nonfinite)
      why = std::to_string(s.new_nonfinite) +
            " NaN/Inf in b where a is finite (b: " + std::to_string(c.b.nan) + " NaN, " +
            std::to_string(c.b.pos_inf) + " +inf)";
    if (s.dead_rows)
      why += std::string(why.empty() ? "" : "; ") + std::to_string(s.dead_rows) +
             " softmax rows all zero in b (the sum overflowed)";
    ev.push_back("non-finite: " + why + " -> overflow");
    decide(BugClass::Overflow, why);
  } else {
    ev.push_back("non-finite: none new in b" +
                 (s.a_nonfinite ? " (a itself has " + std::to_string(s.a_nonfinite) +
                                      " non-finite values b does not match)"
                                : std::string()));
  }
  if (s.mask_mismatch)
    ev.push_back("masks: " + std::to_string(s.mask_mismatch) +
                 " positions masked (-inf) in one side only");

  d.diverges = d.bug.has_value() || !(d.relative_rms <= threshold);
  if (!d.diverges) {
    d.headline =
        "no divergence: relative RMS " + num(d.relative_rms) + " <= threshold " + num(threshold);
    return d;
  }

  // 3. Reduced precision.
  {
    std::string line = "reduced precision: ";
    if (s.differing < kPrecisionMinValues) {
      line += "only " + std::to_string(s.differing) + " values differ, too few to tell";
    } else {
      line += pct(*d.f16_exact_b) + " of b's " + std::to_string(s.differing) +
              " differing values are exact in fp16 (a: " + pct(*d.f16_exact_a) + "), " +
              pct(*d.bf16_exact_b) + " in bf16 (a: " + pct(*d.bf16_exact_a) + ")";
      if (d.near_f16_limit)
        line += "; a side is near the f16 limit (max |a| " + num(c.a.max_abs) + ", |b| " +
                num(c.b.max_abs) + ")";
      const bool f16 = *d.f16_exact_b >= kPrecisionExactB && *d.f16_exact_a <= kPrecisionExactA;
      const bool bf16 = *d.bf16_exact_b >= kPrecisionExactB && *d.bf16_exact_a <= kPrecisionExactA;
      const bool f16_fits = d.relative_rms <= kF16MaxRms || d.near_f16_limit;
      const bool bf16_fits = d.relative_rms <= kBf16MaxRms;
      // bf16 first: bf16 values within fp16's range are exact in fp16 too.
      if (bf16 && bf16_fits) {
        line += " -> overflow (bf16 rounding)";
        decide(BugClass::Overflow, "b is rounded to bf16 (" + pct(*d.bf16_exact_b) +
                                       " of its differing values are bf16-exact, " +
                                       pct(*d.bf16_exact_a) + " of a's), relative RMS " +
                                       num(d.relative_rms));
      } else if (f16 && f16_fits) {
        line += " -> overflow (fp16 rounding)";
        decide(BugClass::Overflow, "b is rounded to fp16 (" + pct(*d.f16_exact_b) +
                                       " of its differing values are fp16-exact, " +
                                       pct(*d.f16_exact_a) + " of a's), relative RMS " +
                                       num(d.relative_rms));
      } else if (f16 || bf16) {
        line +=
            ", but a relative RMS of " + num(d.relative_rms) + " is more than rounding explains";
      }
    }
    ev.push_back(line);
  }

  // 4. Partial write.
  {
    std::string line = "zeros past an index: ";
    if (!s.tail_rows) {
      line += "no row of b ends in zeros where a has values";
    } else {
      line += "in " + std::to_string(s.tail_rows) + " of " + std::to_string(g.rows) +
              " rows b is 0 from an index on where a is not (most often from " +
              std::to_string(*d.zero_from) + " of " + std::to_string(g.width) +
              "); before it relative RMS " + num(*d.before_zero_relative_rms);
      if (d.zero_tail_rows >= kZeroTailRows && *d.before_zero_relative_rms <= threshold) {
        line += " -> partial write";
        decide(BugClass::PartialWrite,
               "b is zero from index " + std::to_string(*d.zero_from) + " of " +
                   std::to_string(g.width) + " on in " + std::to_string(s.tail_rows) + " of " +
                   std::to_string(g.rows) + " rows where a is not, and agrees before it (" +
                   num(*d.before_zero_relative_rms) + ")");
      }
    }
    ev.push_back(line);
  }

  // 5. Position.
  {
    std::string line = "position 0 vs later: ";
    if (!by_token) {
      line += "the tensor has no token rows";
    } else if (pos != 0) {
      line += "row 0 is position " + std::to_string(pos) + ", not 0: cannot tell";
    } else if (g.tokens < 2) {
      line += "one token: cannot tell";
    } else {
      const double first = *d.first_position_relative_rms, later = *d.later_positions_relative_rms;
      line += "position 0 " + std::string(first <= threshold ? "agrees" : "diverges") + " (" +
              num(first) + "), later positions " + (later <= threshold ? "agree" : "diverge") +
              " (" + num(later) + ")";
      if (cell.stage == Stage::AttnSoftmax) {
        line += "; but a causal softmax's row 0 is a single 1 in any lane: proves nothing";
      } else if (first <= threshold && !(later <= threshold)) {
        line += " -> position";
        decide(BugClass::Position, "position 0 agrees (" + num(first) +
                                       ") but later positions do not (" + num(later) + ")");
      }
    }
    ev.push_back(line);
  }

  // 6. Bias.
  {
    std::string line = "per-channel offset: ";
    if (g.kind != Rows::Kind::Tokens) {
      line += "not a [tokens, width] tensor";
    } else if (g.tokens < 2) {
      line += "one token: an offset cannot be told from any other error";
    } else if (!d.offset_share) {
      line += "b - a is zero";
    } else {
      line += "the mean of b - a per channel explains " + pct(*d.offset_share) + " of its energy";
      if (*d.offset_share >= kOffsetShare) {
        line += " -> bias";
        decide(BugClass::Bias, "one offset per channel, the same for all " +
                                   std::to_string(g.tokens) + " tokens, explains " +
                                   pct(*d.offset_share) + " of b - a (relative RMS " +
                                   num(d.relative_rms) + ")");
      }
    }
    ev.push_back(line);
  }

  // 7. Head mapping.
  {
    std::string line = "heads: ";
    if (c.per_head_relative_rms.empty()) {
      line += "not a per-head cell";
    } else {
      double agree_max = 0, diverge_min = kInf;
      for (size_t h : agree_heads) agree_max = std::max(agree_max, c.per_head_relative_rms[h]);
      for (size_t h : diverge_heads)
        diverge_min = std::min(diverge_min, c.per_head_relative_rms[h]);
      line += std::to_string(agree_heads.size()) + " of " +
              std::to_string(c.per_head_relative_rms.size()) + " agree";
      if (!agree_heads.empty())
        line += " (" + head_list(cell, config, agree_heads) + ": <= " + num(agree_max) + ")";
      if (!diverge_heads.empty())
        line += ", " + head_list(cell, config, diverge_heads) + " diverge (>= " + num(diverge_min) +
                ")";
      // In a fused [Q|K|V] cell, wrong heads that are whole projections are a per-projection
      // error, not a mapping between heads.
      bool whole_projections = false;
      const bool fused = cell.stage == Stage::QkvMatmul || cell.stage == Stage::QkvBias;
      if (fused && c.per_head_relative_rms.size() == config.heads + 2 * config.kv_heads) {
        whole_projections = true;
        const uint64_t starts[] = {0, config.heads, config.heads + config.kv_heads,
                                   config.heads + 2 * config.kv_heads};
        for (int p = 0; p < 3; ++p) {
          bool any_agree = false, any_diverge = false;
          for (uint64_t h = starts[p]; h < starts[p + 1]; ++h)
            (c.per_head_relative_rms[h] <= threshold ? any_agree : any_diverge) = true;
          whole_projections = whole_projections && !(any_agree && any_diverge);
        }
      }
      if (!agree_heads.empty() && !diverge_heads.empty()) {
        if (whole_projections) {
          line += "; the diverging heads are whole projections (Q, K or V): not a head mapping";
        } else {
          line += " -> head mapping";
          decide(BugClass::HeadMapping, "heads " + head_list(cell, config, agree_heads) +
                                            " agree (<= " + num(agree_max) + ") while heads " +
                                            head_list(cell, config, diverge_heads) +
                                            " diverge (>= " + num(diverge_min) + ")");
        }
      }
      if (d.offsets_agreeing) {
        line += "; " + std::to_string(*d.offsets_agreeing) + " of " + std::to_string(g.head_dim) +
                " channel offsets agree in every head";
        if (periodic) {
          line += ": periodic in channel -> head mapping";
          decide(BugClass::HeadMapping,
                 "the error repeats every head_dim (" + std::to_string(g.head_dim) +
                     ") channels: " + std::to_string(*d.offsets_agreeing) + " of " +
                     std::to_string(g.head_dim) + " offsets agree in every head, the others " +
                     "diverge across heads");
        }
      }
    }
    ev.push_back(line);
  }

  // 8. Scale.
  {
    // The share a random error gets by chance is ~1/N for one scale, tokens/N for one per
    // token; the bar is kScaleShare or ten times that, whichever is higher.
    const double n = static_cast<double>(std::max<uint64_t>(d.paired, 1));
    const double global_bar = std::max(kScaleShare, 10.0 / n);
    const double token_bar = std::max(kScaleShare, 10.0 * static_cast<double>(g.tokens) / n);
    const bool global_ok = d.scale_share >= global_bar;
    const bool token_ok = d.token_scale_share && *d.token_scale_share >= token_bar;
    const double value_bar = std::max(kValueShare, 10.0 * double(d.value_bins) / n);
    const bool value_ok = d.value_share && *d.value_share >= value_bar;
    std::string line = "scale: b ~ " + num(d.scale) + "*a explains " + pct(d.scale_share) +
                       " of b - a (bar " + pct(global_bar) + ")";
    if (d.token_scale_share)
      line += ", one scale per token " + pct(*d.token_scale_share) + " (bar " + pct(token_bar) +
              "; token norm ratios " + num(d.token_norm_ratio_min.value_or(0)) + ".." +
              num(d.token_norm_ratio_max.value_or(0)) + ")";
    if (d.value_share)
      line += ", its mean per value of a " + pct(*d.value_share) + " (" +
              std::to_string(d.value_bins) + " bins, bar " + pct(value_bar) + ")";
    if (std::abs(d.cosine) >= kHighCosine && (global_ok || token_ok || value_ok)) {
      line += " -> scale";
      std::string why;
      if (global_ok)
        why = ", b ~ " + num(d.scale) + "*a explains " + pct(d.scale_share) + " of b - a";
      else if (token_ok)
        why = ", one scale per token (" + num(*d.token_norm_ratio_min) + ".." +
              num(*d.token_norm_ratio_max) + ") explains " + pct(*d.token_scale_share) +
              " of b - a";
      else
        why = ", b - a is a function of the value (its mean per value of a explains " +
              pct(*d.value_share) + "): an elementwise op computed differently";
      decide(BugClass::Scale, "cosine " + num(d.cosine) + " at norm ratio " + num(d.norm_ratio) + why);
    } else if (std::abs(d.cosine) < kHighCosine) {
      line += "; |cosine| " + num(std::abs(d.cosine)) + " is not high";
    }
    ev.push_back(line);
  }

  // 9. Layout.
  {
    std::string line = "layout: cosine " + num(d.cosine) + ", norm ratio " + num(d.norm_ratio) +
                       ", " + std::to_string(flips) + " of the " + std::to_string(d.top_k) +
                       " largest differences flip sign";
    const bool similar = d.norm_ratio >= kLayoutMinRatio && d.norm_ratio <= kLayoutMaxRatio;
    if (d.cosine <= kLowCosine && similar && d.top_k && d.sign_flip_top >= kSignFlipShare) {
      line += " -> layout";
      decide(BugClass::Layout, "cosine " + num(d.cosine) + " at norm ratio " + num(d.norm_ratio) +
                                   ", " + std::to_string(flips) + " of the " +
                                   std::to_string(d.top_k) + " largest differences flip sign");
    }
    ev.push_back(line);
  }

  if (!d.bug)
    d.headline = "no bug class matched: relative RMS " + num(d.relative_rms) + ", cosine " +
                 num(d.cosine) + ", norm ratio " + num(d.norm_ratio);
  return d;
}

json to_json(const Diagnosis& d) {
  json j;
  j["bug"] = d.bug ? json(std::string(bug_class_name(*d.bug))) : json(nullptr);
  j["label"] = d.bug ? json(std::string(bug_class_label(*d.bug))) : json(nullptr);
  j["diverges"] = d.diverges;
  j["headline"] = d.headline;
  j["evidence"] = d.evidence;
  json heads = json::array();
  for (double v : d.per_head_relative_rms) heads.push_back(jnum(v));
  j["figures"] = {
      {"cosine", jnum(d.cosine)},
      {"norm_ratio", jnum(d.norm_ratio)},
      {"relative_rms", jnum(d.relative_rms)},
      {"threshold", jnum(d.threshold)},
      {"paired", d.paired},
      {"new_nonfinite", d.new_nonfinite},
      {"mask_mismatch", d.mask_mismatch},
      {"dead_softmax_rows", d.dead_softmax_rows},
      {"near_f16_limit", d.near_f16_limit},
      {"f16_exact_a", jopt(d.f16_exact_a)},
      {"f16_exact_b", jopt(d.f16_exact_b)},
      {"bf16_exact_a", jopt(d.bf16_exact_a)},
      {"bf16_exact_b", jopt(d.bf16_exact_b)},
      {"zero_from", d.zero_from ? json(*d.zero_from) : json(nullptr)},
      {"zero_tail_rows", jnum(d.zero_tail_rows)},
      {"before_zero_relative_rms", jopt(d.before_zero_relative_rms)},
      {"first_position_relative_rms", jopt(d.first_position_relative_rms)},
      {"later_positions_relative_rms", jopt(d.later_positions_relative_rms)},
      {"per_head_relative_rms", heads},
      {"heads_agreeing", d.heads_agreeing},
      {"heads_diverging", d.heads_diverging},
      {"offsets_agreeing", d.offsets_agreeing ? json(*d.offsets_agreeing) : json(nullptr)},
      {"offset_share", jopt(d.offset_share)},
      {"scale", jnum(d.scale)},
      {"scale_share", jnum(d.scale_share)},
      {"token_scale_share", jopt(d.token_scale_share)},
      {"token_norm_ratio_min", jopt(d.token_norm_ratio_min)},
      {"token_norm_ratio_max", jopt(d.token_norm_ratio_max)},
      {"value_share", jopt(d.value_share)},
      {"value_bins", d.value_bins},
      {"sign_flip_top", jnum(d.sign_flip_top)},
      {"top_k", d.top_k},
  };
  return j;
}

}  // namespace lockstep::engine
