// Portable build of the NCHW wide-plane depthwise kernels (f32_dwconv_nchw_planes.h): plain C++ for
// the baseline ISA.
#include <cstdint>

#include "../kernels.h"

namespace mnv3 {
namespace cpu {
namespace portable {
namespace {

#include "../simd/portable.h"
#include "f32_dwconv_nchw_planes.h"

}  // namespace

void dw_nchw_planes(const DwArgs& a, int64_t begin, int64_t end) {
  dwconv_nchw_planes(a, begin, end);
}

}  // namespace portable
}  // namespace cpu
}  // namespace mnv3
