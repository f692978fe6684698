// Portable pointwise (1x1) and stem conv kernels: register tiles of 4 rows x 16 floats, as
// 8-float arrays that the compiler vectorizes for the baseline ISA of the build. Correct
// everywhere, not tuned.
#include <cstdint>

#include "../kernels.h"
#include "../pointwise.h"

namespace mnv3 {
namespace cpu {
namespace portable {
namespace {

#include "../simd/portable.h"
constexpr int MR = 4;
constexpr int NV = 2;
constexpr int WR = 0;  // no two-panel tiles (f32_gemm.h)
#include "f32_gemm.h"

}  // namespace
}  // namespace portable

const PointwiseKernels& pointwise_portable() { return portable::kPointwise; }

}  // namespace cpu
}  // namespace mnv3
