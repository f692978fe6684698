// Portable build of the hardswish / hardsigmoid kernel (f32_hard_act.h): plain C++ for the baseline
// ISA.
#include <cstdint>

#include "../kernels.h"

namespace mnv3 {
namespace cpu {
namespace portable {
namespace {

#include "../simd/portable.h"
#include "f32_hard_act.h"

}  // namespace

void hard_act(const float* x, float* y, int64_t n, bool swish) {
  hard_activation(x, y, n, swish);
}

}  // namespace portable
}  // namespace cpu
}  // namespace mnv3
