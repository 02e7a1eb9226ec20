#pragma once
// The cpu lane's matrix kernels: y = x · Wᵀ with W kept in its stored GGML type.
//
// Activations are prepared once per matmul input, in the format the weight type is dotted
// with (llama.cpp's scheme): f32 for the float types, 8-bit blocks of 32 (Q8_0-like) for the
// legacy quants and of 256 (Q8_K-like, with 16-element sums) for the K-quants, so that the
// inner loops are integer dot products. One PreparedActs serves every matrix reading the same
// input (Q, K and V; FFN gate and up).
//
// Each ISA (scalar, AVX2+FMA, AVX-512 with VNNI) has its own translation unit compiled with its
// own flags; best_isa() picks at run time what this CPU runs.
//
// Determinism: y[t, r] depends only on row r of W and row t of x, never on how many tokens,
// which row range, or how many threads a call covers. So a prefill and token-by-token decode
// give bit-identical matmul outputs, and so do runs with different thread counts.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "formats/ggml_type.h"

namespace lockstep::engine::cpu {

enum class Isa : uint8_t { Scalar, Avx2, Avx512 };
std::string_view isa_name(Isa isa);  // "scalar", "avx2", "avx512"
// Every ISA this CPU and this build can run, Scalar first.
std::vector<Isa> supported_isas();
// The best of supported_isas(), lowered by the environment variable LOCKSTEP_CPU_ISA
// (scalar|avx2|avx512) when set; a value this CPU cannot run, or an unknown one, is an error
// (lockstep::Error naming the variable and the supported values).
Isa best_isa();

// The format activations take for a weight type.
enum class ActFormat : uint8_t { F32, Q8_32, Q8_256 };
// Throws lockstep::Error for a weight type without a kernel.
ActFormat act_format(formats::GgmlType weight_type);

// `rows` activation rows of `cols` elements in one format; the storage is reused by later
// prepare() calls of equal or smaller size.
struct PreparedActs {
  ActFormat format = ActFormat::F32;
  uint64_t rows = 0;
  uint64_t cols = 0;
  size_t row_bytes = 0;         // bytes per prepared row
  std::vector<std::byte> data;  // rows × row_bytes
  const std::byte* row(uint64_t t) const { return data.data() + t * row_bytes; }
};

// Converts x ([rows, cols] f32, row stride ldx elements) into `format`. cols must be a multiple
// of the format's block (32 or 256). Non-finite input is kept as f32 or gives non-finite output;
// it never crashes.
void prepare_acts(Isa isa, ActFormat format, const float* x, uint64_t rows, uint64_t cols,
                  uint64_t ldx, PreparedActs& out);

// A weight matrix in its stored type: `rows` output features, each a row of `cols` input
// features taking row_bytes bytes (ggml_bytes(type, cols), or more for a strided view, e.g. one
// head's keys inside an f32 KV cache).
struct WeightMatrix {
  formats::GgmlType type = formats::GgmlType::F32;
  const std::byte* data = nullptr;
  uint64_t rows = 0;
  uint64_t cols = 0;
  size_t row_bytes = 0;
};

// y[t·ldy + r] = Σ_i W[r, i] · x[t, i] for every token t < x.rows and row r in [r0, r1).
// x must have been prepared in act_format(w.type) with x.cols == w.cols; ldy >= r1 when
// x.rows > 1. Only those outputs are written, so threads may share y with disjoint ranges.
// Throws lockstep::Error for a mismatch, or for an ISA this CPU cannot run.
void matmul(Isa isa, const WeightMatrix& w, const PreparedActs& x, uint64_t r0, uint64_t r1,
            float* y, uint64_t ldy);

// Σ a[i]·b[i] in f32 (vectorised for the ISA; summation order fixed per ISA and n).
float dot_f32(Isa isa, const float* a, const float* b, uint64_t n);
// y[i] += a · x[i]
void axpy_f32(Isa isa, float a, const float* x, float* y, uint64_t n);

}  // namespace lockstep::engine::cpu
