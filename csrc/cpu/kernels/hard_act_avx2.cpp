// AVX2+FMA build of the hardswish / hardsigmoid kernel (f32_hard_act.h). Headers outside the
// namespaces come before the target pragma: only this file's code uses AVX2+FMA, reached through
// kernels() once isa.cpp has checked the CPU.
#include <cstdint>

#include "../kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mnv3 {
namespace cpu {
namespace avx2 {
namespace {

#include "../simd/avx2.h"
#include "f32_hard_act.h"

}  // namespace

void hard_act(const float* x, float* y, int64_t n, bool swish) {
  hard_activation(x, y, n, swish);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace mnv3

#pragma GCC pop_options
#endif
