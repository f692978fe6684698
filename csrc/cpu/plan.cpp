// Work decomposition of a dwconv_bn_act call (plain C++, no torch): which kernel path runs, how
// the output is cut into items, and whether threading pays off.
#include <cstdint>

#include "plan.h"

namespace mnv3 {
namespace cpu {

namespace {
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t lmax(int64_t a, int64_t b) { return a > b ? a : b; }

// Below this many multiply-adds a call runs on the calling thread: an OpenMP fork/join costs
// several microseconds, about what one core needs for this much depthwise work.
constexpr int64_t kSerialMacs = 1 << 17;
// Floats of an item's scratch: small enough to stay in the core's L1/L2.
constexpr int64_t kScratchFloats = 16384;
// Threads are given at least this many items each, so uneven items still balance.
constexpr int64_t kItemsPerThread = 4;
// NHWC outputs at most this wide go through the padded window (kernels/f32_dwconv_nhwc.h).
constexpr int64_t kWindowMaxWidth = 8;

// NCHW outputs at most this wide go through transposed channel tiles
// (kernels/f32_dwconv_nchw_tiles.h). Measured on the MobileNetV3 layers (Zen 4, 8 and 16 lanes): up to 14-wide rows the tiles are as fast or
// faster at batch 1 and 8 (stride 2 up to 2x, as its plane kernels split every row into phases),
// while at 28-wide rows the plane kernels are 1.1-1.3x faster.
constexpr int64_t kTiledMaxWidth = 16;
}  // namespace

DwPlan plan_dwconv(const DwConvParams& p, bool nhwc, int lanes, int64_t nthreads) {
  DwPlan plan;
  const int64_t macs = p.N * p.C * p.OH * p.OW * p.KH * p.KW;
  plan.parallel = nthreads > 1 && macs >= kSerialMacs;
  const int64_t want_items = plan.parallel ? kItemsPerThread * nthreads : 1;
  const int64_t span_h = (p.KH - 1) * p.DH + 1;
  if (nhwc) {
    const int64_t ntiles = cdiv(p.C, lanes);
    if (p.OW <= kWindowMaxWidth) {
      plan.path = DwPath::NhwcWindow;
      // Three tiles are one register block; row blocks keep the window within the budget and
      // are split further when there are too few items for the threads.
      const int64_t tpb = lmin(ntiles, 3);
      const int64_t cols = (p.OW - 1) * p.SW + (p.KW - 1) * p.DW + 1;
      const int64_t rows = kScratchFloats / (cols * tpb * lanes);
      int64_t rb = rows > span_h ? lmin(p.OH, (rows - span_h) / p.SH + 1) : 1;
      const int64_t others = cdiv(ntiles, tpb) * p.N;
      if (others * cdiv(p.OH, rb) < want_items) {
        rb = lmin(rb, cdiv(p.OH, cdiv(want_items, others)));
      }
      plan.tiles_per_block = tpb;
      plan.row_block = lmax(rb, 1);
      plan.items = others * cdiv(p.OH, plan.row_block);
    } else {
      plan.path = DwPath::NhwcRows;
      // Items are output rows with all their channels, so every input row is read whole; rows
      // are too few for the threads only in small images, which then also split channels (in
      // whole three-tile register blocks).
      const int64_t rows = p.N * p.OH;
      int64_t tpb = ntiles;
      if (rows < want_items) {
        const int64_t blocks = lmax(1, lmin(cdiv(want_items, rows), cdiv(ntiles, 3)));
        tpb = cdiv(cdiv(ntiles, blocks), 3) * 3;
      }
      plan.tiles_per_block = tpb;
      plan.row_block = 1;
      plan.items = rows * cdiv(ntiles, tpb);
    }
  } else if (p.OW <= kTiledMaxWidth && p.C >= lanes / 2) {
    // Narrow planes go through transposed channel tiles: one tile per item,
    // row blocks sized like the NHWC window above.
    const int64_t ntiles = cdiv(p.C, lanes);
    const int64_t cols = (p.OW - 1) * p.SW + (p.KW - 1) * p.DW + 1;
    const int64_t rows = kScratchFloats / (cols * lanes);
    int64_t rb = rows > span_h ? lmin(p.OH, (rows - span_h) / p.SH + 1) : 1;
    const int64_t others = ntiles * p.N;
    if (others * cdiv(p.OH, rb) < want_items) rb = lmin(rb, cdiv(p.OH, cdiv(want_items, others)));
    plan.path = DwPath::NchwTiles;
    plan.tiles_per_block = 1;
    plan.row_block = lmax(rb, 1);
    plan.items = others * cdiv(p.OH, plan.row_block);
  } else {
    // Row blocks keep a block's padded scratch within the budget; planes are the work items,
    // split into row blocks when there are too few planes for the threads.
    const int64_t owv = cdiv(p.OW, lanes) * lanes;
    const int64_t row_len = p.SW * (owv + (p.KW - 1) * p.DW / p.SW + 1);
    const int64_t budget_rows = kScratchFloats / row_len;
    int64_t rb = budget_rows > span_h ? lmin(p.OH, (budget_rows - span_h) / p.SH + 1) : 1;
    const int64_t planes = p.N * p.C;
    if (planes < want_items) rb = lmin(rb, cdiv(p.OH, cdiv(want_items, planes)));
    if (rb < p.OH && rb > 8) rb = rb / 8 * 8;  // whole 8-row register blocks
    rb = lmax(rb, 1);
    plan.path = DwPath::NchwPlanes;
    plan.row_block = rb;
    plan.tiles_per_block = 1;
    plan.items = planes * cdiv(p.OH, rb);
  }
  return plan;
}

}  // namespace cpu
}  // namespace mnv3
