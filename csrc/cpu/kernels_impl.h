// Kernel bodies shared by the AVX2 and the portable translation unit. Not a normal header:
// the including file first opens an anonymous namespace and defines the 8-float vector type
// `vf` and its operations (vload, vstore, vload_n, vstore_n, vset1, vzero, vfma, vadd, vmul,
// vmax, vmin, vhsum, vdeinterleave2), then includes this file inside that namespace. Everything
// here therefore has internal linkage and is compiled once per ISA; it must not instantiate any
// std:: template (those are shared between translation units and could be emitted with the
// wider ISA).
//
// Indices are int64_t throughout: a channels_last tensor of a few GB overflows 32-bit offsets.

constexpr int kActNone = 0, kActRelu = 1, kActHardSwish = 2;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline vf act_v(vf v, int act) {
  if (act == kActRelu) return vmax(v, vzero());
  if (act == kActHardSwish) {
    // x * clamp(x/6 + 1/2, 0, 1): one FMA, two clamps, one multiply, no divide.
    vf t = vfma(v, vset1(1.0f / 6.0f), vset1(0.5f));
    t = vmin(vmax(t, vzero()), vset1(1.0f));
    return vmul(v, t);
  }
  return v;
}

// Range [lo, hi) of taps k (0 <= k < K) for which base + k*D lies inside [0, size).
inline void valid_taps(int64_t base, int64_t D, int64_t K, int64_t size, int64_t& lo,
                       int64_t& hi) {
  lo = base >= 0 ? 0 : div_up(-base, D);
  hi = base > size - 1 ? 0 : imin(K, (size - 1 - base) / D + 1);
  if (hi < lo) hi = lo;
}

// ---------------------------------------------------------------------------------------------
// NHWC depthwise conv
// ---------------------------------------------------------------------------------------------

// PX output pixels (consecutive along W) x CV channel tiles, every kw tap inside the row.
// KW_/SW_/DW_ are compile-time when non-zero, else taken from p.
template <int KW_, int SW_, int DW_, int CV, int PX, bool MASK>
inline void nhwc_block(const DwConvParams& p, const float* xb, int64_t ih_first, int64_t kh0,
                       int64_t kh1, int64_t iw0, const float* wt, float* yo, int nl, int act) {
  const int64_t C = p.C;
  const int64_t KW = KW_ ? KW_ : p.KW;
  const int64_t SW = SW_ ? SW_ : p.SW;
  const int64_t DW = DW_ ? DW_ : p.DW;
  const int64_t wtile = 8 * (1 + p.KH * KW);
  const int64_t row_stride = p.W * C;
  vf acc[PX][CV];
  for (int cv = 0; cv < CV; ++cv) {
    const vf b = vload(wt + cv * wtile);
    for (int px = 0; px < PX; ++px) acc[px][cv] = b;
  }
  for (int64_t kh = kh0; kh < kh1; ++kh) {
    const float* xr = xb + (ih_first + kh * p.DH) * row_stride + iw0 * C;
    const float* wk = wt + 8 + kh * KW * 8;
    for (int64_t kw = 0; kw < KW; ++kw) {
      vf w[CV];
      for (int cv = 0; cv < CV; ++cv) w[cv] = vload(wk + cv * wtile + kw * 8);
      const float* xk = xr + kw * DW * C;
      for (int px = 0; px < PX; ++px) {
        const float* xp = xk + px * SW * C;
        for (int cv = 0; cv < CV; ++cv) {
          const vf xv = MASK ? vload_n(xp + cv * 8, nl) : vload(xp + cv * 8);
          acc[px][cv] = vfma(xv, w[cv], acc[px][cv]);
        }
      }
    }
  }
  for (int px = 0; px < PX; ++px) {
    for (int cv = 0; cv < CV; ++cv) {
      const vf v = act_v(acc[px][cv], act);
      if (MASK) {
        vstore_n(yo + px * C + cv * 8, v, nl);
      } else {
        vstore(yo + px * C + cv * 8, v);
      }
    }
  }
}

// One output pixel near the left/right edge: only the kw taps inside the image.
inline void nhwc_edge_pixel(const DwConvParams& p, const float* xb, int64_t ih_first,
                            int64_t kh0, int64_t kh1, int64_t ow, const float* wpack,
                            int64_t t0, int64_t t1, float* yrow, int act) {
  const int64_t C = p.C;
  const int64_t wtile = 8 * (1 + p.KH * p.KW);
  const int64_t iw_first = ow * p.SW - p.PW;
  int64_t kw0, kw1;
  valid_taps(iw_first, p.DW, p.KW, p.W, kw0, kw1);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * 8;
    const int nl = static_cast<int>(imin(8, C - c0));
    const float* wt = wpack + t * wtile;
    vf acc = vload(wt);
    for (int64_t kh = kh0; kh < kh1; ++kh) {
      const float* xr = xb + (ih_first + kh * p.DH) * p.W * C + c0;
      const float* wk = wt + 8 + kh * p.KW * 8;
      for (int64_t kw = kw0; kw < kw1; ++kw) {
        const float* xp = xr + (iw_first + kw * p.DW) * C;
        const vf xv = nl == 8 ? vload(xp) : vload_n(xp, nl);
        acc = vfma(xv, vload(wk + kw * 8), acc);
      }
    }
    const vf v = act_v(acc, act);
    float* yp = yrow + ow * C + c0;
    if (nl == 8) {
      vstore(yp, v);
    } else {
      vstore_n(yp, v, nl);
    }
  }
}

template <int KW_, int SW_, int DW_, int CV, bool MASK>
inline void nhwc_interior(const DwConvParams& p, const float* xb, int64_t ih_first, int64_t kh0,
                          int64_t kh1, int64_t ow_lo, int64_t ow_hi, const float* wt,
                          float* yrow, int64_t c0, int nl, int act) {
  constexpr int PX = CV == 3 ? 4 : (CV == 2 ? 5 : 6);
  const int64_t SW = SW_ ? SW_ : p.SW;
  int64_t ow = ow_lo;
  for (; ow + PX <= ow_hi; ow += PX) {
    nhwc_block<KW_, SW_, DW_, CV, PX, MASK>(p, xb, ih_first, kh0, kh1, ow * SW - p.PW, wt,
                                            yrow + ow * p.C + c0, nl, act);
  }
  for (; ow < ow_hi; ++ow) {
    nhwc_block<KW_, SW_, DW_, CV, 1, MASK>(p, xb, ih_first, kh0, kh1, ow * SW - p.PW, wt,
                                           yrow + ow * p.C + c0, nl, act);
  }
}

template <int KW_, int SW_, int DW_>
void dw_nhwc_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const int64_t C = p.C;
  const int64_t ntiles = div_up(C, 8);
  const int64_t full_tiles = C / 8;
  const int64_t tpb = a.tiles_per_block;
  const int64_t nblocks = div_up(ntiles, tpb);
  const int64_t wtile = 8 * (1 + p.KH * p.KW);
  // Output columns whose taps all fall inside the row: [ow_lo, ow_hi).
  const int64_t ow_lo = imin(div_up(p.PW, p.SW), p.OW);
  const int64_t last = p.W - 1 + p.PW - (p.KW - 1) * p.DW;
  const int64_t ow_hi = imax(ow_lo, imin(p.OW, last < 0 ? 0 : last / p.SW + 1));
  for (int64_t item = begin; item < end; ++item) {
    const int64_t blk = item % nblocks;
    const int64_t row = item / nblocks;
    const int64_t n = row / p.OH;
    const int64_t oh = row % p.OH;
    const int64_t t0 = blk * tpb;
    const int64_t t1 = imin(ntiles, t0 + tpb);
    const int64_t ih_first = oh * p.SH - p.PH;
    int64_t kh0, kh1;
    valid_taps(ih_first, p.DH, p.KH, p.H, kh0, kh1);
    const float* xb = a.x + n * p.H * p.W * C;
    float* yrow = a.y + (n * p.OH + oh) * p.OW * C;
    for (int64_t ow = 0; ow < ow_lo; ++ow) {
      nhwc_edge_pixel(p, xb, ih_first, kh0, kh1, ow, a.w, t0, t1, yrow, a.act);
    }
    if (ow_hi > ow_lo) {
      int64_t t = t0;
      const int64_t tf = imin(t1, full_tiles);
      for (; t + 3 <= tf; t += 3) {
        nhwc_interior<KW_, SW_, DW_, 3, false>(p, xb + t * 8, ih_first, kh0, kh1, ow_lo, ow_hi,
                                               a.w + t * wtile, yrow, t * 8, 8, a.act);
      }
      if (tf - t == 2) {
        nhwc_interior<KW_, SW_, DW_, 2, false>(p, xb + t * 8, ih_first, kh0, kh1, ow_lo, ow_hi,
                                               a.w + t * wtile, yrow, t * 8, 8, a.act);
        t += 2;
      } else if (tf - t == 1) {
        nhwc_interior<KW_, SW_, DW_, 1, false>(p, xb + t * 8, ih_first, kh0, kh1, ow_lo, ow_hi,
                                               a.w + t * wtile, yrow, t * 8, 8, a.act);
        t += 1;
      }
      if (t < t1) {  // the partial last tile: masked loads and stores
        nhwc_interior<KW_, SW_, DW_, 1, true>(p, xb + t * 8, ih_first, kh0, kh1, ow_lo, ow_hi,
                                              a.w + t * wtile, yrow, t * 8,
                                              static_cast<int>(C - t * 8), a.act);
      }
    }
    for (int64_t ow = ow_hi; ow < p.OW; ++ow) {
      nhwc_edge_pixel(p, xb, ih_first, kh0, kh1, ow, a.w, t0, t1, yrow, a.act);
    }
  }
}

void dw_nhwc(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const bool d1 = p.DH == 1 && p.DW == 1;
  if (d1 && p.KW == 3 && p.SW == 1) return dw_nhwc_items<3, 1, 1>(a, begin, end);
  if (d1 && p.KW == 3 && p.SW == 2) return dw_nhwc_items<3, 2, 1>(a, begin, end);
  if (d1 && p.KW == 5 && p.SW == 1) return dw_nhwc_items<5, 1, 1>(a, begin, end);
  if (d1 && p.KW == 5 && p.SW == 2) return dw_nhwc_items<5, 2, 1>(a, begin, end);
  dw_nhwc_items<0, 0, 0>(a, begin, end);
}

// ---------------------------------------------------------------------------------------------
// NCHW depthwise conv
// ---------------------------------------------------------------------------------------------
// Per (plane, block of output rows) the needed input rows are copied into a zero-padded scratch,
// each row split into SW phases (phase q holds padded columns q, q+SW, ...). Then the input of
// output column ow at tap kw is phase[(kw*DW) % SW][ow + (kw*DW) / SW]: every tap is one
// unaligned vector load whatever the stride, and the interior needs no bounds checks.

struct NchwLayout {
  int64_t owv;        // OW rounded up to 8
  int64_t phase_len;  // floats per phase
  int64_t row_len;    // SW * phase_len
  int64_t rows;       // scratch rows for a full row block
};

inline NchwLayout nchw_layout(const DwConvParams& p, int64_t row_block) {
  NchwLayout l;
  l.owv = div_up(p.OW, 8) * 8;
  l.phase_len = l.owv + (p.KW - 1) * p.DW / p.SW + 1;
  l.row_len = p.SW * l.phase_len;
  l.rows = (row_block - 1) * p.SH + (p.KH - 1) * p.DH + 1;
  return l;
}

// Scratch row from input row `src` (null: the row is padding).
inline void nchw_fill_row(const DwConvParams& p, const NchwLayout& l, const float* src,
                          float* dst) {
  if (src == nullptr) {
    for (int64_t j = 0; j < l.row_len; ++j) dst[j] = 0.0f;
    return;
  }
  const int64_t SW = p.SW, PW = p.PW, W = p.W, PL = l.phase_len;
  if (SW == 1) {
    const int64_t lead = imin(PW, PL);
    int64_t j = 0;
    for (; j < lead; ++j) dst[j] = 0.0f;
    const int64_t ncopy = imax(0, imin(W, PL - PW));
    for (int64_t i = 0; i < ncopy; ++i) dst[PW + i] = src[i];
    for (j = imax(lead, PW + ncopy); j < PL; ++j) dst[j] = 0.0f;
    return;
  }
  int64_t t = 0;
  if (SW == 2) {
    // Vector deinterleave where all 16 source columns 2t-PW .. 2t-PW+15 are inside the row.
    t = div_up(PW, 2);
    for (int64_t j = 0; j < imin(t, PL); ++j) {
      const int64_t i0 = 2 * j - PW, i1 = i0 + 1;
      dst[j] = (i0 >= 0 && i0 < W) ? src[i0] : 0.0f;
      dst[PL + j] = (i1 >= 0 && i1 < W) ? src[i1] : 0.0f;
    }
    for (; t + 8 <= PL && 2 * t - PW + 16 <= W; t += 8) {
      vf even, odd;
      vdeinterleave2(src + 2 * t - PW, even, odd);
      vstore(dst + t, even);
      vstore(dst + PL + t, odd);
    }
  }
  for (int64_t q = 0; q < SW; ++q) {
    float* d = dst + q * PL;
    for (int64_t j = t; j < PL; ++j) {
      const int64_t iw = j * SW + q - PW;
      d[j] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
    }
  }
}

inline void nchw_store(float* yr, int64_t ow, int64_t OW, vf v) {
  if (ow + 8 <= OW) {
    vstore(yr + ow, v);
  } else {
    vstore_n(yr + ow, v, static_cast<int>(OW - ow));
  }
}

// RR output rows at once; input row i of the block feeds every output row r with
// i = r*SH + kh, so each vector load serves up to RR FMAs (dilation 1, compile-time shape).
template <int KH, int KW, int SH, int SW, int RR>
inline void nchw_rows_fast(const DwConvParams& p, const NchwLayout& l, const float* scr,
                           int64_t lr, const float* wc, float bias, float* y0, int act) {
  constexpr int NIN = (RR - 1) * SH + KH;
  vf wv[KH * KW];
  for (int k = 0; k < KH * KW; ++k) wv[k] = vset1(wc[k]);
  const vf bv = vset1(bias);
  const int64_t OW = p.OW;
  for (int64_t ow = 0; ow < OW; ow += 8) {
    vf acc[RR];
    for (int r = 0; r < RR; ++r) acc[r] = bv;
    for (int i = 0; i < NIN; ++i) {
      const float* srow = scr + (lr + i) * l.row_len + ow;
      for (int kw = 0; kw < KW; ++kw) {
        const vf v = vload(srow + (kw % SW) * l.phase_len + kw / SW);
        for (int r = 0; r < RR; ++r) {
          const int kh = i - r * SH;
          if (kh >= 0 && kh < KH) acc[r] = vfma(v, wv[kh * KW + kw], acc[r]);
        }
      }
    }
    for (int r = 0; r < RR; ++r) nchw_store(y0 + r * OW, ow, OW, act_v(acc[r], act));
  }
}

// Any shape: one output row, taps from run-time loops.
inline void nchw_row_generic(const DwConvParams& p, const NchwLayout& l, const float* scr,
                             int64_t lr, const float* wc, float bias, float* yr, int act) {
  const int64_t OW = p.OW;
  for (int64_t ow = 0; ow < OW; ow += 8) {
    vf acc = vset1(bias);
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const float* srow = scr + (lr + kh * p.DH) * l.row_len + ow;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t off = kw * p.DW;
        const vf v = vload(srow + (off % p.SW) * l.phase_len + off / p.SW);
        acc = vfma(v, vset1(wc[kh * p.KW + kw]), acc);
      }
    }
    nchw_store(yr, ow, OW, act_v(acc, act));
  }
}

template <int KH, int KW, int SH, int SW>
void dw_nchw_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  constexpr bool kFast = KH > 0;
  const int64_t RB = a.row_block;
  const int64_t nrb = div_up(p.OH, RB);
  const NchwLayout l = nchw_layout(p, RB);
  float* scr = new float[l.rows * l.row_len];
  for (int64_t item = begin; item < end; ++item) {
    const int64_t plane = item / nrb;
    const int64_t oh0 = (item % nrb) * RB;
    const int64_t oh1 = imin(p.OH, oh0 + RB);
    const int64_t c = plane % p.C;
    const float* xp = a.x + plane * p.H * p.W;
    float* yp = a.y + plane * p.OH * p.OW;
    const int64_t nrows = (oh1 - oh0 - 1) * p.SH + (p.KH - 1) * p.DH + 1;
    for (int64_t r = 0; r < nrows; ++r) {
      const int64_t ih = oh0 * p.SH - p.PH + r;
      nchw_fill_row(p, l, (ih >= 0 && ih < p.H) ? xp + ih * p.W : nullptr, scr + r * l.row_len);
    }
    const float* wc = a.w + c * p.KH * p.KW;
    const float bias = a.b[c];
    int64_t oh = oh0;
    if constexpr (kFast) {
      constexpr int RR = 4;
      for (; oh + RR <= oh1; oh += RR) {
        nchw_rows_fast<KH, KW, SH, SW, RR>(p, l, scr, (oh - oh0) * p.SH, wc, bias, yp + oh * p.OW, a.act);
      }
      for (; oh < oh1; ++oh) {
        nchw_rows_fast<KH, KW, SH, SW, 1>(p, l, scr, (oh - oh0) * p.SH, wc, bias, yp + oh * p.OW, a.act);
      }
    } else {
      for (; oh < oh1; ++oh) {
        nchw_row_generic(p, l, scr, (oh - oh0) * p.SH, wc, bias, yp + oh * p.OW, a.act);
      }
    }
  }
  delete[] scr;
}

void dw_nchw(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const bool d1 = p.DH == 1 && p.DW == 1;
  const bool sq = p.KH == p.KW && p.SH == p.SW;
  if (d1 && sq && p.KH == 3 && p.SH == 1) return dw_nchw_items<3, 3, 1, 1>(a, begin, end);
  if (d1 && sq && p.KH == 3 && p.SH == 2) return dw_nchw_items<3, 3, 2, 2>(a, begin, end);
  if (d1 && sq && p.KH == 5 && p.SH == 1) return dw_nchw_items<5, 5, 1, 1>(a, begin, end);
  if (d1 && sq && p.KH == 5 && p.SH == 2) return dw_nchw_items<5, 5, 2, 2>(a, begin, end);
  dw_nchw_items<0, 0, 0, 0>(a, begin, end);
}

// ---------------------------------------------------------------------------------------------
// Element-wise and squeeze-excite
// ---------------------------------------------------------------------------------------------

void hard_act(const float* x, float* y, int64_t n, bool swish) {
  const vf sixth = vset1(1.0f / 6.0f), half = vset1(0.5f), one = vset1(1.0f), zero = vzero();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const vf v = vload(x + i);
    const vf t = vmin(vmax(vfma(v, sixth, half), zero), one);
    vstore(y + i, swish ? vmul(v, t) : t);
  }
  if (i < n) {
    const int nl = static_cast<int>(n - i);
    const vf v = vload_n(x + i, nl);
    const vf t = vmin(vmax(vfma(v, sixth, half), zero), one);
    vstore_n(y + i, swish ? vmul(v, t) : t, nl);
  }
}

inline float sum_n(const float* x, int64_t n) {
  vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = vadd(a0, vload(x + i));
    a1 = vadd(a1, vload(x + i + 8));
    a2 = vadd(a2, vload(x + i + 16));
    a3 = vadd(a3, vload(x + i + 24));
  }
  for (; i + 8 <= n; i += 8) a0 = vadd(a0, vload(x + i));
  if (i < n) a1 = vadd(a1, vload_n(x + i, static_cast<int>(n - i)));
  return vhsum(vadd(vadd(a0, a1), vadd(a2, a3)));
}

inline float dot_n(const float* x, const float* w, int64_t n) {
  vf a0 = vzero(), a1 = vzero();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = vfma(vload(x + i), vload(w + i), a0);
    a1 = vfma(vload(x + i + 8), vload(w + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = vfma(vload(x + i), vload(w + i), a0);
  if (i < n) {
    const int nl = static_cast<int>(n - i);
    a1 = vfma(vload_n(x + i, nl), vload_n(w + i, nl), a1);
  }
  return vhsum(vadd(a0, a1));
}

void plane_sums(const float* x, float* sums, int64_t hw, int64_t begin, int64_t end) {
  for (int64_t pl = begin; pl < end; ++pl) sums[pl] = sum_n(x + pl * hw, hw);
}

void pixel_sums(const float* x, float* sums, int64_t C, int64_t hw, int64_t c0, int64_t c1) {
  // Blocks of up to 64 channels, held in 8 accumulators across all pixels.
  for (int64_t cb = c0; cb < c1; cb += 64) {
    const int64_t nc = imin(64, c1 - cb);
    const int nv = static_cast<int>(div_up(nc, 8));
    vf acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = vzero();
    for (int64_t pix = 0; pix < hw; ++pix) {
      const float* xp = x + pix * C + cb;
      for (int v = 0; v < nv; ++v) {
        const int64_t nl = imin(8, nc - v * 8);
        acc[v] = vadd(acc[v], nl == 8 ? vload(xp + v * 8) : vload_n(xp + v * 8, int(nl)));
      }
    }
    for (int v = 0; v < nv; ++v) {
      const int64_t nl = imin(8, nc - v * 8);
      if (nl == 8) {
        vstore(sums + cb + v * 8, acc[v]);
      } else {
        vstore_n(sums + cb + v * 8, acc[v], int(nl));
      }
    }
  }
}

void scale_planes(const float* x, float* y, const float* s, int64_t hw, int64_t begin,
                  int64_t end) {
  for (int64_t pl = begin; pl < end; ++pl) {
    const vf sv = vset1(s[pl]);
    const float* xp = x + pl * hw;
    float* yp = y + pl * hw;
    int64_t i = 0;
    for (; i + 8 <= hw; i += 8) vstore(yp + i, vmul(vload(xp + i), sv));
    if (i < hw) {
      const int nl = static_cast<int>(hw - i);
      vstore_n(yp + i, vmul(vload_n(xp + i, nl), sv), nl);
    }
  }
}

void scale_pixels(const float* x, float* y, const float* s, int64_t C, int64_t begin,
                  int64_t end) {
  const int64_t cf = C / 8 * 8;
  for (int64_t pix = begin; pix < end; ++pix) {
    const float* xp = x + pix * C;
    float* yp = y + pix * C;
    int64_t c = 0;
    for (; c < cf; c += 8) vstore(yp + c, vmul(vload(xp + c), vload(s + c)));
    if (c < C) {
      const int nl = static_cast<int>(C - c);
      vstore_n(yp + c, vmul(vload_n(xp + c, nl), vload_n(s + c, nl)), nl);
    }
  }
}

void se_mlp(const float* mean, const float* w1, const float* b1, const float* w2,
            const float* b2, float* gate, float* hidden, int64_t N, int64_t C, int64_t R) {
  // Weight rows outer, samples inner: each weight row is read once for the whole batch.
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t n = 0; n < N; ++n) {
      const float h = b1[r] + dot_n(mean + n * C, w1 + r * C, C);
      hidden[n * R + r] = h > 0.0f ? h : 0.0f;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t n = 0; n < N; ++n) {
      float g = (b2[c] + dot_n(hidden + n * R, w2 + c * R, R)) * (1.0f / 6.0f) + 0.5f;
      gate[n * C + c] = g < 0.0f ? 0.0f : (g > 1.0f ? 1.0f : g);
    }
  }
}

const KernelTable kTable = {dw_nhwc,      dw_nchw,      hard_act, plane_sums,
                            pixel_sums,   scale_planes, scale_pixels, se_mlp};
