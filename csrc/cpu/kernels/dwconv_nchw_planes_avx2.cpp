// AVX2+FMA build of the NCHW wide-plane depthwise kernels (f32_dwconv_nchw_planes.h). Headers
// outside the namespaces come before the target pragma: only this file's code uses AVX2+FMA,
// reached through kernels() once isa.cpp has checked the CPU.
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
#include "f32_dwconv_nchw_planes.h"

}  // namespace

void dw_nchw_planes(const DwArgs& a, int64_t begin, int64_t end) {
  dwconv_nchw_planes(a, begin, end);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace mnv3

#pragma GCC pop_options
#endif
