// The x86 SIMD kernels, written once and compiled twice: by cpu_kernels_avx2.cpp (AVX2 + FMA +
// F16C) and by cpu_kernels_avx512.cpp (AVX-512 with VNNI). No include guard on purpose: each of
// those files includes it exactly once, inside its own anonymous namespace, after defining
//   LOCKSTEP_X86_VNNI — 1: u8·s8 dot products with vpdpbusd (and AVX512BW mask moves);
//                       0: vpmaddubsw + vpmaddwd
//   VF     — the f32 vector used by the float-weight kernels (8 or 16 lanes)
//   kFloatTile, kFloatRows — tokens and rows per float-weight tile (fit the register file)
// Everything here has internal linkage, so the two copies never meet at link time; for the same
// reason it calls no inline function of a shared header (__builtin_fmaf, not std::fma).
//
// The quantized kernels use 256-bit integer vectors under both ISAs: with the same integer
// products (exact, no saturation in either form) and the same f32 steps, AVX2 and AVX-512 give
// identical results for them; only the float-weight kernels use the ISA's full width.

// ---- Small helpers (no std:: templates: see cpu_kernels_internal.h).

inline uint64_t min_u64(uint64_t a, uint64_t b) {
  return a < b ? a : b;
}
inline float load_f16(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  return _cvtsh_ss(h);
}
inline float load_bf16(const std::byte* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof h);
  const uint32_t bits = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline __m256i loadu256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// Lanes 0..3 + 4..7 in a fixed order.
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 int32 lanes, each the sum of 4 adjacent u8·s8 products.
inline __m256i dot4(__m256i u, __m256i s) {
#if LOCKSTEP_X86_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// A per-lane integer scale for scaled_dot4: a for lanes 0..3 (elements 0..15), b for 4..7.
inline __m256i scale_vec(int a, int b) {
#if LOCKSTEP_X86_VNNI
  return _mm256_setr_m128i(_mm_set1_epi32(a), _mm_set1_epi32(b));
#else
  return _mm256_setr_m128i(_mm_set1_epi16(static_cast<int16_t>(a)),
                           _mm_set1_epi16(static_cast<int16_t>(b)));
#endif
}

// dot4(u, s) · scale per lane. In the maddubs form the scale multiplies the pair sums before
// they are added (vpmaddwd), which is the same integer.
inline __m256i scaled_dot4(__m256i u, __m256i s, __m256i scale) {
#if LOCKSTEP_X86_VNNI
  return _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s), scale);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale);
#endif
}

// ---- Driver: rows [r0, r1) × every token, NT tokens per tile, then single tokens.

using TileFn = void (*)(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res);

constexpr uint64_t kTokenChunkBytes = 256 * 1024;

template <int NT>
void drive(const MatmulArgs& a, TileFn tile_n, TileFn tile_1) {
  const uint64_t fit = kTokenChunkBytes / (a.x_row_bytes > 0 ? a.x_row_bytes : 1);
  const uint64_t chunk = fit / NT * NT > NT ? fit / NT * NT : NT;
  float res[NT];
  for (uint64_t c0 = 0; c0 < a.tokens; c0 += chunk) {
    const uint64_t c1 = min_u64(a.tokens, c0 + chunk);
    for (uint64_t r = a.r0; r < a.r1; ++r) {
      const std::byte* wrow = a.w + r * a.w_row_bytes;
      uint64_t t = c0;
      for (; t + NT <= c1; t += NT) {
        tile_n(a, wrow, t, res);
        for (int i = 0; i < NT; ++i) a.y[(t + i) * a.ldy + r] = res[i];
      }
      for (; t < c1; ++t) {
        tile_1(a, wrow, t, res);
        a.y[t * a.ldy + r] = res[0];
      }
    }
  }
}

constexpr int kQuantTile = 4;

template <class Block, int NT>
inline void act_rows(const MatmulArgs& a, uint64_t t0, const Block* (&x)[NT]) {
  for (int t = 0; t < NT; ++t) x[t] = reinterpret_cast<const Block*>(a.x + (t0 + t) * a.x_row_bytes);
}

// ---- Q4_K: 144-byte blocks: d, dmin (f16), 12 bytes of 6-bit scales and mins, qs[128]; byte l
// of chunk c holds weight 64c + l (low nibble, sub-block 2c) and 64c + 32 + l (high, 2c + 1).
// Q5_K: 176 bytes, the same plus qh[32] before qs: bit 2c of qh[l] is the fifth bit of weight
// 64c + l, bit 2c + 1 that of 64c + 32 + l.

inline void unpack_scale_min_6bit(const std::byte* p, uint8_t* scale, uint8_t* min) {
  uint32_t w[3];
  std::memcpy(w, p, sizeof w);
  const uint32_t lo_s = w[0] & 0x3f3f3f3f;
  const uint32_t lo_m = w[1] & 0x3f3f3f3f;
  const uint32_t hi_s = (w[2] & 0x0f0f0f0f) | ((w[0] >> 2) & 0x30303030);
  const uint32_t hi_m = ((w[2] >> 4) & 0x0f0f0f0f) | ((w[1] >> 2) & 0x30303030);
  std::memcpy(scale, &lo_s, 4);
  std::memcpy(scale + 4, &hi_s, 4);
  std::memcpy(min, &lo_m, 4);
  std::memcpy(min + 4, &hi_m, 4);
}

template <bool kFive, int NT>
void q45_k_tile(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res) {
  constexpr size_t kBytes = kFive ? 176 : 144;
  constexpr size_t kQs = kFive ? 48 : 16;
  const ActBlockQ8_256* x[NT];
  act_rows(a, t0, x);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const uint64_t nb = a.cols / 256;
  for (uint64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * kBytes;
    const float d = load_f16(blk);
    const float dmin = load_f16(blk + 2);
    alignas(16) uint8_t sc[8];
    alignas(16) uint8_t mn[16];
    unpack_scale_min_6bit(blk + 4, sc, mn);
    __m256i q[8];
    __m256i scale[8];
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = loadu256(blk + kQs + 32 * c);
      q[2 * c] = _mm256_and_si256(raw, m4);
      q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    }
    if constexpr (kFive) {
      // Bits 2c and 2c + 1 of each qh byte, moved to bit 4. The 16-bit shifts let bits of the
      // next byte into bits 6-7, which never reach bits 0-1 within the four rounds.
      const __m256i bit4 = _mm256_set1_epi8(0x10);
      __m256i qh = loadu256(blk + 16);
      for (int c = 0; c < 4; ++c) {
        q[2 * c] = _mm256_or_si256(q[2 * c], _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
        q[2 * c + 1] =
            _mm256_or_si256(q[2 * c + 1], _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
        qh = _mm256_srli_epi16(qh, 2);
      }
    }
    for (int j = 0; j < 8; ++j) scale[j] = scale_vec(sc[j], sc[j]);
    // [m0, m0, m1, m1, ..., m7, m7] as int16, against the 16 bsums.
    const __m128i m8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn));
    const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    for (int t = 0; t < NT; ++t) {
      const ActBlockQ8_256& xb = x[t][b];
      __m256i isum = scaled_dot4(q[0], loadu256(xb.q), scale[0]);
      for (int j = 1; j < 8; ++j) {
        isum = _mm256_add_epi32(isum, scaled_dot4(q[j], loadu256(xb.q + 32 * j), scale[j]));
      }
      const __m256i msum = _mm256_madd_epi16(loadu256(xb.bsums), mins);
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(isum), acc[t]);
      acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xb.d), _mm256_cvtepi32_ps(msum), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = hsum8(acc[t]);
}

// ---- Q6_K: 210-byte blocks: ql[128], qh[64], 16 int8 scales, d (f16). Weight 128h + 32g + l
// is ((ql[64h + 32(g%2) + l] >> 4(g/2)) & 15) | ((qh[32h + l] >> 2g) & 3) << 4, minus 32;
// sub-block 8h + 2g + l/16. Each 32-weight vector k = 4h + g thus spans sub-blocks 2k, 2k + 1.
// The -32 is taken out through the activation sums: Σ(u - 32)·x = Σu·x - 32·Σx.

template <int NT>
void q6_k_tile(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res) {
  const ActBlockQ8_256* x[NT];
  act_rows(a, t0, x);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const uint64_t nb = a.cols / 256;
  for (uint64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * 210;
    const float d = load_f16(blk + 208);
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
    __m256i q[8];
    __m256i scale[8];
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = loadu256(blk + 64 * h);
      const __m256i ql1 = loadu256(blk + 64 * h + 32);
      const __m256i qh = loadu256(blk + 128 + 32 * h);
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4);
      const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4);
      const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4);
      q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), h0);
      q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), h1);
      q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), h2);
      q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), h3);
    }
    for (int k = 0; k < 8; ++k) scale[k] = scale_vec(sc[2 * k], sc[2 * k + 1]);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
    for (int t = 0; t < NT; ++t) {
      const ActBlockQ8_256& xb = x[t][b];
      __m256i isum = scaled_dot4(q[0], loadu256(xb.q), scale[0]);
      for (int k = 1; k < 8; ++k) {
        isum = _mm256_add_epi32(isum, scaled_dot4(q[k], loadu256(xb.q + 32 * k), scale[k]));
      }
      const __m256i offset = _mm256_madd_epi16(loadu256(xb.bsums), sc16);
      isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(offset, 5));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(isum), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = hsum8(acc[t]);
}

// ---- Q2_K and Q3_K: 16 sub-blocks of 16; 2-bit planes qs[64]: weight 128h + 32g + l in byte
// 32h + l at bits 2g, so vector k = 4h + g spans sub-blocks 2k, 2k + 1 as in Q6_K.
//   Q2_K  84 bytes: scales[16] (scale low nibble, min high nibble), qs, d, dmin.
//   Q3_K 110 bytes: hmask[32], qs, 12 bytes of 6-bit signed scales, d. q = u - 4 with
//         u = q2 | 4·hbit, hbit of weight 128h + 32g + l = bit 4h + g of hmask[l]; the -4 is
//         taken out through the activation sums like Q6_K's -32.

inline void unpack_scales_q3(const std::byte* p, int16_t* scale) {
  for (int j = 0; j < 16; ++j) {
    const uint8_t lo_byte = static_cast<uint8_t>(p[j % 8]);
    const int low = j < 8 ? lo_byte & 0x0F : lo_byte >> 4;
    const int high = (static_cast<uint8_t>(p[8 + j % 4]) >> (2 * (j / 4))) & 3;
    scale[j] = static_cast<int16_t>((low | (high << 4)) - 32);
  }
}

template <bool kQ3, int NT>
void q23_k_tile(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res) {
  constexpr size_t kBytes = kQ3 ? 110 : 84;
  constexpr size_t kQs = kQ3 ? 32 : 16;
  const ActBlockQ8_256* x[NT];
  act_rows(a, t0, x);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const uint64_t nb = a.cols / 256;
  for (uint64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * kBytes;
    float d, dmin = 0.0f;
    alignas(32) int16_t sc[16];
    __m256i second;  // Q2_K: the 16 mins; Q3_K: the 16 scales again (for the offset)
    if constexpr (kQ3) {
      d = load_f16(blk + 108);
      unpack_scales_q3(blk + 96, sc);
      second = loadu256(sc);
    } else {
      d = load_f16(blk + 80);
      dmin = load_f16(blk + 82);
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk));
      _mm256_store_si256(reinterpret_cast<__m256i*>(sc),
                         _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0F))));
      second = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F)));
    }
    __m256i q[8];
    __m256i scale[8];
    for (int h = 0; h < 2; ++h) {
      const __m256i qs = loadu256(blk + kQs + 32 * h);
      for (int g = 0; g < 4; ++g) {
        q[4 * h + g] = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * g), m2);
      }
    }
    if constexpr (kQ3) {
      const __m256i hmask = loadu256(blk);
      const __m256i one = _mm256_set1_epi8(1);
      for (int k = 0; k < 8; ++k) {
        const __m256i hbit = _mm256_and_si256(_mm256_srli_epi16(hmask, k), one);
        q[k] = _mm256_or_si256(q[k], _mm256_slli_epi16(hbit, 2));
      }
    }
    for (int k = 0; k < 8; ++k) scale[k] = scale_vec(sc[2 * k], sc[2 * k + 1]);
    for (int t = 0; t < NT; ++t) {
      const ActBlockQ8_256& xb = x[t][b];
      __m256i isum = scaled_dot4(q[0], loadu256(xb.q), scale[0]);
      for (int k = 1; k < 8; ++k) {
        isum = _mm256_add_epi32(isum, scaled_dot4(q[k], loadu256(xb.q + 32 * k), scale[k]));
      }
      const __m256i sums = _mm256_madd_epi16(loadu256(xb.bsums), second);
      if constexpr (kQ3) {
        isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(sums, 2));
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(isum), acc[t]);
      } else {
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(isum), acc[t]);
        acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xb.d), _mm256_cvtepi32_ps(sums), acc[t]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = hsum8(acc[t]);
}

// ---- 32-element blocks with signed weights (Q8_0, Q4_0, Q5_0): |w| · sign(x, w), as u8 · s8.

inline __m256i signed_q8_0(const std::byte* blk) {
  return loadu256(blk + 2);
}
inline __m256i signed_q4_0(const std::byte* blk) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
  const __m256i both = _mm256_setr_m128i(raw, _mm_srli_epi16(raw, 4));
  return _mm256_sub_epi8(_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), _mm256_set1_epi8(8));
}
// Bit j of a 32-bit mask as byte j: 0xFF or 0.
inline __m256i bits_to_bytes(uint32_t bits) {
#if LOCKSTEP_X86_VNNI
  return _mm256_movm_epi8(static_cast<__mmask32>(bits));  // AVX512BW + VL
#else
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                        2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), shuf);
  const __m256i bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
  return _mm256_cmpeq_epi8(_mm256_or_si256(v, bit), _mm256_set1_epi64x(-1));
#endif
}
inline __m256i signed_q5_0(const std::byte* blk) {
  uint32_t qh;
  std::memcpy(&qh, blk + 2, sizeof qh);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 6));
  const __m256i both = _mm256_setr_m128i(raw, _mm_srli_epi16(raw, 4));
  const __m256i lo = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  // q - 16 = lo - 16 + 16·bit: where the fifth bit is clear, subtract 16.
  const __m256i minus = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(16));
  return _mm256_sub_epi8(lo, minus);
}

// Per block and token: one integer dot, one conversion, one FMA; the weight scale is broadcast
// once per block and multiplied by the token's scale broadcast from memory. (Reducing 8 blocks'
// dots to one vector first to share the conversion and FMA measured slower: the horizontal
// adds cost more than they save.)
template <__m256i (*Load)(const std::byte*), size_t kBytes, int NT>
void signed32_tile(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res) {
  const uint64_t nb = a.cols / 32;
  Q8_32Row x[NT];
  for (int t = 0; t < NT; ++t) x[t] = q8_32_row(a.x + (t0 + t) * a.x_row_bytes, nb);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  for (uint64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * kBytes;
    const __m256 d = _mm256_set1_ps(load_f16(blk));
    const __m256i w = Load(blk);
    const __m256i aw = _mm256_sign_epi8(w, w);
    for (int t = 0; t < NT; ++t) {
      const __m256i sx = _mm256_sign_epi8(loadu256(x[t].q + 32 * b), w);
      const __m256 p = _mm256_cvtepi32_ps(dot4(aw, sx));
      const __m256 dd = _mm256_mul_ps(d, _mm256_broadcast_ss(x[t].d + b));
      acc[t] = _mm256_fmadd_ps(dd, p, acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = hsum8(acc[t]);
}

// ---- 32-element blocks with a min (Q4_1, Q5_1): w = d·u + m, u unsigned; the m·Σx part uses the
// activation block's s = d_x·Σq and is summed apart from the vector lanes.

inline __m256i unsigned_q4_1(const std::byte* blk) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 4));
  const __m256i both = _mm256_setr_m128i(raw, _mm_srli_epi16(raw, 4));
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}
inline __m256i unsigned_q5_1(const std::byte* blk) {
  uint32_t qh;
  std::memcpy(&qh, blk + 4, sizeof qh);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 8));
  const __m256i both = _mm256_setr_m128i(raw, _mm_srli_epi16(raw, 4));
  const __m256i lo = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  return _mm256_or_si256(lo, _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
}

template <__m256i (*Load)(const std::byte*), size_t kBytes, int NT>
void unsigned32_tile(const MatmulArgs& a, const std::byte* wrow, uint64_t t0, float* res) {
  const uint64_t nb = a.cols / 32;
  Q8_32Row x[NT];
  for (int t = 0; t < NT; ++t) x[t] = q8_32_row(a.x + (t0 + t) * a.x_row_bytes, nb);
  __m256 acc[NT];
  float acc_min[NT];
  for (int t = 0; t < NT; ++t) {
    acc[t] = _mm256_setzero_ps();
    acc_min[t] = 0.0f;
  }
  for (uint64_t b = 0; b < nb; ++b) {
    const std::byte* blk = wrow + b * kBytes;
    const __m256 d = _mm256_set1_ps(load_f16(blk));
    const float m = load_f16(blk + 2);
    const __m256i u = Load(blk);
    for (int t = 0; t < NT; ++t) {
      const __m256 p = _mm256_cvtepi32_ps(dot4(u, loadu256(x[t].q + 32 * b)));
      const __m256 dd = _mm256_mul_ps(d, _mm256_broadcast_ss(x[t].d + b));
      acc[t] = _mm256_fmadd_ps(dd, p, acc[t]);
      acc_min[t] = __builtin_fmaf(m, x[t].s[b], acc_min[t]);
    }
  }
  for (int t = 0; t < NT; ++t) res[t] = hsum8(acc[t]) + acc_min[t];
}

// ---- Float weights: W widened to f32, products fused (FMA).

enum class FloatKind { F32, F16, BF16 };

template <FloatKind K>
inline typename VF::V load_w(const std::byte* row, uint64_t i) {
  if constexpr (K == FloatKind::F32) {
    return VF::load(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (K == FloatKind::F16) {
    return VF::load_f16(row + 2 * i);
  } else {
    return VF::load_bf16(row + 2 * i);
  }
}
template <FloatKind K>
inline float load_w1(const std::byte* row, uint64_t i) {
  if constexpr (K == FloatKind::F32) {
    float f;
    std::memcpy(&f, row + 4 * i, sizeof f);
    return f;
  } else if constexpr (K == FloatKind::F16) {
    return load_f16(row + 2 * i);
  } else {
    return load_bf16(row + 2 * i);
  }
}

// MR rows × NT tokens per tile, one running vector per (row, token): each weight vector is loaded
// once for NT tokens and each activation vector once for MR rows, which keeps long rows from
// being bound by L2 bandwidth. Every (row, token) pair sees the same sequence of FMAs whatever
// tile it is computed in (a tile of 1×1 included), so tiling never changes a result.
template <FloatKind K, int MR, int NT>
void float_tile(const MatmulArgs& a, uint64_t r, uint64_t t0, float* res) {  // res [MR][NT]
  constexpr uint64_t L = VF::kLanes;
  const std::byte* w[MR];
  for (int m = 0; m < MR; ++m) w[m] = a.w + (r + m) * a.w_row_bytes;
  const float* x[NT];
  act_rows(a, t0, x);
  typename VF::V acc[MR][NT];
  for (int m = 0; m < MR; ++m) {
    for (int t = 0; t < NT; ++t) acc[m][t] = VF::zero();
  }
  uint64_t i = 0;
  for (; i + L <= a.cols; i += L) {
    typename VF::V xv[NT];
    for (int t = 0; t < NT; ++t) xv[t] = VF::load(x[t] + i);
    for (int m = 0; m < MR; ++m) {
      const typename VF::V wv = load_w<K>(w[m], i);
      for (int t = 0; t < NT; ++t) acc[m][t] = VF::fma(wv, xv[t], acc[m][t]);
    }
  }
  float tail[MR][NT] = {};
  for (; i < a.cols; ++i) {
    for (int m = 0; m < MR; ++m) {
      const float wv = load_w1<K>(w[m], i);
      for (int t = 0; t < NT; ++t) tail[m][t] = __builtin_fmaf(wv, x[t][i], tail[m][t]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int t = 0; t < NT; ++t) res[m * NT + t] = VF::hsum(acc[m][t]) + tail[m][t];
  }
}

template <FloatKind K, int MR>
void float_rows(const MatmulArgs& a, uint64_t r, uint64_t c0, uint64_t c1, float* res) {
  uint64_t t = c0;
  for (; t + kFloatTile <= c1; t += kFloatTile) {
    float_tile<K, MR, kFloatTile>(a, r, t, res);
    for (int m = 0; m < MR; ++m) {
      for (int i = 0; i < kFloatTile; ++i) a.y[(t + i) * a.ldy + r + m] = res[m * kFloatTile + i];
    }
  }
  for (; t < c1; ++t) {
    float_tile<K, MR, 1>(a, r, t, res);
    for (int m = 0; m < MR; ++m) a.y[t * a.ldy + r + m] = res[m];
  }
}

template <FloatKind K>
void drive_float(const MatmulArgs& a) {
  const uint64_t fit = kTokenChunkBytes / (a.x_row_bytes > 0 ? a.x_row_bytes : 1);
  const uint64_t chunk = fit / kFloatTile * kFloatTile > kFloatTile ? fit / kFloatTile * kFloatTile
                                                                    : kFloatTile;
  float res[kFloatRows * kFloatTile];
  for (uint64_t c0 = 0; c0 < a.tokens; c0 += chunk) {
    const uint64_t c1 = min_u64(a.tokens, c0 + chunk);
    uint64_t r = a.r0;
    // A single token (decode) streams one row at a time: measured faster than interleaving rows.
    if (c1 - c0 > 1) {
      for (; r + kFloatRows <= a.r1; r += kFloatRows) float_rows<K, kFloatRows>(a, r, c0, c1, res);
    }
    for (; r < a.r1; ++r) float_rows<K, 1>(a, r, c0, c1, res);
  }
}

// ---- Entry points.

bool matmul_impl(const MatmulArgs& a) {
  using formats::GgmlType;
  switch (a.type) {
    case GgmlType::F32: drive_float<FloatKind::F32>(a); return true;
    case GgmlType::F16: drive_float<FloatKind::F16>(a); return true;
    case GgmlType::BF16: drive_float<FloatKind::BF16>(a); return true;
    case GgmlType::Q4_K:
      drive<kQuantTile>(a, q45_k_tile<false, kQuantTile>, q45_k_tile<false, 1>);
      return true;
    case GgmlType::Q5_K:
      drive<kQuantTile>(a, q45_k_tile<true, kQuantTile>, q45_k_tile<true, 1>);
      return true;
    case GgmlType::Q2_K:
      drive<kQuantTile>(a, q23_k_tile<false, kQuantTile>, q23_k_tile<false, 1>);
      return true;
    case GgmlType::Q3_K:
      drive<kQuantTile>(a, q23_k_tile<true, kQuantTile>, q23_k_tile<true, 1>);
      return true;
    case GgmlType::Q6_K:
      drive<kQuantTile>(a, q6_k_tile<kQuantTile>, q6_k_tile<1>);
      return true;
    case GgmlType::Q8_0:
      drive<kQuantTile>(a, signed32_tile<signed_q8_0, 34, kQuantTile>,
                        signed32_tile<signed_q8_0, 34, 1>);
      return true;
    case GgmlType::Q4_0:
      drive<kQuantTile>(a, signed32_tile<signed_q4_0, 18, kQuantTile>,
                        signed32_tile<signed_q4_0, 18, 1>);
      return true;
    case GgmlType::Q5_0:
      drive<kQuantTile>(a, signed32_tile<signed_q5_0, 22, kQuantTile>,
                        signed32_tile<signed_q5_0, 22, 1>);
      return true;
    case GgmlType::Q4_1:
      drive<kQuantTile>(a, unsigned32_tile<unsigned_q4_1, 20, kQuantTile>,
                        unsigned32_tile<unsigned_q4_1, 20, 1>);
      return true;
    case GgmlType::Q5_1:
      drive<kQuantTile>(a, unsigned32_tile<unsigned_q5_1, 24, kQuantTile>,
                        unsigned32_tile<unsigned_q5_1, 24, 1>);
      return true;
    default: return false;
  }
}

float dot_f32_impl(const float* a, const float* b, uint64_t n) {
  constexpr uint64_t L = VF::kLanes;
  constexpr int kU = 4;
  typename VF::V acc[kU];
  for (int u = 0; u < kU; ++u) acc[u] = VF::zero();
  uint64_t i = 0;
  for (; i + kU * L <= n; i += kU * L) {
    for (int u = 0; u < kU; ++u) {
      acc[u] = VF::fma(VF::load(a + i + u * L), VF::load(b + i + u * L), acc[u]);
    }
  }
  for (; i + L <= n; i += L) acc[0] = VF::fma(VF::load(a + i), VF::load(b + i), acc[0]);
  float tail = 0.0f;
  for (; i < n; ++i) tail = __builtin_fmaf(a[i], b[i], tail);
  return VF::hsum(VF::add(VF::add(acc[0], acc[1]), VF::add(acc[2], acc[3]))) + tail;
}

void axpy_f32_impl(float alpha, const float* x, float* y, uint64_t n) {
  constexpr uint64_t L = VF::kLanes;
  const typename VF::V va = VF::set1(alpha);
  uint64_t i = 0;
  for (; i + L <= n; i += L) VF::store(y + i, VF::fma(va, VF::load(x + i), VF::load(y + i)));
  for (; i < n; ++i) y[i] = __builtin_fmaf(alpha, x[i], y[i]);
}
