// AVX2+FMA pointwise (1x1) and stem conv kernels: register tiles of 6 rows x 16 floats (two
// vectors; 12 accumulators, 2 weight vectors and the broadcast x element fill the 16 registers);
// a 32-channel panel is walked in two 16-channel slices. Reached through pointwise_kernels()
// after isa.cpp checked the CPU.
#include <cstdint>

#include "../kernels.h"
#include "../pointwise.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace mnv3 {
namespace cpu {
namespace avx2 {
namespace {

#include "../simd/avx2.h"
constexpr int MR = 6;
constexpr int NV = 2;
constexpr int WR = 0;  // no two-panel tiles (f32_gemm.h)
#include "f32_gemm.h"

}  // namespace
}  // namespace avx2

const PointwiseKernels& pointwise_avx2() { return avx2::kPointwise; }

}  // namespace cpu
}  // namespace mnv3
#pragma GCC pop_options

#else  // not x86: isa.cpp never selects avx2 here

namespace mnv3 {
namespace cpu {
const PointwiseKernels& pointwise_avx2() { return pointwise_portable(); }
}  // namespace cpu
}  // namespace mnv3

#endif
