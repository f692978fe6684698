// AVX-512F build of the CPU kernels: 16-float vectors, 32 vector registers (larger register
// blocks), mask registers for channel tails. Same structure as kernels_avx2.cpp: every header is
// included before the target pragma, and callers reach this code through avx512_kernels() after
// checking the CPU (see isa.cpp).
#include <cstddef>
#include <cstdint>

#include "kernels.h"

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
constexpr int kVecRegs = 32;
constexpr bool kShapeKernels = true;

inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset1(float s) { return _mm512_set1_ps(s); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }

// Lanes [0, n) set, 0 < n <= 16. Masked lanes are neither read nor written (loads give 0).
inline __mmask16 lane_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline vf vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lane_mask(n), p); }
inline void vstore_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, lane_mask(n), v); }

inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }

// p[0..32) -> even = p[0], p[2], ..., p[30]; odd = p[1], p[3], ..., p[31].
inline void vdeinterleave2(const float* p, vf& even, vf& odd) {
  const vf a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  even = _mm512_permutex2var_ps(a, ie, b);
  odd = _mm512_permutex2var_ps(a, io, b);
}

#include "kernels_impl.h"

// NCHW rows of at most 8 outputs would leave half of every 16-lane vector idle; the 8-lane
// kernels do them with the same number of instructions.
void dw_nchw_any_width(const DwArgs& a, int64_t begin, int64_t end) {
  if (a.p.OW <= 8) return avx2_kernels().dw_nchw(a, begin, end);
  dw_nchw(a, begin, end);
}

}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table = [] {
    KernelTable t = kTable;
    t.dw_nchw = dw_nchw_any_width;
    return t;
  }();
  return table;
}

}  // namespace cpu
}  // namespace mnv3

#pragma GCC diagnostic pop
#pragma GCC pop_options

#else  // not x86: isa.cpp never selects AVX-512 here

namespace mnv3 {
namespace cpu {
const KernelTable& avx512_kernels() { return portable_kernels(); }
}  // namespace cpu
}  // namespace mnv3

#endif
