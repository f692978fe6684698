// AVX2+FMA vector primitives: 8-float vectors, 16 vector registers. Not a normal header: a
// translation unit compiled for AVX2 (kernels/*_avx2.cpp, after `#pragma GCC target`) includes
// it inside `namespace mnv3::cpu::avx2 { namespace {`, then the kernel headers that use it.
// See simd/portable.h for the list of primitives every ISA provides.
using vf = __m256;
constexpr int VL = 8;
static_assert(VL == kLanes, "kernels.h and simd/avx2.h disagree on the vector width");
constexpr int kVecRegs = 16;
constexpr bool kShapeKernels = true;

inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
// A non-temporal store (straight to memory, no read for ownership): p is 32-byte aligned.
inline void vstream(float* p, vf v) { _mm256_stream_ps(p, v); }
inline void vstream_fence() { _mm_sfence(); }
inline vf vset1(float s) { return _mm256_set1_ps(s); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
// b when either operand is NaN (kernels/f32_activation.h orders the clamps on this).
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
// Pins a loaded value to a register: without it GCC folds the load back into every FMA that
// uses it, which re-reads memory once per use and defeats the input reuse of the kernels.
inline vf vkeep(vf v) {
  asm("" : "+x"(v));
  return v;
}

// Lanes [0, n) set, 0 < n <= 8.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// Masked lanes are neither read nor written, so partial tiles never touch memory past the end.
inline vf vload_n(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(n)); }
// A masked store (vmaskmovps) costs ~6x a plain one on AMD cores; 4-, 2- and 1-float pieces
// write the same lanes at the price of at most three plain stores.
__attribute__((always_inline)) inline void vstore_n(float* p, vf v, int n) {
  if (n >= 8) return _mm256_storeu_ps(p, v);
  __m128 part = _mm256_castps256_ps128(v);
  if (n & 4) {
    _mm_storeu_ps(p, part);
    part = _mm256_extractf128_ps(v, 1);
    p += 4;
  }
  if (n & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
    part = _mm_movehl_ps(part, part);
    p += 2;
  }
  if (n & 1) _mm_store_ss(p, part);
}

inline float vhsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [lo, hi) from p[lo..hi), the others 0 (and not read): 0 <= lo <= hi <= 8.
inline vf vload_span(const float* p, int lo, int hi) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(hi), idx),
                                      _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(lo - 1)));
  return _mm256_maskload_ps(p, in);
}

// (a, b) = x[0..16) -> even = x[0], x[2], ..., x[14]; odd = x[1], x[3], ..., x[15].
inline void vdeinterleave2(vf a, vf b, vf& even, vf& odd) {
  const vf e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  const vf o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

// v[i] = row i of an 8x8 block -> v[j] = column j.
// Always inlined: as a call, v[] lives in memory and every transpose stores and reloads its
// vectors (measured: narrow NCHW layers 2x slower).
__attribute__((always_inline)) inline void vtranspose(vf* v) {
  vf t[8], q[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  // Per 128-bit lane k, q[4h+m] holds column 4k+m of rows 4h..4h+3.
  for (int h = 0; h < 8; h += 4) {
    q[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);
    q[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xEE);
    q[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44);
    q[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    v[m] = _mm256_permute2f128_ps(q[m], q[4 + m], 0x20);
    v[4 + m] = _mm256_permute2f128_ps(q[m], q[4 + m], 0x31);
  }
}

