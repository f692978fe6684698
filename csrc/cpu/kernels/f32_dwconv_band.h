// Depthwise rows of a fused inverted-residual block (../inverted_residual.cpp): output rows
// computed from the block's row buffer, which holds expanded input rows with their left/right
// padding columns stored as zeros, so every output pixel reads in place (no border strips).
#pragma once

#include "dwconv_shapes.h"
#include "f32_dwconv_nhwc_rows.h"

// All of the weights, every tile packed as nhwc_pack does ([bias][tap 0][tap 1]..., VL floats
// each): done once per block call, shared by its threads.
inline void dwconv_band_pack_all(const DwBandArgs& a, float* dst) {
  DwArgs d{};
  d.p = a.p;
  d.w = a.w;
  d.b = a.b;
  const int64_t wtile = VL * (1 + a.p.KH * a.p.KW);
  nhwc_pack(d, 0, div_up(a.p.C, VL), wtile, dst);
}

template <int KW_, int SW_, int DH_, int DW_>
void dwconv_band_rows(const DwBandArgs& a) {
  const DwConvParams& p = a.p;
  const int64_t wtile = VL * (1 + p.KH * p.KW);
  const bool in_place = a.cols > 0;
  const int64_t pxs = a.pxs > 0 ? a.pxs : p.C;
  // Compile-time shapes: all the rows in one call, each tile over every row before the next
  // (NhwcFrame::nrows), so a tile's input rows are read from L2 once, not once per output row
  // that reads them. Measured on one core, rows in cache: 3x3 at 14x14 with 672 channels 67 ->
  // 78 GFLOP/s, 5x5 at 7x7 with 960 105 -> 122, 3x3 at 56 wide with 72 60 -> 65.
  if constexpr (KW_ > 0) {
    int64_t kh0, kh1;  // the first row's taps (the kernel finds the others')
    tap_rows(a.first, a.valid_lo, a.valid_hi, p.KH, p.DH, kh0, kh1);
    NhwcFrame f{a.frame + a.t0 * VL, a.rowp, pxs, a.first, kh0, kh1, p.C, 0,
                in_place ? a.col0 : 0, in_place ? a.cols : kNoEdge};
    f.nrows = a.rows;
    f.ystep = a.ldy;
    f.vlo = a.valid_lo;
    f.vhi = a.valid_hi;
    f.sums = a.sums != nullptr ? a.sums + a.t0 * VL : nullptr;
    return nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, a.wpk + a.t0 * wtile, a.t0, a.t1,
                                        a.y + a.t0 * VL, p.OW, true, a.act);
  }
  for (int64_t j = 0; j < a.rows; ++j) {
    const int64_t r0 = a.first + j * p.SH;  // buffer row of the output row's first tap
    int64_t kh0, kh1;  // taps on rows of the image; the others are padding
    tap_rows(r0, a.valid_lo, a.valid_hi, p.KH, p.DH, kh0, kh1);
    const NhwcFrame f{a.frame + a.t0 * VL, a.rowp, pxs, r0, kh0, kh1, p.C, 0,
                      in_place ? a.col0 : 0, in_place ? a.cols : kNoEdge};
    nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, a.wpk + a.t0 * wtile, a.t0, a.t1,
                                 a.y + j * a.ldy + a.t0 * VL, p.OW, true, a.act);
  }
}

// Whether the compile-time kernels of this shape exist: they skip padding columns, so they can
// read the rows of the input in place (the run-time-shape kernels need zero-padded rows).
bool dwconv_band_in_place(const DwConvParams& p) {
  return with_dw_shape(p, []<int K, int S, int D>() {});
}

void dwconv_band(const DwBandArgs& a) {
  const auto fixed = [&]<int K, int S, int D>() { dwconv_band_rows<K, S, D, D>(a); };
  if (!with_dw_shape(a.p, fixed)) dwconv_band_rows<0, 0, 0, 0>(a);
}
