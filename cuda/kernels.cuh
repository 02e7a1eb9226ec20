#pragma once
// The lane's kernels, one launcher per op; each file k_<family>.cu defines its launchers.
// Buffers are device pointers, activations f32 and row-major ([tokens, width] unless noted);
// every launcher enqueues on `stream` and checks the launch (LOCKSTEP_CUDA_CHECK). Internal to
// cuda/: the public headers (cuda_lane.h, ops.h) hold no CUDA types.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "formats/ggml_type.h"

namespace lockstep::cuda::kernels {

// Whether the matmul, embedding and dequantize kernels handle weights stored as `type`.
bool has_weight_kernels(formats::GgmlType type);
// Bytes of one row of `cols` elements stored as `type` (cols a whole number of blocks).
uint64_t row_bytes(formats::GgmlType type, uint64_t cols);

// k_dequant.cu
// y[r, i] = element i of row r of w ([rows, cols] in `type`), bit for bit ggml's to_float.
void dequantize(formats::GgmlType type, const void* w, uint64_t rows, uint64_t cols, float* y,
                cudaStream_t stream);
// y[t, i] = scale · w[ids[t], i]  (y: [tokens, cols]); ids already checked against rows.
void embed(formats::GgmlType type, const void* w, uint64_t cols, const int32_t* ids,
           uint64_t tokens, float scale, float* y, cudaStream_t stream);

// k_matmul.cu
// y[t, col0 + r] = Σ_i x[t, i] · w[r, i] for r < rows (x: [tokens, cols], y rows of y_stride).
// One warp per weight row, chunks of 32 elements per lane, f32 accumulation; each output's
// summation order is fixed, so it does not depend on the token count (prefill = decode).
void matmul(formats::GgmlType type, const void* w, uint64_t rows, uint64_t cols, const float* x,
            uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0, cudaStream_t stream);
// One token through up to kMaxMatvecParts matrices of one type and width (say Q, K and V) in one
// launch, each output finished where asked as bias_scale finishes it: part p's rows follow part
// p − 1's in y, and with `epilogue` y[r] = (s + bias[r]) · scale (without the bias where a part
// has none), else y[r] = s, s being matmul's sum, bit for bit. False (nothing launched) when no
// decode kernel takes rows this long: the caller then uses matmul and bias_scale.
constexpr size_t kMaxMatvecParts = 3;
struct MatvecPart {
  const void* w = nullptr;  // [rows, cols]
  uint64_t rows = 0;
  const float* bias = nullptr;  // [rows] or null
};
bool matvec(formats::GgmlType type, std::span<const MatvecPart> parts, uint64_t cols,
            const float* x, float* y, bool epilogue, float scale, cudaStream_t stream);
// Once per process, before any stream capture: raises the shared-memory limit of the kernels
// that stage a long x (a call that may not happen while a graph is being captured) and reads
// the multiprocessor count. matmul calls it too; the lanes call it when they start.
void prepare_matmul();

// k_norm.cu
// RMSNorm of `rows` segments of `width` values each, in place or not: segment s is group
// g = s / per_group, member m = s % per_group at x + g·group_stride + offset + m·width (the
// same place in y). Plain rows: per_group 1, group_stride width, offset 0.
void rms_norm(const float* x, float* y, const float* w, uint64_t rows, uint64_t width,
              uint64_t per_group, uint64_t group_stride, uint64_t offset, float eps,
              cudaStream_t stream);
// (x − mean) / sqrt(var + eps) · w + b over rows of `width`.
void layer_norm(const float* x, float* y, const float* w, const float* b, uint64_t rows,
                uint64_t width, float eps, cudaStream_t stream);

// k_attention.cu
// y[t, j] for j < width: the head-structured slice x[t, offset .. offset + width) of rows of
// x_stride, each head of head_dim rotated on its first rope_dims dimensions at position
// pos + t; inv_freq: [rope_dims / 2] radians per position (double). NeoX pairs (i, i + rot/2),
// normal pairs (2i, 2i + 1). dev_pos (a device scalar, may be null): read pos there instead, so
// that one captured CUDA graph serves every decode position.
void rope(const float* x, uint64_t x_stride, uint64_t offset, float* y, uint64_t tokens,
          uint64_t width, uint64_t head_dim, uint64_t rope_dims, bool neox, const double* inv_freq,
          uint64_t pos, cudaStream_t stream, const uint32_t* dev_pos = nullptr);
// The KV-cache append: cache[pos + t, i] = src[t · src_stride + i] for i < width (cache rows of
// width). dev_pos as rope's.
void kv_append(const float* src, uint64_t src_stride, uint64_t tokens, uint64_t width,
               float* cache, uint64_t pos, cudaStream_t stream, const uint32_t* dev_pos = nullptr);
struct AttnShape {
  uint64_t heads = 0, kv_heads = 0, head_dim = 0;
  uint64_t tokens = 0;  // queries, at positions pos..pos+tokens-1
  uint64_t ctx = 0;     // keys 0..ctx-1
  uint64_t pos = 0;
  uint64_t window = 0;  // sliding window; 0: none
  // Planted faults (engine/faults.h): gqa_head_map maps query head h to KV head h % kv_heads;
  // kv_cache_off_by_one reads key/value j from slot j - 1 (slot 0 for j = 0).
  bool interleaved_heads = false;
  bool lagged_slots = false;
  // Device {pos, ctx} (graph mode) or null. When set, pos and ctx are read there and `ctx` above
  // only bounds the launch (the cache capacity): threads past the real ctx exit early. Outputs
  // keep the layout [heads, tokens, ctx] of the real ctx.
  const uint32_t* step = nullptr;
};
// y[h, t, j] = scale · q[t, h]·k[j, h / ratio] ([heads, tokens, ctx]); -inf where j is in the
// future of pos + t or outside the window. q: [tokens, heads·head_dim]; k rows of k_stride.
void attn_scores(const float* q, const float* k, uint64_t k_stride, const AttnShape& s,
                 float scale, float* y, cudaStream_t stream);
// Row-wise softmax over rows of `width`; -inf gives exactly 0. dev_width (device scalar, may be
// null): the row width read there instead (graph mode: the context length).
void softmax(const float* x, float* y, uint64_t rows, uint64_t width, cudaStream_t stream,
             const uint32_t* dev_width = nullptr);
// softmax_no_max (a planted fault): exp(s) without the row max, each term, the running sum and
// the quotient rounded to fp16 in element order, as engine/cpu_lane.cpp does.
void softmax_fp16_no_max(const float* x, float* y, uint64_t rows, uint64_t width,
                         cudaStream_t stream, const uint32_t* dev_width = nullptr);
// y[t, h·head_dim + d] = Σ_j p[h, t, j] · v[j, (h / ratio)·head_dim + d]; v rows of v_stride.
void attn_weighted_sum(const float* p, const float* v, uint64_t v_stride, const AttnShape& s,
                       float* y, cudaStream_t stream);

// k_elementwise.cu
// y[t, col0 + i] = (y[t, col0 + i] + b[i]) · scale for i < seg (b may be null).
void bias_scale(float* y, uint64_t tokens, uint64_t width, uint64_t col0, uint64_t seg,
                const float* b, float scale, cudaStream_t stream);
// y[t, c] = (x[t, c] + b(c)) · scale for c < width, b(c) from the segment holding column c
// (segments one after another covering the width; a null bias adds nothing), rounded as
// bias_scale rounds: a QKV node's three biases in one launch. x and y may be the same.
constexpr size_t kMaxBiasSegments = 3;
struct BiasSegment {
  const float* b = nullptr;  // [width] or null
  uint64_t width = 0;
};
void add_biases(const float* x, float* y, uint64_t tokens, uint64_t width,
                std::span<const BiasSegment> segments, float scale, cudaStream_t stream);
void add_scaled(const float* a, const float* b, float scale, float* y, uint64_t n,
                cudaStream_t stream);  // a + scale · b
void silu(const float* x, float* y, uint64_t n, cudaStream_t stream);
void gelu(const float* x, float* y, uint64_t n, cudaStream_t stream);  // tanh approximation
void mul(const float* a, const float* b, float* y, uint64_t n, cudaStream_t stream);

}  // namespace lockstep::cuda::kernels
