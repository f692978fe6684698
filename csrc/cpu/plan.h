// Work decomposition of a dwconv_bn_act call (plain C++).
#pragma once

#include <cstdint>

#include "kernels.h"

namespace mnv3 {
namespace cpu {

struct DwPlan {
  int64_t items;  // work items of the call
  bool parallel;  // worth spreading over threads
};
// Sets a.tiles_per_block / a.row_block for this shape, the kernels' vector width
// (lanes) and the thread count.
DwPlan plan_dwconv(DwArgs& a, bool nhwc, int lanes, int64_t nthreads);

}  // namespace cpu
}  // namespace mnv3
