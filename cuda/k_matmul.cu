// Dequantizing matrix products, y = x · Wᵀ with W in its stored GGML type.
//
// Every output has one fixed arithmetic, whatever the token count and the kernel shape: a row
// is read in chunks of 32 elements; lane p of a warp takes chunks p, p + 32, p + 64, ... and
// adds each chunk's partial Σ w·x to its running sum in order; the 32 running sums are reduced
// with xor shuffles (16, 8, 4, 2, 1). A chunk's partial is, for the factored types (Q4_0, Q8_0,
// Q4_K, Q5_K, Q6_K; see quant::kFactored), scale · Σ q·x − min · Σ x with the integer sums
// taken element by element in order, and for every other type Σ w·x over the decoded weights
// in order. So a prefill equals the same tokens decoded one by one, bit for bit, every kernel
// shape below gives the same bits, and a one-hot x reads a weight back exactly as the codec
// decodes it (the tests use that).
//
// How it is fast within that order:
// - x is staged in shared memory, chunks kChunkStride floats apart so that the 16-byte reads of
//   a quarter-warp hit distinct banks; in a slab of 32 chunks lane p owns chunk 32·slab + p.
// - A warp works on R rows at once: each lane turns half a chunk (16 elements) of each of its R
//   rows into floats (16-byte or 2-byte loads; integers made floats without the conversion
//   unit), then one shared 4-float read of x feeds 4·R multiply-adds per token.
// - Decode (one token): a grid about as large as the GPU holds; each block stages the whole of
//   x once, with each chunk's Σ x, then its warps stream rows (every (grid·W)-th) with no
//   further synchronisation, four chunks of loads in flight per lane (two for Q6_K); 16 warps
//   a block for a long x or a tall matrix, else 4. (Four rows a warp, and a block per 16 rows,
//   measured slower on the H100.) Rows over 45k columns take the slab kernel, TT = 1, R = 1.
// - Prefill: the slab kernel, TT = 8 tokens by R = 4 rows a warp; weights are streamed once
//   per token tile.
// What limits it: f32 CUDA-core arithmetic, kept so that the lane tracks the float64 oracle at
// the cpu lane's floor (tensor cores would round x to 16 or 19 bits), and at decode the HBM.

#include <algorithm>

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
  reduce_store<R, TT>(acc, row0, rows, t0, tokens, y, y_stride, col0);
}

// One token, the whole of x staged once (and, for the types with mins, each chunk's Σ x after
// it); W warps a block.
template <GgmlType T, int R, int W>
__global__ void __launch_bounds__(32 * W)
    matvec_kernel(const uint8_t* __restrict__ w, uint64_t row_bytes, uint64_t rows, uint64_t cols,
                  bool wide, const float* __restrict__ x, float* __restrict__ y) {
  extern __shared__ float4 staged4[];  // [chunks][kChunkStride], then [chunks] sums
  float* staged = reinterpret_cast<float*>(staged4);
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const uint64_t row0 = (uint64_t{blockIdx.x} * W + warp) * R;
  const int64_t chunks = static_cast<int64_t>((cols + 31) / 32);
  float* sums = staged + chunks * kChunkStride;
  // While the kernel before still runs (pdl): the warp's first two rows into L2. Weights are
  // immutable, and a prefetch is only a hint.
  pdl::allow_next();
  for (uint64_t r = row0; r < rows && r < row0 + 2 * uint64_t{gridDim.x} * W;
       r += uint64_t{gridDim.x} * W)
    for (uint64_t b = 128 * uint64_t(lane); b < row_bytes; b += 128 * 32)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(w + r * row_bytes + b));
  pdl::wait_inputs();
  stage_row(x, static_cast<uint32_t>(cols), staged);
  if constexpr (quant::kHasMin<T>) {
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x)
      sums[c] = chunk_sum(staged + c * kChunkStride);
    __syncthreads();
  }
  static_assert(R == 1, "one row a warp");
  // kAhead chunks a lane: every load issued (predicated) before the first is used (Q6_K's
  // chunks take twice the registers).
  constexpr int kAhead = T == GgmlType::Q6_K ? 2 : 4;
  // The grid is about as large as the GPU holds at once; each warp takes every (grid·W)-th
  // row, so x is staged once per block rather than once per W rows.
  for (uint64_t r0 = row0; r0 < rows; r0 += uint64_t{gridDim.x} * W) {
    float acc[1][1] = {{0.0f}};
    const uint8_t* row = w + r0 * row_bytes;
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
    reduce_store<1, 1>(acc, r0, rows, 0, 1, y, 0, 0);
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
void launch_matvec_w(const void* w, uint64_t row_bytes, uint64_t rows, uint64_t cols,
                     const float* x, float* y, size_t shared, cudaStream_t stream) {
  // Blocks the GPU runs at once: 16 warps fill a multiprocessor's registers (~90 a thread), so
  // one wave of those (two measured 5% slower at decode on the H100: the second wave's staging
  // cannot overlap the first's streaming); four-warp blocks, two waves of four a
  // multiprocessor.
  const uint64_t resident = uint64_t(multiprocessors()) * (W == 16 ? 1 : 8);
  const auto blocks = static_cast<unsigned>(std::min((rows + W * R - 1) / (W * R), resident));
  pdl::launch(matvec_kernel<T, R, W>, blocks, 32 * W, shared, stream,
              static_cast<const uint8_t*>(w), row_bytes, rows, cols, wide_rows(w, row_bytes, cols),
              x, y);
}

template <GgmlType T>
bool launch_matvec(const void* w, uint64_t row_bytes, uint64_t rows, uint64_t cols, const float* x,
                   float* y, cudaStream_t stream) {
  const size_t shared = sizeof(float) * (kChunkStride + 1) * ((cols + 31) / 32);
  if (shared > kMaxStagedBytes) return false;
  // 16 warps a block when x is long (fewer blocks fit a multiprocessor's shared memory) or
  // the matrix has rows enough to fill the GPU that way; else 4 (more, smaller blocks).
  if (shared > 32 * 1024 || rows >= uint64_t{2} * multiprocessors() * 16)
    launch_matvec_w<T, 1, 16>(w, row_bytes, rows, cols, x, y, shared, stream);
  else
    launch_matvec_w<T, 1, kWarps>(w, row_bytes, rows, cols, x, y, shared, stream);
  return true;
}

template <GgmlType T, int R, int TT>
void launch(const void* w, uint64_t row_bytes, uint64_t rows, uint64_t cols, const float* x,
            uint64_t tokens, float* y, uint64_t y_stride, uint64_t col0, cudaStream_t stream) {
  constexpr size_t kShared = sizeof(float) * TT * kSlab * (kChunkStride + 1);
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
    allow_shared(matvec_kernel<T, 1, 16>, kMaxStagedBytes);
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
      if (!launch_matvec<T>(w, rb, rows, cols, x, y + col0, stream))
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

}  // namespace lockstep::cuda::kernels
