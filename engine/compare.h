#pragma once
// Per-cell metrics between two traces: side a is the reference (the oracle, or lane A), side
// b the lane under test. A streaming, multi-threaded comparison (two reads of each cell, see
// "Passes and threads"); every result is a plain struct the GUI can hold as an immutable
// snapshot, and to_json gives the stable report.
//
// Positions. Masked attention scores are -inf in every lane (metrics.h): a position -inf in
// both sides is "masked" and skipped; a position finite in both is "paired". Anything else
// (NaN in either side, ±inf in one side only, +inf in both) is "unpaired". relative_rms
// follows metrics.h exactly: NaN if any NaN, else +inf if any unpaired position, else
// ‖b−a‖/‖a‖ over paired positions (0 when equal, +inf when ‖a‖ = 0 and b differs). Every
// other difference metric (cosine, rms_diff, max |diff|, sign agreement, SQNR, diff
// histogram) is over paired positions, and `paired`/`unpaired` say how many there were.
// Per-side statistics are over that side's finite values. All sums are in double; max |diff|
// is exact (float difference taken in double) and names the lowest flat index among ties.
//
// Passes and threads. A cell is cut into fixed chunks of kCompareChunk elements whatever the
// thread count. The value histogram needs the cell's value range before binning, so each cell
// has two passes: first-pass chunks (from memory: everything but the value histogram, and the
// finite range of each side) and value chunks (the value histogram, from cache). A fixed
// log-scale value histogram would save the second read but could not give N linear bins over
// the actual range, which is what a value histogram is read for (outliers at the ends).
// A comparison runs one team of std::threads (the caller is one of them) over every cell's
// first-pass items, value items and lm_head row items. A cell's value and row items are handed
// out right after its first-pass items, behind the next cell's first few: its data is still in
// cache, and a value item seldom waits (futex, no spinning) for its cell's first pass, all of
// it handed out before. The thread that finishes a cell's last item combines its chunk
// partials in chunk order. So 1 or N threads give bit-identical results, and there is no
// barrier per cell (a per-cell OpenMP region cost more than the work on a loaded 2-core
// machine).
//
// Kernels. Blocks of 512 elements go through an AVX-512 kernel where the CPU has one, else an
// AVX2+FMA one, else a portable one, as cpu::best_isa() in cpu_kernels.h says
// (LOCKSTEP_CPU_ISA=avx2 or scalar forces a lower one); all give the same bits. Block sums run
// in 8 fixed double lanes (element i in lane i % 8, the lanes then added by a fixed tree), a
// product is rounded before its add unless it is exact (float × float in double), and the
// ranges follow the min/max instructions' rule between −0 and +0. lm_head's KL sums likewise,
// with an exponential of the comparison's own (a few ulp), not libm's.
//
// lm_head (logits [tokens, vocab]) also gets, per token row: KL(softmax(a) ‖ softmax(b)),
// top-1 agreement and top-k overlap (top-k: larger first, NaN as -inf, ties to the lower
// index); that reads lm_head once more, row by row.
//
// Index decoding of max |diff| (and per-head breakdown):
//   [tokens, width]         token = i / width, channel = i % width; head = channel / head_dim
//                           for per-head cells (qkv_matmul, qkv_bias: fused [Q|K|V] heads
//                           numbered Q 0..H-1, then K, then V; q_post_rope, k_post_rope,
//                           attention) when head_dim is known, else -1.
//   [heads, tokens, ctx]    head, token, channel = key position (attn_scores, attn_softmax).
//   anything else           flat: token = head = -1, channel = i.
// head_dim comes from CompareOptions, else (compare_traces) from an attention cell's head
// count and the width of q_post_rope or attention in the same trace.
//
// JSON schema (to_json), format_version 1. Non-finite numbers are the strings "inf", "-inf",
// "nan" (JSON has no such numbers); a missing value is null.
//   TraceComparison:
//   { "format_version": 1, "lane_a": str, "lane_b": str, "cancelled": bool,
//     "options": {"head_dim": int|null, "topk": int, "value_bins": int,
//                 "diff_min_decade": int, "diff_max_decade": int, "headroom_factor": num},
//     "cells": [CellComparison...],                       // plan order
//     "only_in_a": [cell name...], "only_in_b": [cell name...] }
//   CellComparison:
//   { "cell": "attn_norm@3", "stage": "attn_norm", "layer": 3|null,
//     "shape_a": [..], "shape_b": [..],
//     "shape_mismatch": bool,  // true: only the keys up to "elements", and "error"
//     "elements": int,         // with a mismatch: the larger side's count
//     "error": str,            // present only with shape_mismatch
//     "paired": int, "masked": int, "unpaired": int,
//     "cosine": num, "relative_rms": num, "rms_diff": num, "sqnr_db": num,
//     "sign_agreement": num,             // fraction of paired positions, sign(a) == sign(b)
//     "max_abs_diff": num,                 // over paired positions; 0 when none
//     "max_diff_at": {"index": int, "token": int, "channel": int, "head": int, "a": num, "b": num},
//                                          // -1 for what the shape does not have (index -1:
//                                          // nothing paired)
//     "a": Side, "b": Side,
//     "per_token_relative_rms": [num...],  // one per token; [] for flat cells
//     "per_head_relative_rms": [num...],   // one per head; [] unless a per-head cell
//     "value_histogram": {"min": num, "max": num, "counts_a": [int...], "counts_b": [int...]},
//     "diff_histogram": {"min_decade": int, "max_decade": int,
//                        "negative": [int...], "zero": int, "positive": [int...]},
//     "logits": {"tokens": int, "k": int, "kl": [num...], "mean_kl": num,   // lm_head only
//                "top1_agreement": num, "topk_overlap": num} }
//   Side:
//   { "mean": num, "std": num, "min": num, "max": num, "max_abs": num, "finite": int,
//     "nan": int, "pos_inf": int, "neg_inf": int,
//     "near_f16_limit": bool, "near_bf16_limit": bool }
// value_histogram: N bins of equal width over [min, max] of the finite values of both sides;
// bin i is [min + i·w, min + (i+1)·w), the last one closed, up to float rounding at the edges
// (the bin is x·scale − min·scale in float); counts_x sums to x's finite count.
// diff_histogram: over paired positions, b − a (in float). zero: exact zeros; positive[j] /
// negative[j]: |diff| in [10^(min_decade+j), 10^(min_decade+j+1)) (bounds: the floats nearest
// those powers), the first bucket reaching down to 0 and the last up to +inf; the three sum to
// "paired".
// Side: over that side's finite values (all 0 when it has none; -inf masks count as neg_inf);
// std is the population standard deviation; near_*_limit: max_abs >= limit / headroom_factor,
// whether or not an Inf is present already. cosine is 1 when both sides are all zero
// over the paired positions, 0 when only one is; sign_agreement is 1 when nothing is paired.

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/trace.h"

namespace lockstep::engine {

inline constexpr uint64_t kCompareChunk = uint64_t{1} << 16;  // elements per work item
inline constexpr double kF16Max = 65504.0;
inline constexpr double kBf16Max = 3.3895313892515355e38;

struct CompareOptions {
  unsigned threads = 0;              // 0: one per hardware thread
  std::optional<uint64_t> head_dim;  // channels per head in [tokens, width] per-head cells
  uint32_t topk = 5;                 // lm_head top-k overlap
  uint32_t value_bins = 64;          // value histogram bins (>= 1)
  int diff_min_decade = -12;         // diff histogram: decades [min, max] within [-50, 50]
  int diff_max_decade = 6;
  // A side is flagged when max |x| · headroom_factor reaches the f16 (65504) or bf16 limit.
  double headroom_factor = 4.0;
};

struct SideStats {
  double mean = 0, std = 0, min = 0, max = 0, max_abs = 0;  // over finite values
  uint64_t finite = 0, nan = 0, pos_inf = 0, neg_inf = 0;
  bool near_f16_limit = false, near_bf16_limit = false;
};

struct MaxDiffLocation {
  int64_t index = -1;  // flat; -1 when nothing is paired
  int64_t token = -1, channel = -1, head = -1;
  float a = 0, b = 0;
};

struct ValueHistogram {
  double min = 0, max = 0;  // joint finite range of both sides
  std::vector<uint64_t> counts_a, counts_b;
};

struct DiffHistogram {
  int min_decade = 0, max_decade = 0;
  std::vector<uint64_t> negative, positive;  // max_decade − min_decade + 1 each
  uint64_t zero = 0;
};

struct LogitComparison {
  uint64_t tokens = 0;
  uint32_t k = 0;
  std::vector<double> kl;  // per token: KL(softmax(a) ‖ softmax(b)) in nats
  double mean_kl = 0;
  double top1_agreement = 0;  // fraction of tokens whose argmax agrees
  double topk_overlap = 0;    // mean over tokens of |topk(a) ∩ topk(b)| / k
};

struct CellComparison {
  Cell cell;
  std::vector<uint64_t> shape_a, shape_b;
  bool shape_mismatch = false;
  std::string error;  // why, with shape_mismatch
  uint64_t elements = 0, paired = 0, masked = 0, unpaired = 0;
  double cosine = 0, relative_rms = 0, rms_diff = 0, sqnr_db = 0, sign_agreement = 0;
  double max_abs_diff = 0;
  MaxDiffLocation max_diff_at;
  SideStats a, b;
  std::vector<double> per_token_relative_rms;
  std::vector<double> per_head_relative_rms;
  ValueHistogram value_histogram;
  DiffHistogram diff_histogram;
  std::optional<LogitComparison> logits;  // lm_head only
};

struct TraceComparison {
  std::string lane_a, lane_b;
  CompareOptions options;             // as used (head_dim resolved when derived)
  std::vector<CellComparison> cells;  // cells in both traces, plan order
  std::vector<Cell> only_in_a, only_in_b;
  bool cancelled = false;  // cells holds those finished before the cancel
  const CellComparison* find(const Cell& c) const;
};

struct CompareProgress {
  size_t cells_done = 0, cells_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;  // both sides
  const Cell* last = nullptr;                // the cell just finished; valid during the call
};
using CompareProgressFn = std::function<void(const CompareProgress&)>;

// Flat index `index` of a cell of `stage` and `shape` decoded to (token, channel, head) by the
// rules above ("Index decoding"); a and b are left 0.
MaxDiffLocation locate_index(Stage stage, const std::vector<uint64_t>& shape, uint64_t index,
                             std::optional<uint64_t> head_dim);

// Compares one cell; a shape mismatch is reported in the result, never thrown. Throws
// lockstep::Error for bad options (value_bins 0, min_decade > max_decade, topk 0).
CellComparison compare_cell(const Cell& cell, const Tensor& a, const Tensor& b,
                            const CompareOptions& options = {});

// Every cell of both traces. `progress` is called on the calling thread as cells finish, in
// plan order. `cancel`, checked before each work item, stops the comparison early: cells then
// holds the finished prefix and cancelled is true (unless every item was already under way).
// Throws lockstep::Error for bad options.
TraceComparison compare_traces(const Trace& a, const Trace& b, const CompareOptions& options = {},
                               const CompareProgressFn& progress = {},
                               const std::atomic<bool>* cancel = nullptr);

nlohmann::json to_json(const CellComparison& c);
nlohmann::json to_json(const TraceComparison& c);

}  // namespace lockstep::engine
