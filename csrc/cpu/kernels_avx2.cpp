// AVX2+FMA build of the CPU kernels. Every header is included before the target pragma, so only
// the code of this file (all of it internal) is compiled for AVX2; callers reach it through
// avx2_kernels() after checking the CPU (see isa.cpp).
#include <cstddef>
#include <cstdint>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mnv3 {
namespace cpu {
namespace {

using vf = __m256;
constexpr int VL = 8;
constexpr int kVecRegs = 16;
constexpr bool kShapeKernels = true;

inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset1(float s) { return _mm256_set1_ps(s); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }

// Lanes [0, n) set, 0 < n <= 8.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// Masked lanes are neither read nor written, so partial tiles never touch memory past the end.
inline vf vload_n(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(n)); }
inline void vstore_n(float* p, vf v, int n) { _mm256_maskstore_ps(p, lane_mask(n), v); }

inline float vhsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// p[0..16) -> even = p[0], p[2], ..., p[14]; odd = p[1], p[3], ..., p[15].
inline void vdeinterleave2(const float* p, vf& even, vf& odd) {
  const vf a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
  const vf e = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));  // a0 a2 b0 b2 | a4 a6 b4 b6
  const vf o = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}

#include "kernels_impl.h"

}  // namespace

const KernelTable& avx2_kernels() { return kTable; }

}  // namespace cpu
}  // namespace mnv3

#pragma GCC pop_options

#else  // not x86: isa.cpp never selects AVX2 here

namespace mnv3 {
namespace cpu {
const KernelTable& avx2_kernels() { return portable_kernels(); }
}  // namespace cpu
}  // namespace mnv3

#endif
