// Depthwise conv + bias + activation, NHWC (channels_last), paths NhwcRows and NhwcWindow of
// plan.cpp; the row kernels are in f32_dwconv_nhwc_rows.h.
#pragma once

#include "dwconv_shapes.h"
#include "f32_dwconv_nhwc_rows.h"

// An item is (tile block, n, block of row_block output rows); see plan.cpp. A tile is VL
// consecutive channels; the block's weights are packed per tile as [bias][tap 0][tap 1]...,
// VL floats each, and reused by all the items of the block that a thread runs in a row.
// Two ways to reach the input:
//  - direct: rows are read in place (taps on rows outside the image are skipped). Compile-time
//    shapes run input-reuse blocks over the whole row, the blocks at its ends skipping the
//    padding columns; run-time shapes read the interior in place and the few left/right border
//    pixels from a small zero-padded strip of scratch.
//  - window (narrow images, where border pixels are most of the row): the item's whole input
//    window goes to zero-padded scratch, and each output row is one register block.
// Windows everywhere measured up to 2x slower on wide images: there the copy costs as much as
// the taps; in place, 7-wide images at batch 1 were 1.4x slower than through the window.

// Input rows ih0.. and columns iw0.. (nr x nc, padding as zeros), tiles [t0, t1), into scr
// with cbw floats per pixel.
inline void nhwc_fill(const DwConvParams& p, const float* xb, int64_t ih0, int64_t iw0,
                      int64_t nr, int64_t nc, int64_t t0, int64_t t1, int64_t cbw, float* scr) {
  const int64_t C = p.C, nt = t1 - t0;
  const int64_t nfull = imin(nt, C / VL - t0);  // tiles with all VL channels real
  const int last_lanes = tile_lanes(C, t1 - 1);
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t ih = ih0 + r;
    const bool row_in = ih >= 0 && ih < p.H;
    float* dr = scr + r * nc * cbw;
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t iw = iw0 + j;
      float* d = dr + j * cbw;
      if (!row_in || iw < 0 || iw >= p.W) {
        for (int64_t tl = 0; tl < nt; ++tl) vstore(d + tl * VL, vzero());
        continue;
      }
      const float* s = xb + (ih * p.W + iw) * C + t0 * VL;
      int64_t tl = 0;
      for (; tl < nfull; ++tl) vstore(d + tl * VL, vload(s + tl * VL));
      if (tl < nt) vstore(d + tl * VL, vload_n(s + tl * VL, last_lanes));
    }
  }
}

// The window of the padded-window path: rows ih0.. (nr of them) of tiles [t0, t1), window
// column j holding input column j - PW; win_cols columns of cbw floats per pixel. Only input
// pixels and rows outside the image are written: the padding columns were zeroed once, when the
// scratch was allocated, and no item writes them.
inline void nhwc_window_fill(const DwConvParams& p, const float* xb, int64_t ih0, int64_t nr,
                             int64_t t0, int64_t t1, int64_t cbw, int64_t win_cols, float* win) {
  const int64_t C = p.C, nt = t1 - t0;
  const int64_t nfull = imin(nt, C / VL - t0);  // tiles with all VL channels real
  const int last_lanes = tile_lanes(C, t1 - 1);
  const int64_t iw_end = imin(p.W, win_cols - p.PW);
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t ih = ih0 + r;
    float* dr = win + r * win_cols * cbw;
    if (ih < 0 || ih >= p.H) {
      for (int64_t i = 0; i < win_cols * cbw; i += VL) vstore(dr + i, vzero());
      continue;
    }
    const float* sr = xb + ih * p.W * C + t0 * VL;
    for (int64_t iw = 0; iw < iw_end; ++iw) {
      const float* s = sr + iw * C;
      float* d = dr + (p.PW + iw) * cbw;
      int64_t tl = 0;
      for (; tl < nfull; ++tl) vstore(d + tl * VL, vload(s + tl * VL));
      if (tl < nt) vstore(d + tl * VL, vload_n(s + tl * VL, last_lanes));
    }
  }
}

template <int KH_, int KW_, int SW_, int DH_, int DW_>
void dw_nhwc_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const int64_t C = p.C;
  const int64_t KH = KH_ ? KH_ : p.KH;
  const int64_t ntiles = div_up(C, VL);
  const int64_t tpb = a.plan.tiles_per_block;
  const bool window = a.plan.path == DwPath::NhwcWindow;
  const int64_t span_h = (KH - 1) * p.DH + 1, span_w = (p.KW - 1) * p.DW + 1;
  const int64_t cbw = tpb * VL, wtile = VL * (1 + KH * p.KW);
  // Output columns whose taps all fall inside the row: [ow_lo, ow_hi).
  const int64_t ow_lo = imin(div_up(p.PW, p.SW), p.OW);
  const int64_t last = p.W - 1 + p.PW - (p.KW - 1) * p.DW;
  const int64_t ow_hi = imax(ow_lo, imin(p.OW, last < 0 ? 0 : last / p.SW + 1));
  // Scratch: the window of a full row block, or the wider of the two border strips; then the
  // packed weights.
  const int64_t win_cols = (p.OW - 1) * p.SW + span_w;
  const int64_t strip_px = imax(ow_lo, p.OW - ow_hi);
  const int64_t scr_floats =
      window ? ((a.plan.row_block - 1) * p.SH + span_h) * win_cols * cbw
               : (strip_px > 0 ? span_h * ((strip_px - 1) * p.SW + span_w) * cbw : 0);
  AlignedScratch mem(scr_floats + tpb * wtile);
  float* scr = mem.data;
  float* wpk = scr + scr_floats;
  if (window) {
    for (int64_t i = 0; i < scr_floats; i += VL) vstore(scr + i, vzero());
  }
  int64_t packed = -1;  // tile block whose weights are in wpk
  const int64_t rb = a.plan.row_block, nrb = div_up(p.OH, rb);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t tb = item / (p.N * nrb);
    const int64_t n = (item / nrb) % p.N;
    const int64_t oh0 = (item % nrb) * rb, oh1 = imin(p.OH, oh0 + rb);
    const int64_t t0 = tb * tpb, t1 = imin(ntiles, t0 + tpb);
    if (tb != packed) {
      nhwc_pack(a, t0, t1, wtile, wpk);
      packed = tb;
    }
    const float* xb = a.x + n * p.H * p.W * C;
    if (window) {
      const int64_t nr = (oh1 - oh0 - 1) * p.SH + span_h;
      nhwc_window_fill(p, xb, oh0 * p.SH - p.PH, nr, t0, t1, cbw, win_cols, scr);
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const NhwcFrame f{scr, win_cols * cbw, cbw, (oh - oh0) * p.SH, 0, KH, C, 0, 0, kNoEdge};
        float* yrow = a.y + (n * p.OH + oh) * p.OW * C + t0 * VL;
        nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yrow, p.OW, false, a.act);
      }
      continue;
    }
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      float* yrow = a.y + (n * p.OH + oh) * p.OW * C + t0 * VL;
      const int64_t ih_first = oh * p.SH - p.PH;
      // Taps kh in [kh0, kh1) fall inside the image.
      const int64_t kh0 = ih_first >= 0 ? 0 : div_up(-ih_first, p.DH);
      const int64_t kh1 = ih_first > p.H - 1 ? 0 : imin(KH, (p.H - 1 - ih_first) / p.DH + 1);
      if (kh1 <= kh0) {  // every tap is padding: the whole row is the bias
        const NhwcFrame f{scr, 0, cbw, 0, 0, 0, C, 0, 0, kNoEdge};
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yrow + ow * C, 1, false, a.act);
        }
        continue;
      }
      // Rows below the image are not prefetched.
      const int64_t ahead = imax(0, imin(p.SH, p.H - (ih_first + (KH - 1) * p.DH + 1)));
      if constexpr (KW_ > 0 && SW_ > 0 && DH_ > 0 && DW_ > 0) {
        // The whole row in place; the blocks at its ends skip the padding columns.
        const NhwcFrame f{xb + t0 * VL, p.W * C, C, ih_first, kh0, kh1, C, ahead, -p.PW, p.W};
        nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yrow, p.OW, true, a.act);
        continue;
      }
      if (ow_hi > ow_lo) {
        const NhwcFrame f{xb + (ow_lo * p.SW - p.PW) * C + t0 * VL, p.W * C, C, ih_first, kh0, kh1, C,
                          ahead, 0, kNoEdge};
        nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yrow + ow_lo * C, ow_hi - ow_lo,
                                     true, a.act);
      }
      const int64_t strips[2][2] = {{0, ow_lo}, {ow_hi, p.OW}};
      for (const auto& s : strips) {
        if (s[1] <= s[0]) continue;
        const int64_t nc = (s[1] - s[0] - 1) * p.SW + span_w;
        nhwc_fill(p, xb, ih_first, s[0] * p.SW - p.PW, span_h, nc, t0, t1, cbw, scr);
        const NhwcFrame f{scr, nc * cbw, cbw, 0, 0, KH, C, 0, 0, kNoEdge};
        nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yrow + s[0] * C, s[1] - s[0], false,
                                     a.act);
      }
    }
  }
}

void dwconv_nhwc(const DwArgs& a, int64_t begin, int64_t end) {
  const auto fixed = [&]<int K, int S, int D>() { dw_nhwc_items<K, K, S, D, D>(a, begin, end); };
  if (!with_dw_shape(a.p, fixed)) dw_nhwc_items<0, 0, 0, 0, 0>(a, begin, end);
}
