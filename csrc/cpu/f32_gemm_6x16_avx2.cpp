// AVX2+FMA pointwise (1x1) conv kernels: register tiles of 6 rows x 16 floats (two vectors; 12
// accumulators, 2 weight vectors and the broadcast x element fill the 16 registers); a 32-channel
// panel is walked in two 16-channel slices. Reached through pointwise_avx2() after isa.cpp
// checked the CPU.
#include <cstdint>

#include "pointwise.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mnv3 {
namespace cpu {
namespace {

using vf = __m256;
constexpr int VL = 8;
constexpr int MR = 6;
constexpr int NV = 2;

inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset1(float s) { return _mm256_set1_ps(s); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }  // b if either is NaN
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }  // b if either is NaN
// Lanes [0, n) set, 0 <= n <= 8: masked lanes are neither read nor written.
inline __m256i lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf vload_n(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(n)); }
inline void vstore_n(float* p, vf v, int n) { _mm256_maskstore_ps(p, lane_mask(n), v); }

#include "f32_gemm_impl.h"

}  // namespace

const PointwiseKernels& pointwise_avx2() { return kPointwise; }

}  // namespace cpu
}  // namespace mnv3

#pragma GCC pop_options

#else  // not x86: isa.cpp never selects AVX2 here

namespace mnv3 {
namespace cpu {
const PointwiseKernels& pointwise_avx2() { return pointwise_portable(); }
}  // namespace cpu
}  // namespace mnv3

#endif
