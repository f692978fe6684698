// AVX-512F vector primitives: 16-float vectors, 32 vector registers (larger register blocks),
// mask registers for channel tails. Not a normal header: a translation unit compiled for
// AVX-512 (kernels/*_avx512.cpp, after `#pragma GCC target`) includes it inside
// `namespace mnv3::cpu::avx512 { namespace {`, then the kernel headers that use it. Everything
// is internal to that unit; see simd/portable.h for the list of primitives every ISA provides.
using vf = __m512;
constexpr int VL = 16;
static_assert(VL == kLanes, "kernels.h and simd/avx512.h disagree on the vector width");
constexpr int kVecRegs = 32;
constexpr bool kShapeKernels = true;

inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
// A non-temporal store (straight to memory, no read for ownership): p is 64-byte aligned.
inline void vstream(float* p, vf v) { _mm512_stream_ps(p, v); }
// Orders the streaming stores before whatever the thread does next (a barrier, a return).
inline void vstream_fence() { _mm_sfence(); }
inline vf vset1(float s) { return _mm512_set1_ps(s); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
// b when either operand is NaN (kernels/f32_activation.h orders the clamps on this).
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
// Pins a loaded value to a register: without it GCC folds the load back into every FMA that
// uses it, which re-reads memory once per use and defeats the input reuse of the kernels.
inline vf vkeep(vf v) {
  asm("" : "+v"(v));
  return v;
}

// Lanes [0, n) set, 0 < n <= 16. Masked lanes are neither read nor written (loads give 0).
inline __mmask16 lane_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }  // n <= 16
inline vf vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lane_mask(n), p); }
inline void vstore_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, lane_mask(n), v); }

inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }

// Pair tiles (kernels/f32_gemm.h): a slice of at most 8 output channels, each vector holding the
// products of two consecutive input channels k, k + 1 (lanes 2j, 2j + 1: output channel j).
#define MNV3_PAIR_TILES 1
// [p[0], p[1]] in every lane pair: one 8-byte broadcast load (x[m, k], x[m, k + 1]).
inline vf vpair_x(const float* p) {
  return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd(reinterpret_cast<const double*>(p))));
}
// [a[0], b[0], a[1], b[1], ..., a[7], b[7]] from 8 floats at a and at b (weight rows k, k + 1).
inline vf vpair_w(const float* a, const float* b) {
  const __m512i inter = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  return _mm512_permutex2var_ps(_mm512_castps256_ps512(_mm256_loadu_ps(a)), inter,
                                _mm512_castps256_ps512(_mm256_loadu_ps(b)));
}
// The last input channel of an odd K: s * [a[0], -, a[1], -, ...] into the even lanes only (the
// odd lanes keep their sums, so an infinite s cannot turn an unused lane into NaN).
inline vf vpair_fma_even(float s, const float* a, vf acc) {
  const __m512i spread = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const vf w = _mm512_permutexvar_ps(spread, _mm512_castps256_ps512(_mm256_loadu_ps(a)));
  return _mm512_mask3_fmadd_ps(_mm512_set1_ps(s), w, acc, static_cast<__mmask16>(0x5555));
}
// Lanes 0..7: the pair sums (lane 2j + lane 2j + 1); lanes 8..15 unspecified.
inline vf vpair_sum(vf v) {
  const __m512i evens_odds =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const vf t = _mm512_permutexvar_ps(evens_odds, v);
  return _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0x4E));
}

// Lanes [lo, hi) from p[lo..hi), the others 0 (and not read): 0 <= lo <= hi <= 16.
inline vf vload_span(const float* p, int lo, int hi) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>(lane_mask(hi) & ~lane_mask(lo)), p);
}

// (a, b) = x[0..32) -> even = x[0], x[2], ..., x[30]; odd = x[1], x[3], ..., x[31].
inline void vdeinterleave2(vf a, vf b, vf& even, vf& odd) {
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  even = _mm512_permutex2var_ps(a, ie, b);
  odd = _mm512_permutex2var_ps(a, io, b);
}

// v[i] = row i of a 16x16 block -> v[j] = column j: four rounds of 16 shuffles.
// Always inlined: as a call, v[] lives in memory and every transpose stores and reloads its
// vectors (measured: narrow NCHW layers 2x slower).
__attribute__((always_inline)) inline void vtranspose(vf* v) {
  vf t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(v[i], v[i + 1]);
  }
  // Per 128-bit lane k of group g (rows 4g..4g+3), u[4g+m] holds column 4k+m.
  vf u[16];
  for (int g = 0; g < 16; g += 4) {
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    u[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // 4x4 transpose of 128-bit lanes across the groups, for each m.
  for (int m = 0; m < 4; ++m) {
    const vf a0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44);
    const vf a1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xEE);
    const vf a2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const vf a3 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xEE);
    v[m] = _mm512_shuffle_f32x4(a0, a2, 0x88);
    v[4 + m] = _mm512_shuffle_f32x4(a0, a2, 0xDD);
    v[8 + m] = _mm512_shuffle_f32x4(a1, a3, 0x88);
    v[12 + m] = _mm512_shuffle_f32x4(a1, a3, 0xDD);
  }
}

