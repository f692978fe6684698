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

