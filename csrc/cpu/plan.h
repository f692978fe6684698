// Work decomposition of a dwconv_bn_act call and NHWC weight packing (plain C++).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace mnv3 {
namespace cpu {

// NHWC weight packing (see dw_nhwc_packed_floats); b may be null.
void pack_nhwc_weights(const float* w, const float* b, int64_t C, int64_t KK, float* dst);

struct DwPlan {
  int64_t items;  // work items of the call
  bool parallel;  // worth spreading over threads
};
// Sets a.tiles_per_block / a.row_block for this shape and thread count.
DwPlan plan_dwconv(DwArgs& a, bool nhwc, int64_t nthreads);

}  // namespace cpu
}  // namespace mnv3
