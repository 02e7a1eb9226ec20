#pragma once
// Bisection: where lane B first parts from lane A, and whether that cell introduced the error or
// inherited it (DESIGN.md "Comparison and bisection").
//
// A cell diverges when B holds NaN/Inf where A is finite, or when its relative RMS against A
// exceeds max(abs_threshold, floor_factor × noise floor). The noise floor of a cell is what
// precision and quantization alone explain: the relative RMS of the `cpu` lane against the `ref`
// oracle on the same tokens. The first divergence is the earliest diverging cell in plan order.
//
// Replay feeds A's captured inputs of a node into B's implementation of that node: a local
// error above the threshold means the node introduced it; at the floor, the error was carried in
// from earlier, and the walk goes back through earlier cells to the earliest one that
// introduces error. Replay treats the captured tokens as a prefill from position 0 (see
// Lane::replay), so it needs traces of a forward at position 0: a decode run's steps stitched
// together (stitch_steps, bisect_run.h's decode mode) are one.

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "engine/lane.h"
#include "engine/trace.h"

namespace lockstep::engine {

struct DivergenceSettings {
  double abs_threshold = 1e-3;  // a relative RMS at or below this never diverges
  double floor_factor = 10.0;   // k: nor does one at or below k × the cell's noise floor
  // Walking back from an inherited divergence, a cell introduces error when its replay's local
  // error exceeds max(replay_min, floor_factor × floor): the cells before the first divergence
  // are below abs_threshold by definition, so the bar there is the floor alone.
  double replay_min = 1e-6;
};

// Per cell: relative RMS of a noisy-but-correct lane (cpu) against the oracle (ref).
using NoiseFloor = std::map<Cell, double>;
NoiseFloor noise_floor(const Trace& cpu, const Trace& ref);
// Raises each cell of `floor` to at least `other`'s (a run-to-run spread, say); cells only
// `other` has are added.
void raise_floor(NoiseFloor& floor, const NoiseFloor& other);

struct CellDivergence {
  Cell cell;
  double rel_rms = 0.0;         // B against A (+inf for a shape or mask mismatch)
  double floor = 0.0;           // the cell's noise floor (0 when unknown)
  double threshold = 0.0;       // max(abs_threshold, floor_factor × floor)
  uint64_t new_nonfinite = 0;   // elements NaN/Inf in B but finite in A
  bool diverges = false;
};

// Every cell both traces hold, in plan order, with the first diverging one.
struct DivergenceScan {
  std::vector<CellDivergence> cells;
  std::optional<size_t> first;  // index into cells
  std::vector<Cell> only_in_a, only_in_b;
};
DivergenceScan scan_divergence(const Trace& a, const Trace& b, const NoiseFloor& floor,
                               const DivergenceSettings& settings);

struct ReplayVerdict {
  Cell cell;
  double local = 0.0;    // B's node on A's inputs, against A's output
  double carried = 0.0;  // B's forward against A's (the cell's divergence)
  double threshold = 0.0;
  bool introduced = false;  // local > threshold (or new NaN/Inf in the replayed output)
};

// Lane B's output of `cell`'s node run on lane A's captured inputs (what replay_cell measures).
// Inputs that no capture holds are rebuilt as replay_cell says.
Tensor replay_output(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                     const Cell& cell);

// Replays the node of `cell` in lane B on lane A's captured inputs. Inputs that no capture
// holds (an unstaged node such as Qwen3's Q/K norm) are rebuilt by replaying their node in lane A
// on its own captured inputs. Both lanes must have `model` loaded; `a` must hold every cell the
// node reads (a full capture does).
// `threshold` decides `introduced`.
ReplayVerdict replay_cell(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                          const CellDivergence& divergence, double threshold);

struct Localization {
  std::vector<ReplayVerdict> replays;  // the first divergence, then the cells walked back
  std::optional<Cell> introduced_at;   // the earliest cell that introduces error
};

// Replays the first divergence; if it is inherited, walks back through earlier cells in plan
// order to the earliest one whose replay introduces error.
Localization localize(Lane& lane_a, Lane& lane_b, const Model& model, const Trace& a,
                      const DivergenceScan& scan, const DivergenceSettings& settings);

}  // namespace lockstep::engine
