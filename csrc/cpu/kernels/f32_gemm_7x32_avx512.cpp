// AVX-512F pointwise (1x1) and stem conv kernels: register tiles of 7 rows x 32 floats (two
// vectors; 14 accumulators of 32 registers; the x element a broadcast memory operand of the FMA).
// Seven rows divide every MobileNetV3 output size (112, 56, 28, 14 and 7 squared), so batch-1
// NHWC calls have no row tail. Two whole panels in a row take tiles of 6 rows x 64 floats
// instead (24 accumulators; the rows cut into near-equal tiles). Reached through
// pointwise_kernels() after isa.cpp checked the CPU.
#include <cstdint>
#include <memory>

#include "../kernels.h"
#include "../pointwise.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass an undefined vector as the unused merge source, which
// -Wmaybe-uninitialized (and, for the pair tiles' permutes, -Wuninitialized) reports at every
// inlined use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace mnv3 {
namespace cpu {
namespace avx512 {
namespace {

#include "../simd/avx512.h"
constexpr int MR = 7;
constexpr int NV = 2;
constexpr int WR = 6;  // two-panel tiles of 6 rows x 64 floats (f32_gemm.h)
#include "f32_gemm.h"

}  // namespace
}  // namespace avx512

const PointwiseKernels& pointwise_avx512() { return avx512::kPointwise; }

}  // namespace cpu
}  // namespace mnv3
#pragma GCC diagnostic pop
#pragma GCC pop_options

#else  // not x86: isa.cpp never selects avx512 here

namespace mnv3 {
namespace cpu {
const PointwiseKernels& pointwise_avx512() { return pointwise_portable(); }
}  // namespace cpu
}  // namespace mnv3

#endif
