#pragma once
// Diagnose: maps the symptom of one diverging cell to a bug class (faults.h's BugClass), with
// the evidence shown (DESIGN.md "Comparison and bisection"). Side a is the reference (lane A's
// tensor of the cell); side b is lane B's, ideally B's node replayed on A's inputs (its local
// error), else B's own capture. Shapes: [tokens, width], or [heads, tokens, ctx] for
// attn_scores / attn_softmax (masked scores are -inf in both sides and are skipped). `pos` is
// the position of row 0; `threshold` is the relative RMS above which the cell, or a part of it
// (a row, a head, a channel offset), counts as diverged, and at or below which it agrees (the
// bisector passes max(1e-3, k × noise floor)).
//
// Every figure is computed, then the rules are tried in this order; the first that matches
// names the class. The order puts exact, bit-level tests before statistical ones, and a rule
// before any rule its symptom would also trip:
//   1. Overflow, non-finite: b holds NaN/Inf where a is finite (a -inf in one side only of an
//      attention matrix is a mask mismatch, not an overflow), or an attn_softmax row of b is all
//      zero where a's is not (the fp16 sum overflowed: p = e / inf = 0). Every later rule reads
//      finite values only, so this goes first.
//   2. (b does not diverge: relative RMS <= threshold and rule 1 silent → no class.)
//   3. Overflow, reduced precision: at least kPrecisionExactB of b's values that differ from a
//      are exactly representable in fp16 (or bf16) while at most kPrecisionExactA of a's are, and
//      either the relative RMS is one rounding can explain (<= kF16MaxRms / kBf16MaxRms) or a side
//      is near the f16 limit (compare.h). An exact-bit test that f32 arithmetic does not pass by
//      chance, so it may go early (bf16 is tried first: bf16 values in fp16's range are exact in
//      fp16 too); it must precede Position, because a rounded softmax keeps
//      row 0 (a single probability of 1) exact. Alone, near_f16_limit is only evidence: large
//      values are legitimate in an f32 lane.
//   4. PartialWrite: in at least kZeroTailRows of the rows, b is exactly 0 from some index k on
//      where a has non-zero values, and before k those rows agree (<= threshold). Exact zeros; it
//      precedes HeadMapping (a zeroed upper half of a per-head cell zeroes whole heads) and
//      Scale (the zeros shrink the norm).
//   5. Position: pos == 0, >= 2 tokens, row 0 (for [heads, tokens, ctx]: the query-0 rows of
//      all heads, together) agrees and the later rows, together, diverge. Not at attn_softmax,
//      whose causal row 0 is a single probability of 1 in any lane and proves nothing. It precedes
//      HeadMapping because RoPE pairing errors are periodic in channel.
//   6. Bias: [tokens, width] with >= 2 tokens, and the per-channel mean of b − a (the same offset
//      for every token) explains at least kOffsetShare of its energy. With T tokens a random
//      error gets ~1/T from the means, so 0.99 is not reached by chance. It precedes HeadMapping
//      (a bias missing on Q only leaves the K and V heads right) and Scale (a small offset reads
//      as high cosine with a norm ratio != 1).
//   7. HeadMapping: a per-head cell (compare.h's list, with config.head_dim) where some heads
//      agree and others diverge, unless in a fused [Q|K|V] cell the diverging heads are exactly
//      whole projections (a per-projection error, left to the rules below); or, with every head
//      diverging, the error periodic in channel with period head_dim: some offsets within a
//      head agree in every head while each other offset diverges in at least half of them.
//      It precedes Scale and Layout, whose overall figures blend right and wrong heads.
//   8. Scale: |cosine| >= kHighCosine and one least-squares factor (b ≈ s·a), or one per token
//      ([tokens, width]; rms_eps_wrong scales each token differently), explains a share of the
//      energy of b − a of at least kScaleShare and at least ten times what a random error gets
//      by chance (1/N for one factor over N values, tokens/N for one per token): the norm ratio
//      is off from 1 by a good part of the error, not by the e²/2 that noise of size e adds.
//      kScaleShare is low (0.1) because not every scale error is a pure factor: GELU in place of
//      SiLU is a sharper gate, b − a only ~20% along a (cosine 0.99, norm ratio 1.09), and on
//      stories260K's ffn_silu only 5%. So Scale also holds when b − a is a function of a's value:
//      its mean per bin of a explains at least kValueShare of its energy (and ten times the
//      bins/N chance gives), as an elementwise op computed differently (another activation)
//      makes it; on stories260K GELU-for-SiLU reaches that where the factors do not. A factor
//      of −1 (a dropped negation, cosine −1) is a scale too, so Scale precedes Layout.
//   9. Layout: cosine <= kLowCosine (near zero or negative) at a norm ratio within
//      [kLayoutMinRatio, kLayoutMaxRatio], with at least kSignFlipShare of the kTopK largest
//      |b − a| at positions where a and b have opposite signs. A scale error keeps signs; two
//      uncorrelated tensors of similar size differ most where their signs differ.
//  10. Otherwise no class; the evidence still gives every figure.
//
// JSON schema (to_json). Non-finite numbers are the strings "inf", "-inf", "nan"; a figure that
// does not apply to the cell (no per-head layout, one token, ...) is null.
//   { "bug": "layout"|"scale"|"bias"|"position"|"head_mapping"|"overflow"|"partial_write"|null,
//     "label": str|null,                 // bug_class_label
//     "diverges": bool, "headline": str, "evidence": [str...],
//     "figures": {
//       "cosine": num, "norm_ratio": num, "relative_rms": num, "threshold": num,
//       "paired": int, "new_nonfinite": int, "mask_mismatch": int, "dead_softmax_rows": int,
//       "near_f16_limit": bool,
//       "f16_exact_a": num|null, "f16_exact_b": num|null,     // fractions of differing values
//       "bf16_exact_a": num|null, "bf16_exact_b": num|null,
//       "zero_from": int|null, "zero_tail_rows": num, "before_zero_relative_rms": num|null,
//       "first_position_relative_rms": num|null, "later_positions_relative_rms": num|null,
//       "per_head_relative_rms": [num...], "heads_agreeing": int, "heads_diverging": int,
//       "offsets_agreeing": int|null,    // channel offsets within a head agreeing in every head
//       "offset_share": num|null,        // share of ‖b−a‖² explained by per-channel means
//       "scale": num, "scale_share": num, "token_scale_share": num|null,
//       "token_norm_ratio_min": num|null, "token_norm_ratio_max": num|null,
//       "value_share": num|null, "value_bins": int,
//       "sign_flip_top": num, "top_k": int } }

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/faults.h"
#include "engine/model_config.h"
#include "engine/trace.h"

namespace lockstep::engine {

inline constexpr double kPrecisionExactB = 0.99;     // of b's differing values, fp16/bf16-exact
inline constexpr double kPrecisionExactA = 0.5;      // at most this many of a's
inline constexpr uint64_t kPrecisionMinValues = 16;  // differing values the test needs
// ~20 unit roundoffs (fp16 2^-11, bf16 2^-8): more error than rounding explains.
inline constexpr double kF16MaxRms = 1e-2;
inline constexpr double kBf16MaxRms = 8e-2;
inline constexpr double kZeroTailRows = 0.5;
inline constexpr double kOffsetShare = 0.99;
inline constexpr double kHighCosine = 0.9;
inline constexpr double kScaleShare = 0.1;
// The error as a function of a's value must explain at least this much (noise: ~bins/N).
inline constexpr double kValueShare = 0.5;
inline constexpr double kLowCosine = 0.3;
inline constexpr double kLayoutMinRatio = 0.5, kLayoutMaxRatio = 2.0;
inline constexpr double kSignFlipShare = 0.5;
inline constexpr uint32_t kTopK = 20;

struct Diagnosis {
  std::optional<BugClass> bug;  // none: no rule matched (or the cell does not diverge)
  bool diverges = false;
  std::string headline;               // one line: the class and the figures that decided it
  std::vector<std::string> evidence;  // one line per rule: its figures, and whether it matched

  // The figures the rules read (see the JSON schema above).
  double cosine = 0, norm_ratio = 0, relative_rms = 0, threshold = 0;
  uint64_t paired = 0;
  uint64_t new_nonfinite = 0;      // NaN/±Inf in b where a is finite (not a -inf mask)
  uint64_t mask_mismatch = 0;      // attention matrices: -inf in one side only
  uint64_t dead_softmax_rows = 0;  // attn_softmax rows all zero in b but not in a
  bool near_f16_limit = false;     // either side
  std::optional<double> f16_exact_a, f16_exact_b, bf16_exact_a, bf16_exact_b;
  std::optional<uint64_t> zero_from;  // the most common index b is zero from
  double zero_tail_rows = 0;          // fraction of rows b is zero from some index on (a is not)
  std::optional<double> before_zero_relative_rms;
  std::optional<double> first_position_relative_rms, later_positions_relative_rms;
  std::vector<double> per_head_relative_rms;  // compare.h's per-head breakdown
  uint32_t heads_agreeing = 0, heads_diverging = 0;
  std::optional<uint32_t> offsets_agreeing;
  std::optional<double> offset_share;
  double scale = 0;                         // least-squares s in b ≈ s·a
  double scale_share = 0;                   // share of ‖b−a‖² along a
  std::optional<double> token_scale_share;  // the same with one s per token
  std::optional<double> token_norm_ratio_min, token_norm_ratio_max;
  // The share of ‖b−a‖² that the mean of b−a per bin of a's value explains (value_bins equal
  // bins over a's finite range): an elementwise function computed differently (another
  // activation) makes the error a function of the value; noise does not.
  std::optional<double> value_share;
  uint32_t value_bins = 0;
  double sign_flip_top = 0;  // fraction of the top_k largest |b−a| where sign(a) != sign(b)
  uint32_t top_k = 0;
};

// `a`: lane A's tensor of `cell` (the reference); `b`: lane B's tensor of the same cell. A shape
// mismatch yields no class and a headline saying so.
Diagnosis diagnose(const Cell& cell, const Tensor& a, const Tensor& b, const ModelConfig& config,
                   uint32_t pos, double threshold);

nlohmann::json to_json(const Diagnosis& d);

}  // namespace lockstep::engine
