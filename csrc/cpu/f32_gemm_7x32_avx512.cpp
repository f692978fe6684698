// AVX-512F pointwise (1x1) conv kernels: register tiles of 7 rows x 32 floats (two vectors; 14
// accumulators of 32 registers; the x element is a broadcast memory operand of the FMA). Seven
// rows divide every MobileNetV3 output size (112, 56, 28, 14 and 7 squared), so batch-1 NHWC calls
// have no row tail. Reached through pointwise_avx512() after isa.cpp checked the CPU.
#include <cstdint>

#include "pointwise.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass an undefined vector as the unused merge source, which
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace mnv3 {
namespace cpu {
namespace {

using vf = __m512;
constexpr int VL = 16;
constexpr int MR = 7;
constexpr int NV = 2;

inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset1(float s) { return _mm512_set1_ps(s); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }  // b if either is NaN
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }  // b if either is NaN
inline __mmask16 lane_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }  // n <= 16
inline vf vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lane_mask(n), p); }
inline void vstore_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, lane_mask(n), v); }

#include "f32_gemm_impl.h"

}  // namespace

const PointwiseKernels& pointwise_avx512() { return kPointwise; }

}  // namespace cpu
}  // namespace mnv3

#pragma GCC diagnostic pop
#pragma GCC pop_options

#else  // not x86: isa.cpp never selects AVX-512 here

namespace mnv3 {
namespace cpu {
const PointwiseKernels& pointwise_avx512() { return pointwise_portable(); }
}  // namespace cpu
}  // namespace mnv3

#endif
