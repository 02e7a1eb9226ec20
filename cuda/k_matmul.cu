// Dequantizing matrix products, y = x · Wᵀ with W in its stored GGML type.
//
// Every output has one fixed arithmetic, whatever the token count and the kernel shape: a row
// is read in chunks of 32 elements; lane p of a warp takes chunks p, p + 32, p + 64, ... and
// adds each chunk's partial to its running sum in order (__fadd_rn); the 32 running sums are
// reduced with xor shuffles (16, 8, 4, 2, 1). A chunk's partial is:
// - Q4_K and Q6_K (quant::kInt8): x is first quantized per 256 values exactly as the cpu lane
//   does (its Q8_256, llama.cpp's Q8_K: d = 1/iscale, q = clamp(nearest_int(iscale·x)), the
//   value of largest magnitude at −127; NaN or ±inf in the block gives d = NaN), and the
//   partial is (d·xd)·(sc·Σ q·qx) − (dmin·xd)·(mn·Σ qx) for Q4_K and (d·xd)·(sc0·Σ q·qx +
//   sc1·Σ q·qx) over the chunk's two halves for Q6_K, with the integer sums taken by __dp4a
//   (exact in any order) and each float product and difference rounded once (_rn intrinsics).
//   So these outputs equal the cpu lane's up to the f32 combination order, and leave the
//   float64 oracle by the activations' 8-bit rounding (≈0.6% relative), as the cpu lane does.
// - the other factored types (Q4_0, Q8_0, Q5_K; quant::kFactored), scale · Σ q·x − min · Σ x
//   in f32 with the sums taken element by element in order;
// - every other type, Σ w·x over the decoded weights in order.
// So a prefill equals the same tokens decoded one by one, bit for bit, and every kernel shape
// below gives the same bits; for the f32 types a one-hot x reads a weight back exactly as the
// codec decodes it (the tests use that; for Q4_K/Q6_K they check a CPU twin of the int8
// arithmetic bit for bit instead).
//
// How it is fast within that order:
// - x is staged in shared memory: f32 chunks kChunkStride floats apart so that the 16-byte
//   reads of a quarter-warp hit distinct banks, or for the int8 types 32 bytes of int8 a chunk,
//   kQStride bytes apart, with each 256-block's d and each chunk's Σ q. Each block quantizes
//   its own copy (one warp a 256-block, all its loads issued before the reductions); in a slab
//   of 32 chunks lane p owns chunk 32·slab + p.
// - f32 path: a warp works on R rows at once: each lane turns half a chunk (16 elements) of
//   each of its R rows into floats (16-byte or 2-byte loads; integers made floats without the
//   conversion unit), then one shared 4-float read of x feeds 4·R multiply-adds per token.
//   Int8 path: a chunk of a row is 8 __dp4a against two 16-byte shared reads of x.
// - Decode (one token): a grid about as large as the GPU holds; each block stages the whole of
//   x once, then warp g of the grid's G streams rows g, g + G, ... (R at a time) with no
//   further synchronisation, four chunks of loads in flight per lane (two for the f32 path's
//   Q6_K); 16 warps a block for a long x (its f32 staging over 32 KiB) or a tall matrix, else
//   4. One launch may take up to three matrices of one type over the same x (a QKV node's),
//   finishing each output with its bias and scale (kernels::matvec). Q4_K and Q6_K have their
//   own inner steps (q4k_decode_step, q6k_decode_step), the chunk-to-lane order above kept:
//   decode is bound by instruction issue (ncu: about one instruction every two cycles per
//   scheduler with DRAM half busy), so their addresses are lane constants plus immediates,
//   and Q4_K's 32 shared bytes are read half a lane and swapped by shuffles. Rows too long to
//   stage take the slab kernel, TT = 1, R = 1 (f32: over 45k columns; int8: over 125k).
// - Prefill: the slab kernel, TT = 8 tokens by R = 4 rows a warp; weights are streamed once
//   per token tile, x staged (int8: quantized) once per slab and block.
// What limits it at decode (H100, 7B-shaped Q4_K_M): the Q4_K gate/up matvecs stream at ~1.6
// TB/s and Q6_K's ffn_down at ~1.45 of the ~3 TB/s the H100 copies at, with 16 warps an SM
// (108-117 registers a thread) and about one warp in four eligible: more warps with fewer
// loads in flight each (two blocks an SM, two chunks ahead) measured 1-29% slower, and an L2
// prefetch of the next rows slower too. Per launch, staging (and quantizing) x before the
// first row costs a few µs, which dominates the matrices of 512 rows.

#include <algorithm>
#include <cfloat>
#include <span>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/quant.cuh"
#include "formats/error.h"
#include "formats/ggml_type.h"

namespace lockstep::cuda::kernels {
namespace {

using formats::GgmlType;

constexpr int kWarps = 4;         // per block
constexpr int kSlab = 32;         // chunks per staged slab: one per lane
constexpr int kChunkStride = 36;  // floats between staged chunks (32 + 4 of padding)

// Σ x over a staged chunk of 32, in element order (the mins' factor).
__device__ __forceinline__ float chunk_sum(const float* xs) {
  float s = 0.0f;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const float4 v = *reinterpret_cast<const float4*>(xs + 4 * q);
    s = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(s, v.x), v.y), v.z), v.w);
  }
  return s;
}

// ---- Int8 activations (Q4_K, Q6_K; quant::kInt8): x staged as Q8_256 blocks.

constexpr int kQStride = 48;  // bytes between staged int8 chunks (32 + 16 of padding)

// One warp loads a Q8_256 block's 256 floats at x, eight a lane (zeros when !valid).
__device__ __forceinline__ void load_block(const float* __restrict__ x, bool valid, float (&v)[8]) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (valid && (reinterpret_cast<uintptr_t>(x) % 16) == 0) {
    const float4 a = reinterpret_cast<const float4*>(x)[2 * lane];
    const float4 b = reinterpret_cast<const float4*>(x)[2 * lane + 1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = valid ? x[8 * lane + j] : 0.0f;
  }
}

// One warp quantizes a loaded block as the cpu lane's quantize_row_q8_256 does (quant.cuh,
// kInt8) and, when `store`, writes its 8 chunks of int8 to q, kQStride bytes apart, its d to *d
// and each chunk's Σ q to bsum[0..8). Callers load several blocks before quantizing any, so
// the loads' latencies overlap.
__device__ __forceinline__ void quantize_loaded(const float (&v)[8], bool store, uint8_t* q,
                                                float* d, int* bsum) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  // The largest magnitude, the first of equals (the cpu loop's strict >); NaN never wins.
  float amax = 0.0f, max = 0.0f;
  int index = 256;
  bool finite = true;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float a = fabsf(v[j]);
    finite = finite && a <= FLT_MAX;
    if (a > amax) amax = a, max = v[j], index = 8 * lane + j;
  }
  finite = __all_sync(0xFFFFFFFFu, finite);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float oa = __shfl_xor_sync(0xFFFFFFFFu, amax, o);
    const float om = __shfl_xor_sync(0xFFFFFFFFu, max, o);
    const int oi = __shfl_xor_sync(0xFFFFFFFFu, index, o);
    if (oa > amax || (oa == amax && oi < index)) amax = oa, max = om, index = oi;
  }
  const bool zero = amax == 0.0f || !finite;
  const float iscale = zero ? 0.0f : __fdiv_rn(-127.0f, max);
  uint32_t words[2] = {0u, 0u};
  int sum = 0;
  if (!zero) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // nearest_int: round to nearest even through the adder, as the cpu lane does.
      const float f = __fadd_rn(__fmul_rn(iscale, v[j]), 12582912.0f);
      const int n = (__float_as_int(f) & 0x007FFFFF) - 0x00400000;
      const int qj = n < -127 ? -127 : (n > 127 ? 127 : n);
      sum += qj;
      words[j / 4] |= (static_cast<uint32_t>(qj) & 0xFFu) << (8 * (j % 4));
    }
  }
  sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
  sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
  if (!store) return;
  *reinterpret_cast<uint2*>(q + (lane / 4) * kQStride + 8 * (lane % 4)) =
      make_uint2(words[0], words[1]);
  if (lane % 4 == 0) bsum[lane / 4] = sum;
  if (lane == 0) *d = zero ? (finite ? 0.0f : __int_as_float(0x7FC00000)) : __fdiv_rn(1.0f, iscale);
}

// Adds chunk c's partial (quant.cuh, kInt8) for R rows × TT tokens to acc. xq: the chunk's
// staged int8 of token 0 (token t at xq + t·xq_stride), xd: its block's d, bsum: its Σ q (token
// t at xd + t·xd_stride, bsum + t·bsum_stride).
template <GgmlType T, int R, int TT>
__device__ __forceinline__ void chunk_rows_int8(const quant::Chunk<T> (&src)[R], uint64_t row0,
                                                uint64_t rows, const uint8_t* xq, int xq_stride,
                                                const float* xd, int xd_stride, const int* bsum,
                                                int bsum_stride, float (&acc)[R][TT]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (row0 + r >= rows) continue;
    uint32_t wq[8];
    src[r].int_words(wq);
    const quant::IntScales f = src[r].int_scales();
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      const uint4 a = *reinterpret_cast<const uint4*>(xq + t * xq_stride);
      const uint4 b = *reinterpret_cast<const uint4*>(xq + t * xq_stride + 16);
      int s0 = 0, s1 = 0;
      s0 = __dp4a(static_cast<int>(wq[0]), static_cast<int>(a.x), s0);
      s0 = __dp4a(static_cast<int>(wq[1]), static_cast<int>(a.y), s0);
      s0 = __dp4a(static_cast<int>(wq[2]), static_cast<int>(a.z), s0);
      s0 = __dp4a(static_cast<int>(wq[3]), static_cast<int>(a.w), s0);
      s1 = __dp4a(static_cast<int>(wq[4]), static_cast<int>(b.x), s1);
      s1 = __dp4a(static_cast<int>(wq[5]), static_cast<int>(b.y), s1);
      s1 = __dp4a(static_cast<int>(wq[6]), static_cast<int>(b.z), s1);
      s1 = __dp4a(static_cast<int>(wq[7]), static_cast<int>(b.w), s1);
      const float dx = xd[t * xd_stride];
      float part;
      if constexpr (T == GgmlType::Q4_K) {
        part = __fsub_rn(
            __fmul_rn(__fmul_rn(f.d, dx), __int2float_rn(f.s0 * (s0 + s1))),
            __fmul_rn(__fmul_rn(f.dmin, dx), __int2float_rn(f.s1 * bsum[t * bsum_stride])));
      } else {
        part = __fmul_rn(__fmul_rn(f.d, dx), __int2float_rn(f.s0 * s0 + f.s1 * s1));
      }
      acc[r][t] = __fadd_rn(acc[r][t], part);
    }
  }
}

// Bytes of shared memory the int8 staging of one token's `chunks` chunks takes.
__host__ __device__ constexpr size_t int8_staged_bytes(uint64_t chunks) {
  return chunks * (kQStride + sizeof(int)) + (chunks + 7) / 8 * sizeof(float);
}

// Adds chunk c's partial for R rows × TT tokens to acc. src[r]: the chunk of row row0 + r
// (quant::Chunk, read ahead, or quant::LazyChunk); rows past `rows` add nothing. xs: the chunk of
// token 0 in shared memory, token t at xs + t·token_stride; sums: the chunk's Σ x (chunk_sum) of
// token 0, token t at sums + t·kSlab (types with mins only; both kernels compute them once per
// block).
template <GgmlType T, int R, int TT, typename Src>
__device__ __forceinline__ void chunk_rows(const Src (&src)[R], uint64_t row0, uint64_t rows,
                                           int64_t c, int64_t cols, bool wide, const float* xs,
                                           int token_stride, const float* sums,
                                           float (&acc)[R][TT]) {
  constexpr bool kPlain = quant::Block<T>::elems == 1;
  constexpr bool kFactored = quant::kFactored<T>;
  const int64_t lim = cols - 32 * c;  // < 32 only in a plain row's tail chunk
  float sx[TT];                       // Σ x over the chunk, for the mins
  if constexpr (quant::kHasMin<T>) {
#pragma unroll
    for (int t = 0; t < TT; ++t) sx[t] = sums[t * kSlab];
  }
  float s0[R][TT], s1[R][TT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < TT; ++t) s0[r][t] = s1[r][t] = 0.0f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float q[R][16];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (row0 + r >= rows) {
#pragma unroll
        for (int k = 0; k < 16; ++k) q[r][k] = 0.0f;
      } else if constexpr (kFactored) {
        src[r].ints_half(h, q[r]);
      } else {
        quant::decode_half<T>(src[r].row, c, h, cols, wide, q[r]);
      }
    }
    // Q6_K's halves have their own scales: the second half sums into s1.
    const bool second = quant::kHalfScales<T> && h == 1;
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      const float* x = xs + t * token_stride + 16 * h;
#pragma unroll
      for (int qd = 0; qd < 4; ++qd) {
        const float4 v = *reinterpret_cast<const float4*>(x + 4 * qd);
        const float xk[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (kPlain && 16 * h + 4 * qd + j >= lim) continue;
#pragma unroll
          for (int r = 0; r < R; ++r) {
            float& s = second ? s1[r][t] : s0[r][t];
            s = fmaf(q[r][4 * qd + j], xk[j], s);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (row0 + r >= rows) continue;
    if constexpr (kFactored) {
      const quant::ChunkScales f = src[r].scales();
#pragma unroll
      for (int t = 0; t < TT; ++t)
        acc[r][t] = __fadd_rn(acc[r][t], quant::combine_chunk<T>(f, s0[r][t], s1[r][t],
                                                                 quant::kHasMin<T> ? sx[t] : 0.0f));
    } else {
#pragma unroll
      for (int t = 0; t < TT; ++t) acc[r][t] = __fadd_rn(acc[r][t], s0[r][t]);
    }
  }
}

// The lane's running sums reduced over the warp; lane 0 writes y[t, col0 + row].
template <int R, int TT>
__device__ __forceinline__ void reduce_store(float (&acc)[R][TT], uint64_t row0, uint64_t rows,
                                             uint64_t t0, uint64_t tokens, float* y,
                                             uint64_t y_stride, uint64_t col0) {
  const int lane = static_cast<int>(threadIdx.x % 32);
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      float s = acc[r][t];
#pragma unroll
      for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
      if (lane == 0 && row0 + r < rows && t0 + t < tokens)
        y[(t0 + t) * y_stride + col0 + row0 + r] = s;
    }
  }
}

// Stages x[t, first_col + 4q .. + 4) for t < TT, q < kQuads into staged (token t's chunk k at
// (t·kChunksPerToken + k)·kChunkStride), zeros past the row's end and past the last token;
// then a barrier. Compile-time geometry: no integer divisions.
template <int TT, int kQuads, int kChunksPerToken>
__device__ __forceinline__ void stage_slab(const float* __restrict__ x, uint64_t cols, uint64_t t0,
                                           uint64_t tokens, uint64_t first_col, float* staged) {
  for (uint32_t i = threadIdx.x; i < TT * kQuads; i += blockDim.x) {
    const uint32_t t = i / kQuads, q = i % kQuads;
    const uint64_t col = first_col + 4 * q;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t0 + t < tokens) {
      const float* src = x + (t0 + t) * cols + col;
      if (col + 4 <= cols && (cols % 4) == 0) {
        v = *reinterpret_cast<const float4*>(src);
      } else {
        if (col < cols) v.x = src[0];
        if (col + 1 < cols) v.y = src[1];
        if (col + 2 < cols) v.z = src[2];
        if (col + 3 < cols) v.w = src[3];
      }
    }
    *reinterpret_cast<float4*>(staged + (t * kChunksPerToken + q / 8) * kChunkStride +
                               4 * (q % 8)) = v;
  }
  __syncthreads();
}

// Stages all of x[0, cols) (one token), chunk k at k·kChunkStride; then a barrier.
__device__ __forceinline__ void stage_row(const float* __restrict__ x, uint32_t cols,
                                          float* staged) {
  const uint32_t quads = (cols + 3) / 4;
  const bool aligned = (cols % 4) == 0;
  for (uint32_t q = threadIdx.x; q < quads + (8 - quads % 8) % 8; q += blockDim.x) {
    const uint32_t col = 4 * q;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (aligned && col + 4 <= cols) {
      v = *reinterpret_cast<const float4*>(x + col);
    } else {
      if (col < cols) v.x = x[col];
      if (col + 1 < cols) v.y = x[col + 1];
      if (col + 2 < cols) v.z = x[col + 2];
      if (col + 3 < cols) v.w = x[col + 3];
    }
    *reinterpret_cast<float4*>(staged + (q / 8) * kChunkStride + 4 * (q % 8)) = v;
  }
  __syncthreads();
}

// Any token count: x staged a slab of 32 chunks × TT tokens at a time.
template <GgmlType T, int R, int TT>
__global__ void __launch_bounds__(32 * kWarps)
    matmul_kernel(const uint8_t* __restrict__ w, uint64_t row_bytes, uint64_t rows, uint64_t cols,
                  bool wide, const float* __restrict__ x, uint64_t tokens, float* __restrict__ y,
                  uint64_t y_stride, uint64_t col0) {
  pdl::begin();
  extern __shared__ float4 staged4[];  // [TT][kSlab][kChunkStride], then [TT][kSlab] sums
  float* staged = reinterpret_cast<float*>(staged4);
  float* sums = staged + TT * kSlab * kChunkStride;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const uint64_t row0 = (uint64_t{blockIdx.x} * kWarps + warp) * R;
  const uint64_t t0 = uint64_t{blockIdx.y} * TT;
  const int64_t chunks = static_cast<int64_t>((cols + 31) / 32);
  float acc[R][TT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < TT; ++t) acc[r][t] = 0.0f;
  if constexpr (quant::kInt8<T>) {
    // [TT][kSlab] chunks kQStride bytes apart, then [TT][kSlab / 8] d, then [TT][kSlab] Σ q.
    uint8_t* xq = reinterpret_cast<uint8_t*>(staged4);
    float* xd = reinterpret_cast<float*>(xq + TT * kSlab * kQStride);
    int* bsum = reinterpret_cast<int*>(xd + TT * kSlab / 8);
    const int64_t blocks = chunks / 8;  // cols is a whole number of super-blocks
    for (int64_t s0 = 0; s0 < chunks; s0 += kSlab) {
      __syncthreads();  // the last slab's readers are done
      // Warp w quantizes block w of the slab for every token: all loads first.
      static_assert(kSlab / 8 == kWarps, "one block of the slab a warp");
      float v[TT][8];
#pragma unroll
      for (int t = 0; t < TT; ++t) {
        const bool valid = t0 + t < tokens && s0 / 8 + warp < blocks;
        load_block(x + (valid ? (t0 + t) * cols + 256 * (s0 / 8 + warp) : 0), valid, v[t]);
      }
#pragma unroll
      for (int t = 0; t < TT; ++t)
        quantize_loaded(v[t], true, xq + (t * kSlab + 8 * warp) * kQStride,
                        xd + t * (kSlab / 8) + warp, bsum + t * kSlab + 8 * warp);
      __syncthreads();
      const int64_t c = s0 + lane;
      if (c >= chunks || row0 >= rows) continue;
      quant::Chunk<T> src[R];
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (row0 + r < rows) src[r] = quant::Chunk<T>::at(w + (row0 + r) * row_bytes, c);
      chunk_rows_int8<T, R, TT>(src, row0, rows, xq + lane * kQStride, kSlab * kQStride,
                                xd + lane / 8, kSlab / 8, bsum + lane, kSlab, acc);
    }
  } else {
    for (int64_t s0 = 0; s0 < chunks; s0 += kSlab) {
      __syncthreads();  // the last slab's readers are done
      stage_slab<TT, kSlab * 8, kSlab>(x, cols, t0, tokens, 32 * static_cast<uint64_t>(s0), staged);
      if constexpr (quant::kHasMin<T>) {
        for (uint32_t i = threadIdx.x; i < TT * kSlab; i += blockDim.x)
          sums[i] = chunk_sum(staged + i * kChunkStride);  // i = t·kSlab + chunk
        __syncthreads();
      }
      const int64_t c = s0 + lane;
      if (c >= chunks || row0 >= rows) continue;
      quant::LazyChunk<T> src[R];
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (row0 + r < rows) src[r] = quant::LazyChunk<T>::at(w + (row0 + r) * row_bytes, c);
      chunk_rows<T, R, TT>(src, row0, rows, c, static_cast<int64_t>(cols), wide,
                           staged + lane * kChunkStride, kSlab * kChunkStride, sums + lane, acc);
    }
  }
  reduce_store<R, TT>(acc, row0, rows, t0, tokens, y, y_stride, col0);
}

// Rows a warp of the 16-warp decode kernel takes at once: Q4_K's light read-ahead leaves room
// for two (the 4-warp kernel, for matrices of few rows, takes one, for more blocks).
template <GgmlType T>
constexpr int kMatvecRows = T == GgmlType::Q4_K ? 2 : 1;

// The matrices of one decode launch (kernels::MatvecPart), by value: their rows are numbered
// one after the other, part 0's first; `end` holds each part's last row + 1 in that numbering.
// Selected by comparisons, not indexing, so the parameters stay in constant memory.
// The decode kernel's Q4_K rows, with the arithmetic of chunk_rows_int8 (lane p takes chunks p,
// p + 32, ... of each row; the same partial, rounded the same way) but fewer instructions a
// chunk, as decode is bound by its instruction issue, not by DRAM: every address is a per-lane
// constant plus an immediate (32-bit offsets within a step of 32·kAhead chunks); the chunk's
// sub-block j = c % 8 is lane % 8, so its 6-bit scale and min come from lane-constant shifts;
// and the 32 bytes a lane shares with its neighbour (one takes the low nibbles, the other the
// high) are read half each and swapped by shuffles, each half dotted with its own half of x
// (the integer sum is the same in any order), so no selects.
template <int R, int kAhead>
__device__ __forceinline__ void q4k_decode_step(const uint8_t* const (&row)[R], int live,
                                                uint32_t base, uint32_t chunks, const uint8_t* xq,
                                                const float* xd, const int* bsum,
                                                float (&acc)[R][1]) {
  constexpr uint32_t kBytes = quant::Block<GgmlType::Q4_K>::bytes;
  const uint32_t lane = threadIdx.x % 32, j = lane % 8, first = lane & ~3u;
  // Byte offsets from the step's first super-block (base / 8) of a row: the lane's 16 bytes of
  // the pair's 32 and its word of the 16-byte header; chunk base + 32u + lane is 4u super-
  // blocks further.
  const uint32_t sb = base / 8 + lane / 8;
  const uint32_t q_off = sb * kBytes + 16 + 32 * (j / 2) + 16 * (lane % 2);
  const uint32_t h_off = sb * kBytes + 4 * (lane % 4);
  uint4 half[kAhead][R];
  uint32_t word[kAhead][R];
#pragma unroll
  for (int u = 0; u < kAhead; ++u)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      half[u][r] = make_uint4(0u, 0u, 0u, 0u);
      word[u][r] = 0u;
      if (r < live && base + 32 * u + lane < chunks) {
        half[u][r] = *reinterpret_cast<const uint4*>(row[r] + q_off + 4 * u * kBytes);
        word[u][r] = *reinterpret_cast<const uint32_t*>(row[r] + h_off + 4 * u * kBytes);
      }
    }
  const uint32_t shift = 8 * (j % 4), nibble = 4 * (lane % 2);
  const bool high = j >= 4;
#pragma unroll
  for (int u = 0; u < kAhead; ++u) {
    if (base + 32 * u >= chunks) break;  // warp-uniform
    const uint32_t c = base + 32 * u + lane;
    const bool valid = c < chunks;
    uint4 xo = make_uint4(0u, 0u, 0u, 0u), xn = xo;  // x's halves: the lane's own, the other
    float dx = 0.0f;
    int qsum = 0;
    if (valid) {
      const uint8_t* xc = xq + c * kQStride;
      xo = *reinterpret_cast<const uint4*>(xc + 16 * (lane % 2));
      xn = *reinterpret_cast<const uint4*>(xc + 16 * (1 - lane % 2));
      dx = xd[c / 8];
      qsum = bsum[c];
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= live) break;  // warp-uniform
      const uint4 own = half[u][r];
      uint4 other;
      other.x = __shfl_xor_sync(0xFFFFFFFFu, own.x, 1);
      other.y = __shfl_xor_sync(0xFFFFFFFFu, own.y, 1);
      other.z = __shfl_xor_sync(0xFFFFFFFFu, own.z, 1);
      other.w = __shfl_xor_sync(0xFFFFFFFFu, own.w, 1);
      const uint32_t dd = __shfl_sync(0xFFFFFFFFu, word[u][r], first);
      const uint32_t a = __shfl_sync(0xFFFFFFFFu, word[u][r], first + 1) >> shift;
      const uint32_t b = __shfl_sync(0xFFFFFFFFu, word[u][r], first + 2) >> shift;
      const uint32_t e = __shfl_sync(0xFFFFFFFFu, word[u][r], first + 3) >> shift;
      if (!valid) continue;
      // quant::Chunk<Q4_K>::scale_min for sub-block j.
      const uint32_t sc = high ? (e & 0x0Fu) | ((a >> 2) & 0x30u) : a & 63u;
      const uint32_t mn = high ? ((e >> 4) & 0x0Fu) | ((b >> 2) & 0x30u) : b & 63u;
      auto q = [&](uint32_t v) { return static_cast<int>((v >> nibble) & 0x0F0F0F0Fu); };
      int sum = 0;
      sum = __dp4a(q(own.x), static_cast<int>(xo.x), sum);
      sum = __dp4a(q(own.y), static_cast<int>(xo.y), sum);
      sum = __dp4a(q(own.z), static_cast<int>(xo.z), sum);
      sum = __dp4a(q(own.w), static_cast<int>(xo.w), sum);
      sum = __dp4a(q(other.x), static_cast<int>(xn.x), sum);
      sum = __dp4a(q(other.y), static_cast<int>(xn.y), sum);
      sum = __dp4a(q(other.z), static_cast<int>(xn.z), sum);
      sum = __dp4a(q(other.w), static_cast<int>(xn.w), sum);
      const float part = __fsub_rn(__fmul_rn(__fmul_rn(quant::half_bits(dd & 0xFFFFu), dx),
                                             __int2float_rn(static_cast<int>(sc) * sum)),
                                   __fmul_rn(__fmul_rn(quant::half_bits(dd >> 16), dx),
                                             __int2float_rn(static_cast<int>(mn) * qsum)));
      acc[r][0] = __fadd_rn(acc[r][0], part);
    }
  }
}

// The same for Q6_K (quant::Chunk<Q6_K>'s words and arithmetic, chunk_rows_int8's partial). A
// super-block (210 bytes) is only 2-byte aligned, so the chunk's 32 bytes of low bits and 32
// of high bits are read as 9 words each from the 4-byte boundary below and shifted into place;
// the bits to drop are a per-lane constant within a step (4 super-blocks are 840 bytes).
template <int R, int kAhead>
__device__ __forceinline__ void q6k_decode_step(const uint8_t* const (&row)[R], int live,
                                                uint32_t base, uint32_t chunks, const uint8_t* xq,
                                                const float* xd, const int* bsum,
                                                float (&acc)[R][1]) {
  constexpr uint32_t kBytes = quant::Block<GgmlType::Q6_K>::bytes;
  const uint32_t lane = threadIdx.x % 32, sub = lane % 8, half = sub / 4, g = sub % 4;
  const uint32_t block = (base / 8 + lane / 8) * kBytes;
  const uint32_t ql_off = block + 64 * half + 32 * (g % 2), qh_off = block + 128 + 32 * half;
  const uint32_t sc_off = block + 192 + 2 * sub, d_off = block + 208;
  uint32_t ql[kAhead][R][9], qh[kAhead][R][9], sc[kAhead][R], d[kAhead][R];
  uint32_t ql_shift[R], qh_shift[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(row[r] + ql_off);
    const uintptr_t b = reinterpret_cast<uintptr_t>(row[r] + qh_off);
    ql_shift[r] = 8 * static_cast<uint32_t>(a & 3);
    qh_shift[r] = 8 * static_cast<uint32_t>(b & 3);
    const uint32_t* lw = reinterpret_cast<const uint32_t*>(a & ~uintptr_t{3});
    const uint32_t* hw = reinterpret_cast<const uint32_t*>(b & ~uintptr_t{3});
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const bool valid = r < live && base + 32 * u + lane < chunks;
#pragma unroll
      for (int i = 0; i < 9; ++i) {
        ql[u][r][i] = valid ? lw[u * kBytes + i] : 0u;  // 4u super-blocks on: u·210 words
        qh[u][r][i] = valid ? hw[u * kBytes + i] : 0u;
      }
      sc[u][r] = valid ? quant::u16_at(row[r] + sc_off + 4 * u * kBytes) : 0u;
      d[u][r] = valid ? quant::u16_at(row[r] + d_off + 4 * u * kBytes) : 0u;
    }
  }
  const uint32_t nibble = g < 2 ? 0 : 4, bits = 2 * g;
#pragma unroll
  for (int u = 0; u < kAhead; ++u) {
    const uint32_t c = base + 32 * u + lane;
    if (c >= chunks) continue;
    const uint4 xa = *reinterpret_cast<const uint4*>(xq + c * kQStride);
    const uint4 xb = *reinterpret_cast<const uint4*>(xq + c * kQStride + 16);
    const float dx = xd[c / 8];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r >= live) continue;
      int q[8];
#pragma unroll
      for (int w = 0; w < 8; ++w) {
        const uint32_t low = __funnelshift_r(ql[u][r][w], ql[u][r][w + 1], ql_shift[r]);
        const uint32_t high = __funnelshift_r(qh[u][r][w], qh[u][r][w + 1], qh_shift[r]);
        const uint32_t v = ((low >> nibble) & 0x0F0F0F0Fu) | (((high >> bits) & 0x03030303u) << 4);
        q[w] = static_cast<int>(__vsub4(v, 0x20202020u));  // bytewise v − 32 (v < 64)
      }
      int s0 = 0, s1 = 0;
      s0 = __dp4a(q[0], static_cast<int>(xa.x), s0);
      s0 = __dp4a(q[1], static_cast<int>(xa.y), s0);
      s0 = __dp4a(q[2], static_cast<int>(xa.z), s0);
      s0 = __dp4a(q[3], static_cast<int>(xa.w), s0);
      s1 = __dp4a(q[4], static_cast<int>(xb.x), s1);
      s1 = __dp4a(q[5], static_cast<int>(xb.y), s1);
      s1 = __dp4a(q[6], static_cast<int>(xb.z), s1);
      s1 = __dp4a(q[7], static_cast<int>(xb.w), s1);
      const int sc0 = static_cast<int8_t>(sc[u][r] & 0xFFu);
      const int sc1 = static_cast<int8_t>(sc[u][r] >> 8);
      const float part =
          __fmul_rn(__fmul_rn(quant::half_bits(d[u][r]), dx), __int2float_rn(sc0 * s0 + sc1 * s1));
      acc[r][0] = __fadd_rn(acc[r][0], part);
    }
  }
}

static_assert(kMaxMatvecParts == 3, "Parts selects among three");
struct Parts {
  const uint8_t* w[kMaxMatvecParts];
  const float* bias[kMaxMatvecParts];
  uint64_t end[kMaxMatvecParts];
  float scale;
  bool epilogue;  // y = (s + bias) · scale (bias where given); else y = s

  __device__ __forceinline__ int part(uint64_t r) const {
    return r < end[0] ? 0 : (r < end[1] ? 1 : 2);
  }
  __device__ __forceinline__ uint64_t start(int p) const {
    return p == 0 ? 0 : (p == 1 ? end[0] : end[1]);
  }
  __device__ __forceinline__ const uint8_t* row(uint64_t r, uint64_t row_bytes) const {
    const int p = part(r);
    return (p == 0 ? w[0] : (p == 1 ? w[1] : w[2])) + (r - start(p)) * row_bytes;
  }
  // Row r's output from its sum s, rounded as the separate bias_scale kernel rounds it.
  __device__ __forceinline__ float finish(uint64_t r, float s) const {
    if (!epilogue) return s;
    const int p = part(r);
    const float* b = p == 0 ? bias[0] : (p == 1 ? bias[1] : bias[2]);
    return __fmul_rn(b ? __fadd_rn(s, b[r - start(p)]) : s, scale);
  }
};

// The warp's sum of its lanes' acc (as reduce_store), finished and written by lane 0 to y[r].
__device__ __forceinline__ void store_row(const Parts& parts, uint64_t r, float acc, float* y) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xFFFFFFFFu, acc, o);
  if (threadIdx.x % 32 == 0) y[r] = parts.finish(r, acc);
}

// One token, the whole of x staged once (and, for the types with mins, each chunk's Σ x after
// it); W warps a block. Warp g of the grid's G takes rows g, g + G, g + 2G, ... (so no warp has
// more than one row more than another), R of them at a time.
template <GgmlType T, int R, int W>
__global__ void __launch_bounds__(32 * W)
    matvec_kernel(const Parts parts, uint64_t row_bytes, uint64_t rows, uint64_t cols, bool wide,
                  const float* __restrict__ x, float* __restrict__ y) {
  extern __shared__ float4 staged4[];  // [chunks][kChunkStride], then [chunks] sums
  float* staged = reinterpret_cast<float*>(staged4);
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const uint64_t first = uint64_t{blockIdx.x} * W + warp;  // the warp's first row
  const uint64_t warps = uint64_t{gridDim.x} * W;          // rows between a warp's rows
  const int64_t chunks = static_cast<int64_t>((cols + 31) / 32);
  float* sums = staged + chunks * kChunkStride;
  // No prefetch of weights into L2 here: measured on the H100, it only slowed decode (230.5
  // tok/s without, 227.7 with the next two turns' rows prefetched, 218.5 with four).
  pdl::begin();
  if constexpr (quant::kInt8<T>) {
    // [chunks] chunks kQStride bytes apart, then [chunks / 8] d, then [chunks] Σ q.
    uint8_t* xq = reinterpret_cast<uint8_t*>(staged4);
    float* xd = reinterpret_cast<float*>(xq + chunks * kQStride);
    int* bsum = reinterpret_cast<int*>(xd + chunks / 8);
    const int64_t blocks = chunks / 8;
    constexpr int kLoads = 4;  // blocks a warp loads before it quantizes them
    for (int64_t b0 = warp; b0 < blocks; b0 += kLoads * W) {
      float v[kLoads][8];
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int64_t b = b0 + u * W;
        load_block(x + (b < blocks ? 256 * b : 0), b < blocks, v[u]);
      }
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int64_t b = b0 + u * W < blocks ? b0 + u * W : blocks - 1;
        quantize_loaded(v[u], b0 + u * W < blocks, xq + 8 * b * kQStride, xd + b, bsum + 8 * b);
      }
    }
    __syncthreads();
    // kAhead chunks of each of the R rows a lane: every load issued before the first is used.
    // The loops are warp-uniform (the Q4_K read-ahead shuffles).
    constexpr int kAhead = 4;
    for (uint64_t r0 = first; r0 < rows; r0 += R * warps) {
      // This turn's rows: r0 + k·warps for k < live (the rest past the end).
      const int live = static_cast<int>(std::min<uint64_t>(R, (rows - r0 + warps - 1) / warps));
      const uint8_t* row[R];
#pragma unroll
      for (int r = 0; r < R; ++r)
        row[r] = r < live ? parts.row(r0 + r * warps, row_bytes) : nullptr;
      float acc[R][1];
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r][0] = 0.0f;
      for (uint32_t base = 0; base < chunks; base += 32 * kAhead) {
        if constexpr (T == GgmlType::Q4_K)
          q4k_decode_step<R, kAhead>(row, live, base, static_cast<uint32_t>(chunks), xq, xd, bsum,
                                     acc);
        else
          q6k_decode_step<R, kAhead>(row, live, base, static_cast<uint32_t>(chunks), xq, xd, bsum,
                                     acc);
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < live) store_row(parts, r0 + r * warps, acc[r][0], y);
    }
    return;
  }
  static_assert(R == 1 || quant::kInt8<T>, "one row a warp");
  stage_row(x, static_cast<uint32_t>(cols), staged);
  if constexpr (quant::kHasMin<T>) {
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x)
      sums[c] = chunk_sum(staged + c * kChunkStride);
    __syncthreads();
  }
  // kAhead chunks a lane: every load issued (predicated) before the first is used (Q6_K's
  // chunks take twice the registers).
  constexpr int kAhead = T == GgmlType::Q6_K ? 2 : 4;
  // The grid is about as large as the GPU holds at once, so x is staged once per block rather
  // than once per W rows.
  for (uint64_t r0 = first; r0 < rows; r0 += warps) {
    float acc[1][1] = {{0.0f}};
    const uint8_t* row = parts.row(r0, row_bytes);
    for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kAhead) {
      quant::Chunk<T> src[kAhead][1];
#pragma unroll
      for (int u = 0; u < kAhead; ++u)
        if (c0 + 32 * u < chunks) src[u][0] = quant::Chunk<T>::at(row, c0 + 32 * u);
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        const int64_t c = c0 + 32 * u;
        if (c < chunks)
          chunk_rows<T, 1, 1>(src[u], r0, rows, c, static_cast<int64_t>(cols), wide,
                              staged + c * kChunkStride, 0, sums + c, acc);
      }
    }
    store_row(parts, r0, acc[0][0], y);
  }
}

int multiprocessors();

// Shared memory a block may take (the H100 allows 227 KiB); longer rows use the slab kernel.
constexpr size_t kMaxStagedBytes = 200 * 1024;

bool wide_rows(const void* w, uint64_t row_bytes, uint64_t cols) {
  return (row_bytes % 16) == 0 && (cols % 32) == 0 && (reinterpret_cast<uintptr_t>(w) % 16) == 0;
}

template <typename Kernel>
void allow_shared(Kernel* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  LOCKSTEP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
}

// A long row's x fills much of a multiprocessor's shared memory, so fewer blocks fit: those
// blocks get 16 warps instead of 4, keeping the warps in flight.
template <GgmlType T, int R, int W>
void launch_matvec_w(const Parts& parts, uint64_t row_bytes, uint64_t rows, uint64_t cols,
                     bool wide, const float* x, float* y, size_t shared, cudaStream_t stream) {
  // Blocks the GPU runs at once: 16 warps fill a multiprocessor's registers (~90 a thread), so
  // one wave of those (two measured 5% slower at decode on the H100: the second wave's staging
  // cannot overlap the first's streaming); four-warp blocks, two waves of four a
  // multiprocessor.
  const uint64_t resident = uint64_t(multiprocessors()) * (W == 16 ? 1 : 8);
  const auto blocks = static_cast<unsigned>(std::min((rows + W * R - 1) / (W * R), resident));
  pdl::launch(matvec_kernel<T, R, W>, blocks, 32 * W, shared, stream, parts, row_bytes, rows, cols,
              wide, x, y);
}

template <GgmlType T>
bool launch_matvec(const Parts& parts, uint64_t rows, uint64_t cols, bool wide, const float* x,
                   float* y, cudaStream_t stream) {
  const uint64_t row_bytes = kernels::row_bytes(T, cols);
  const size_t shared = quant::kInt8<T> ? int8_staged_bytes((cols + 31) / 32)
                                        : sizeof(float) * (kChunkStride + 1) * ((cols + 31) / 32);
  if (shared > kMaxStagedBytes) return false;
  // 16 warps a block when x is long (its f32 staging over 32 KiB, ~7k columns: fewer blocks fit
  // a multiprocessor's shared memory, and for the int8 types every block quantizes all of x)
  // or the matrix has rows enough to fill the GPU that way (int8 types: one turn of the warps,
  // as their blocks' staging costs more); else 4 (more, smaller blocks).
  const bool long_x = sizeof(float) * (kChunkStride + 1) * ((cols + 31) / 32) > 32 * 1024;
  const uint64_t fill = uint64_t(multiprocessors()) * 16 * (quant::kInt8<T> ? 1 : 2);
  if (long_x || rows >= fill)
    launch_matvec_w<T, kMatvecRows<T>, 16>(parts, row_bytes, rows, cols, wide, x, y, shared,
                                           stream);
  else  // few rows: one a warp, for more blocks
    launch_matvec_w<T, 1, kWarps>(parts, row_bytes, rows, cols, wide, x, y, shared, stream);
  return true;
}

template <GgmlType T, int R, int TT>
void launch(const void* w, uint64_t row_bytes, uint64_t rows, uint64_t cols, const float* x,
            uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0, cudaStream_t stream) {
  constexpr size_t kShared = quant::kInt8<T> ? TT * int8_staged_bytes(kSlab)
                                             : sizeof(float) * TT * kSlab * (kChunkStride + 1);
  static_assert(kShared <= 48 * 1024, "the slab kernels fit the default shared-memory limit");
  const dim3 grid(static_cast<unsigned>((rows + kWarps * R - 1) / (kWarps * R)),
                  static_cast<unsigned>((tokens + TT - 1) / TT));
  pdl::launch(matmul_kernel<T, R, TT>, grid, 32 * kWarps, kShared, stream,
              static_cast<const uint8_t*>(w), row_bytes, rows, cols, wide_rows(w, row_bytes, cols),
              x, tokens, y, y_stride, col0);
}

// Raises the shared-memory limit of every matvec kernel. A stream being captured into a graph
// may not see this call, so the lanes make it when they start (see prepare_matmul).
struct RaiseLimits {
  template <GgmlType T>
  void operator()() const {
    allow_shared(matvec_kernel<T, 1, kWarps>, kMaxStagedBytes);
    allow_shared(matvec_kernel<T, kMatvecRows<T>, 16>, kMaxStagedBytes);
  }
};

int multiprocessors() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
      n = 0;
    return n > 0 ? n : 100;
  }();
  return count;
}

}  // namespace

void prepare_matmul() {
  static const bool done = [] {
    for (const formats::GgmlTypeInfo& info : formats::ggml_types())
      quant::dispatch(info.type, RaiseLimits{});
    multiprocessors();
    return true;
  }();
  (void)done;
}

void matmul(GgmlType type, const void* w, uint64_t rows, uint64_t cols, const float* x,
            uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0, cudaStream_t stream) {
  if (rows == 0 || tokens == 0) return;
  prepare_matmul();
  const uint64_t rb = row_bytes(type, cols);
  const bool known = quant::dispatch(type, [&]<GgmlType T>() {
    if (tokens == 1) {
      Parts parts{};
      parts.w[0] = parts.w[1] = parts.w[2] = static_cast<const uint8_t*>(w);
      parts.end[0] = parts.end[1] = parts.end[2] = rows;
      if (!launch_matvec<T>(parts, rows, cols, wide_rows(w, rb, cols), x, y + col0, stream))
        launch<T, 1, 1>(w, rb, rows, cols, x, tokens, y, y_stride, col0, stream);
    } else {
      launch<T, 4, 8>(w, rb, rows, cols, x, tokens, y, y_stride, col0, stream);
    }
  });
  if (!known)
    throw Error("cuda: no matmul kernel for weights of type " +
                std::string(formats::ggml_type_name(type)));
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
}

bool matvec(GgmlType type, std::span<const MatvecPart> parts, uint64_t cols, const float* x,
            float* y, bool epilogue, float scale, cudaStream_t stream) {
  if (parts.empty() || parts.size() > kMaxMatvecParts)
    throw Error("cuda: a matvec launch takes 1 to " + std::to_string(kMaxMatvecParts) +
                " matrices, not " + std::to_string(parts.size()));
  prepare_matmul();
  const uint64_t rb = row_bytes(type, cols);
  Parts p{};
  p.scale = scale;
  p.epilogue = epilogue;
  uint64_t rows = 0;
  bool wide = true;
  for (size_t i = 0; i < kMaxMatvecParts; ++i) {
    const MatvecPart& part = parts[std::min(i, parts.size() - 1)];
    if (i < parts.size()) {
      rows += part.rows;
      wide = wide && wide_rows(part.w, rb, cols);
    }
    p.w[i] = static_cast<const uint8_t*>(part.w);
    p.bias[i] = part.bias;
    p.end[i] = rows;
  }
  if (rows == 0) return true;
  bool launched = false;
  const bool known = quant::dispatch(
      type, [&]<GgmlType T>() { launched = launch_matvec<T>(p, rows, cols, wide, x, y, stream); });
  if (!known)
    throw Error("cuda: no matmul kernel for weights of type " +
                std::string(formats::ggml_type_name(type)));
  LOCKSTEP_CUDA_CHECK(cudaGetLastError());
  return launched;
}

}  // namespace lockstep::cuda::kernels
