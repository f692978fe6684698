// Work decomposition of a dwconv_bn_act call (plain C++): which kernel path runs, and how its
// output is cut into items.
#pragma once

#include <cstdint>

#include "../common/dwconv_params.h"

namespace mnv3 {
namespace cpu {

// The depthwise kernel paths (kernels/f32_dwconv_*.h).
enum class DwPath {
  NhwcRows,    // NHWC: rows read in place
  NhwcWindow,  // NHWC, narrow outputs: the item's input window copied to zero-padded scratch
  NchwPlanes,  // NCHW: per plane, rows copied to zero-padded (stride-phase split) scratch
  NchwTiles,   // NCHW, narrow planes: channel tiles transposed through an NHWC window
};

// A tile is `lanes` consecutive channels (the vector width of the kernels). Items:
//   NhwcRows, NhwcWindow: (block of tiles_per_block tiles, n, block of row_block output rows)
//   NchwPlanes:           (n, c, block of row_block output rows)
//   NchwTiles:            (tile, n, block of row_block output rows)
struct DwPlan {
  DwPath path;
  int64_t tiles_per_block;  // NHWC paths; 1 otherwise
  int64_t row_block;
  int64_t items;  // work items of the call
  bool parallel;  // worth spreading over threads
};

DwPlan plan_dwconv(const DwConvParams& p, bool nhwc, int lanes, int64_t nthreads);

}  // namespace cpu
}  // namespace mnv3
