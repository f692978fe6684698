// AVX-512F build of the squeeze-excite kernels (f32_squeeze_excite.h). Headers outside the
// namespaces come before the target pragma: only this file's code uses AVX-512F, reached through
// kernels() once isa.cpp has checked the CPU.
#include <cstdint>

#include "../kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass an undefined vector as the unused merge source, which
// -Wmaybe-uninitialized (and, for the horizontal sums of several rows at once, -Wuninitialized)
// reports at every inlined use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace mnv3 {
namespace cpu {
namespace avx512 {
namespace {

#include "../simd/avx512.h"
#include "f32_squeeze_excite.h"

}  // namespace

void se_plane_sums(const float* x, float* sums, int64_t hw, int64_t begin, int64_t end) {
  plane_sums(x, sums, hw, begin, end);
}
void se_pixel_sums(const float* x, float* sums, int64_t C, int64_t hw, int64_t c0, int64_t c1) {
  pixel_sums(x, sums, C, hw, c0, c1);
}
void se_fc1(const float* sums, float scale, const float* w1, const float* b1, float* hidden,
            int64_t N, int64_t C, int64_t R, int64_t r0, int64_t r1) {
  fc1_relu(sums, scale, w1, b1, hidden, N, C, R, r0, r1);
}
void se_fc2(const float* hidden, const float* w2, const float* b2, float* gate, int64_t N,
            int64_t C, int64_t R, int64_t c0, int64_t c1) {
  fc2_hardsigmoid(hidden, w2, b2, gate, N, C, R, c0, c1);
}
void se_scale_planes(const float* x, float* y, const float* s, int64_t hw, int64_t begin,
                     int64_t end) {
  scale_planes(x, y, s, hw, begin, end);
}
void se_scale_pixels(const float* x, float* y, const float* s, int64_t C, int64_t begin,
                     int64_t end) {
  scale_pixels(x, y, s, C, begin, end);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace mnv3

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
