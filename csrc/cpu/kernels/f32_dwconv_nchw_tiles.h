// Depthwise conv + bias + activation, NCHW, narrow planes through channel tiles (path NchwTiles
// of plan.cpp).
#pragma once

#include "dwconv_shapes.h"
#include "f32_dwconv_nhwc_rows.h"

// An output row of 7 or 14 fills at most half of a vector, and is too short to amortize the
// per-row work of the plane kernels (f32_dwconv_nchw_planes.h). Here VL planes at a time are
// transposed in registers into a zero-padded NHWC window of one channel tile, computed by the
// NHWC row kernels, and the tile's outputs are transposed back: every vector is full. The planes
// of a row block are one contiguous range per channel, so the transposes run over flat
// VL-element chunks whatever the width. An item is (tile, n, block of row_block output rows);
// see plan.cpp.

template <int KH_, int KW_, int SW_, int DH_, int DW_>
void dw_nchw_tiled_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const int64_t C = p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  const int64_t KH = KH_ ? KH_ : p.KH;
  const int64_t span_h = (KH - 1) * p.DH + 1, span_w = (p.KW - 1) * p.DW + 1;
  const int64_t win_cols = (p.OW - 1) * p.SW + span_w;
  const int64_t rb = a.plan.row_block, nrb = div_up(p.OH, rb);
  const int64_t win_floats = ((rb - 1) * p.SH + span_h) * win_cols * VL;
  const int64_t out_floats = rb * p.OW * VL, wtile = VL * (1 + KH * p.KW);
  AlignedScratch mem(win_floats + out_floats + wtile);
  float* win = mem.data;
  float* yscr = win + win_floats;
  float* wpk = yscr + out_floats;
  // Padding columns are never written below, so they stay zero.
  for (int64_t i = 0; i < win_floats; i += VL) vstore(win + i, vzero());
  int64_t packed = -1;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t t = item / (p.N * nrb);
    const int64_t n = (item / nrb) % p.N;
    const int64_t oh0 = (item % nrb) * rb, oh1 = imin(p.OH, oh0 + rb);
    if (t != packed) {
      nhwc_pack(a, t, t + 1, wtile, wpk);
      packed = t;
    }
    const int nc = tile_lanes(C, t);
    const float* xs = a.x + (n * C + t * VL) * HW;
    // Window row r holds input row ih0 + r; rows outside the image are zeros.
    const int64_t ih0 = oh0 * p.SH - p.PH, nr = (oh1 - oh0 - 1) * p.SH + span_h;
    for (int64_t r = 0; r < nr; ++r) {
      if (ih0 + r >= 0 && ih0 + r < p.H) continue;
      float* row = win + r * win_cols * VL;
      for (int64_t i = 0; i < win_cols * VL; i += VL) vstore(row + i, vzero());
    }
    const int64_t lo = imax(ih0, 0) * p.W, hi = imin(ih0 + nr, p.H) * p.W;
    int64_t ih = imax(ih0, 0), iw = 0;
    for (int64_t f0 = lo; f0 < hi; f0 += VL) {
      const int nv = static_cast<int>(imin(VL, hi - f0));
      vf v[VL];
      for (int i = 0; i < VL; ++i) {
        const float* src = xs + i * HW + f0;
        v[i] = i >= nc ? vzero() : (nv == VL ? vload(src) : vload_n(src, nv));
      }
      vtranspose(v);
      for (int j = 0; j < nv; ++j) {
        if (p.PW + iw < win_cols) vstore(win + ((ih - ih0) * win_cols + p.PW + iw) * VL, v[j]);
        if (++iw == p.W) {
          iw = 0;
          ++ih;
        }
      }
    }
    if (item + 1 < end) {
      // The next item's planes, fetched while this one computes: VL short streams are too
      // short for the hardware prefetcher to pick up.
      const int64_t u = item + 1, un = (u / nrb) % p.N, uoh0 = (u % nrb) * rb;
      const int64_t uih0 = uoh0 * p.SH - p.PH;
      const int64_t ulo = imax(uih0, 0) * p.W;
      const int64_t uhi = imin(uih0 + (imin(p.OH, uoh0 + rb) - uoh0 - 1) * p.SH + span_h, p.H) * p.W;
      const float* un_x = a.x + (un * C + u / (p.N * nrb) * VL) * HW;
      const int unc = tile_lanes(C, u / (p.N * nrb));
      for (int i = 0; i < unc; ++i) {
        for (int64_t e = ulo; e < uhi; e += 16) __builtin_prefetch(un_x + i * HW + e, 0, 2);
      }
    }
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const NhwcFrame f{win, win_cols * VL, VL, (oh - oh0) * p.SH, 0, KH, VL, 0, 0, kNoEdge};
      nhwc_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t, t + 1, yscr + (oh - oh0) * p.OW * VL,
                                   p.OW, false, a.act);
    }
    const int64_t g0 = oh0 * p.OW, g1 = oh1 * p.OW;
    float* ys = a.y + (n * C + t * VL) * OHW;
    for (int64_t f0 = g0; f0 < g1; f0 += VL) {
      const int nv = static_cast<int>(imin(VL, g1 - f0));
      vf v[VL];
      for (int j = 0; j < VL; ++j) v[j] = j < nv ? vload(yscr + (f0 - g0 + j) * VL) : vzero();
      vtranspose(v);
      for (int i = 0; i < nc; ++i) {
        if (nv == VL) {
          vstore(ys + i * OHW + f0, v[i]);
        } else {
          vstore_n(ys + i * OHW + f0, v[i], nv);
        }
      }
    }
  }
}

void dwconv_nchw_tiles(const DwArgs& a, int64_t begin, int64_t end) {
  const auto fixed = [&]<int K, int S, int D>() {
    dw_nchw_tiled_items<K, K, S, D, D>(a, begin, end);
  };
  if (!with_dw_shape(a.p, fixed)) dw_nchw_tiled_items<0, 0, 0, 0, 0>(a, begin, end);
}
