#pragma once
// A bisection's result for people and for CI: the stage × layer table of one metric (first
// divergence marked), a summary (first divergence, replay verdict, diagnosis), stable JSON and
// readable Markdown. Pure functions of a BisectResult.
//
// JSON schema (to_json), format_version 1. Non-finite numbers are the strings "nan", "inf",
// "-inf" (engine/json_util.h); a missing value is null. Cells are in plan order.
//   { "format_version": 1, "tool": "lockstep", "tool_version": str,
//     "kind": "bisect" | "diff",
//     "model": str|null, "fault": str|null,          // the planted fault's spec, when any
//     "fault_lane": str|null,                        // the lane it was planted in
//     "source_a": str|null, "source_b": str|null,    // diff: the dump directories
//     "lane_a": str, "lane_b": str, "mode": "prefill" | "decode", "tokens": [int...],
//     "settings": {"abs_threshold": num, "floor_factor": num, "replay_min": num,
//                  "floor": "cpu-ref" | "none", "spread": bool},
//     "floor_note": str,
//     "cancelled": bool,
//     "diverged": bool,
//     "first_divergence": null | CellRow,
//     "verdict": "introduced" | "inherited" | "not replayed" | null,  // null: no divergence
//     "introduced_at": str|null,           // the earliest cell whose replay introduces error
//     "replays": [{"cell": str, "local": num, "carried": num, "threshold": num,
//                  "introduced": bool}...],          // the first divergence, then walked back
//     "replay_note": str|null,
//     "requested_replays": [same as replays...],     // cells replayed on request
//     "diagnosis": null | {"cell": str, "basis": "local" | "carried", ...Diagnosis},
//                                                    // engine/diagnose.h's to_json keys
//     "cells": [CellRow...],
//     "only_in_a": [str...], "only_in_b": [str...],
//     "first_divergence_detail": null | CellComparison }  // engine/compare.h's to_json
//   CellRow:
//   { "cell": "attn_norm@3", "stage": str, "layer": int|null,
//     "relative_rms": num, "floor": num, "threshold": num, "diverges": bool,
//     "new_nonfinite": int, "cosine": num|null, "max_abs_diff": num|null, "sqnr_db": num|null,
//     "local": num|null }                            // local: the heatmap's replay, if run

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "engine/bisect_run.h"

namespace lockstep::engine {

// What the result does not know about itself.
struct ReportContext {
  std::string kind = "bisect";  // "bisect" or "diff"
  std::string tool_version;
  std::string model;                // path, when a model was used
  std::string fault;                // spec text, when a fault was planted
  std::string fault_lane;           // the lane it was planted in
  std::string source_a, source_b;   // diff: the directories
};

// The metric a table (or the GUI's map) shows per cell.
enum class MapMetric : uint8_t { RelativeRms, Cosine, MaxAbsDiff, SqnrDb, Local, NonFinite };
std::string_view map_metric_name(MapMetric m);  // "relative_rms", "cosine", "max_abs_diff",
                                                // "sqnr_db", "local", "nonfinite"
std::string_view map_metric_label(MapMetric m);  // "relative RMS", ...
std::optional<MapMetric> parse_map_metric(std::string_view name);
std::string map_metric_names();  // comma-separated, for help text
// The metric's value for a cell (NaN when the result has none: local without heatmaps).
double map_value(const BisectResult& r, const CellDivergence& d, MapMetric m);

// Rows: stages in plan order (those any cell has); columns: layers; whole-model stages in the
// first column. "*" marks the first divergence, "!" every other diverging cell, "—" an absent
// cell. Plain text, one line per stage, with a title and a legend.
std::string format_table(const BisectResult& r, MapMetric metric);
// The verdict in a few lines: first divergence (or none), replay, introduced-at, diagnosis
// with its evidence.
std::string format_summary(const BisectResult& r, const ReportContext& context);

nlohmann::json to_json(const BisectResult& r, const ReportContext& context);
std::string to_markdown(const BisectResult& r, const ReportContext& context);

}  // namespace lockstep::engine
