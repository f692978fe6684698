// Work decomposition of a dwconv_bn_act call (plain C++, no torch): how the output is cut into
// items, and whether threading pays off.
#include <cstdint>

#include "plan.h"

namespace mnv3 {
namespace cpu {

namespace {
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t lmin(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t lmax(int64_t a, int64_t b) { return a > b ? a : b; }

// Below this many multiply-adds a call runs on the calling thread: an OpenMP fork/join costs
// several microseconds, about what one Zen3 core needs for this much depthwise work.
constexpr int64_t kSerialMacs = 1 << 17;
}  // namespace

void pack_nhwc_weights(const float* w, const float* b, int64_t C, int64_t KK, float* dst) {
  const int64_t ntiles = cdiv(C, 8);
  for (int64_t t = 0; t < ntiles; ++t) {
    float* d = dst + t * 8 * (1 + KK);
    for (int64_t l = 0; l < 8; ++l) {
      const int64_t c = t * 8 + l;
      const bool in = c < C;
      d[l] = in && b != nullptr ? b[c] : 0.0f;
      for (int64_t tap = 0; tap < KK; ++tap) d[8 + tap * 8 + l] = in ? w[c * KK + tap] : 0.0f;
    }
  }
}

DwPlan plan_dwconv(DwArgs& a, bool nhwc, int64_t nthreads) {
  const DwConvParams& p = a.p;
  DwPlan plan;
  const int64_t macs = p.N * p.C * p.OH * p.OW * p.KH * p.KW;
  plan.parallel = nthreads > 1 && macs >= kSerialMacs;
  const int64_t nt = plan.parallel ? nthreads : 1;
  if (nhwc) {
    // Rows are the work items; small-H layers also split channels so every thread gets work.
    const int64_t ntiles = cdiv(p.C, 8);
    const int64_t rows = p.N * p.OH;
    int64_t tpb = ntiles;
    if (plan.parallel && rows < 8 * nt) {
      const int64_t blocks = lmax(1, lmin(cdiv(8 * nt, rows), cdiv(ntiles, 3)));
      tpb = cdiv(cdiv(ntiles, blocks), 3) * 3;
    }
    a.tiles_per_block = tpb;
    a.row_block = 1;
    plan.items = rows * cdiv(ntiles, tpb);
  } else {
    // Row blocks keep a block's padded scratch within ~64 KB; planes are the work items, split
    // into row blocks when there are too few planes for the threads.
    const int64_t owv = cdiv(p.OW, 8) * 8;
    const int64_t row_len = p.SW * (owv + (p.KW - 1) * p.DW / p.SW + 1);
    const int64_t span = (p.KH - 1) * p.DH + 1;
    const int64_t budget_rows = 16384 / row_len;
    int64_t rb = budget_rows > span ? lmin(p.OH, (budget_rows - span) / p.SH + 1) : 1;
    const int64_t planes = p.N * p.C;
    if (plan.parallel && planes < 4 * nt) rb = lmin(rb, cdiv(p.OH, cdiv(4 * nt, planes)));
    if (rb < p.OH && rb > 4) rb = rb / 4 * 4;  // whole 4-row register blocks
    rb = lmax(rb, 1);
    a.row_block = rb;
    a.tiles_per_block = 1;
    plan.items = planes * cdiv(p.OH, rb);
  }
  return plan;
}

}  // namespace cpu
}  // namespace mnv3
