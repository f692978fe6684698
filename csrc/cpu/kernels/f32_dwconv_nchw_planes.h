// Depthwise conv + bias + activation, NCHW, wide planes (path NchwPlanes of plan.cpp).
#pragma once

#include "dwconv_shapes.h"
#include "f32_activation.h"
#include "index_math.h"
#include "scratch.h"

// Per (plane, block of output rows) the needed input rows are copied into a zero-padded scratch,
// each row split into SW phases (phase q holds padded columns q, q+SW, ...). Then the input of
// output column ow at tap kw is phase[(kw*DW) % SW][ow + (kw*DW) / SW]: every tap is one
// unaligned vector load whatever the stride, and the interior needs no bounds checks. The
// scratch is zeroed once per call; row copies write only the columns that hold input, so the
// padding columns stay zero.

struct NchwLayout {
  int64_t owv;        // OW rounded up to VL
  int64_t phase_len;  // floats per phase, a multiple of VL
  int64_t row_len;    // SW * phase_len
  int64_t rows;       // scratch rows for a full row block
};

inline NchwLayout nchw_layout(const DwConvParams& p, int64_t row_block) {
  NchwLayout l;
  l.owv = div_up(p.OW, VL) * VL;
  l.phase_len = div_up(l.owv + (p.KW - 1) * p.DW / p.SW + 1, VL) * VL;
  l.row_len = p.SW * l.phase_len;
  l.rows = (row_block - 1) * p.SH + (p.KH - 1) * p.DH + 1;
  return l;
}

inline void copy_n(const float* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) vstore(d + i, vload(s + i));
  if (i < n) vstore_n(d + i, vload_n(s + i, static_cast<int>(n - i)), static_cast<int>(n - i));
}

// Columns [c0, c0 + VL) of an input row of W floats, zero outside [0, W).
inline vf load_cols(const float* row, int64_t W, int64_t c0) {
  if (c0 >= 0 && c0 + VL <= W) return vload(row + c0);
  const int64_t lo = imax(0, -c0), hi = imin(VL, W - c0);
  if (hi <= lo) return vzero();
  return vload_span(row + c0, static_cast<int>(lo), static_cast<int>(hi));
}

// Scratch row from input row `src` (null: the row is padding). tmp: row_len floats, zero
// outside [PW, PW + W).
inline void nchw_fill_row(const DwConvParams& p, const NchwLayout& l, const float* src,
                          float* dst, float* tmp) {
  if (src == nullptr) {
    for (int64_t j = 0; j < l.row_len; j += VL) vstore(dst + j, vzero());
    return;
  }
  const int64_t PL = l.phase_len, n = imin(p.W, l.row_len - p.PW);
  if (p.SW == 1) {
    copy_n(src, dst + p.PW, n);
    return;
  }
  if (p.SW == 2) {
    // Split in registers: reading back a just-written padded copy stalls on store forwarding.
    for (int64_t j = 0; j < PL; j += VL) {
      const int64_t c0 = 2 * j - p.PW;  // input column of padded column 2j
      vf even, odd;
      vdeinterleave2(load_cols(src, n, c0), load_cols(src, n, c0 + VL), even, odd);
      vstore(dst + j, even);
      vstore(dst + PL + j, odd);
    }
    return;
  }
  copy_n(src, tmp + p.PW, n);
  for (int64_t q = 0; q < p.SW; ++q) {
    for (int64_t j = 0; j < PL; ++j) dst[q * PL + j] = tmp[j * p.SW + q];
  }
}

inline void nchw_store(float* yr, int64_t ow, int64_t OW, vf v) {
  if (ow + VL <= OW) {
    vstore(yr + ow, v);
  } else {
    vstore_n(yr + ow, v, static_cast<int>(OW - ow));
  }
}

// RR output rows at once; input row i of the block feeds every output row r with
// i = r*SH + kh*D, so each vector load serves up to RR FMAs (compile-time shape, dilation D).
template <int KH, int KW, int SH, int SW, int D, int RR>
inline void nchw_rows_fast(const DwConvParams& p, const NchwLayout& l, const float* scr,
                           int64_t lr, const float* wc, float bias, float* y0, int act) {
  constexpr int NIN = (RR - 1) * SH + (KH - 1) * D + 1;
  const int64_t OW = p.OW;
  for (int64_t ow = 0; ow < OW; ow += VL) {
    vf acc[RR];
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) acc[r] = vset1(bias);
#pragma GCC unroll 32
    for (int i = 0; i < NIN; ++i) {
      const float* srow = scr + (lr + i) * l.row_len + ow;
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const vf v = vload(srow + (kw * D % SW) * l.phase_len + kw * D / SW);
#pragma GCC unroll 8
        for (int r = 0; r < RR; ++r) {
          const int t = i - r * SH;  // D * kh
          if (t >= 0 && t % D == 0 && t / D < KH) {
            acc[r] = vfma(v, vset1(wc[t / D * KW + kw]), acc[r]);
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) nchw_store(y0 + r * OW, ow, OW, act_v(acc[r], act));
  }
}

// Rows per register block: with narrow planes (a 7-wide row is one vector) the rows are the
// only independent accumulator chains, so take enough to cover the FMA latency.
constexpr int kRows = 8;

// The last r < kRows rows of a block in one register block of exactly r rows.
template <int KH, int KW, int SH, int SW, int D, int R>
inline void nchw_rows_tail(const DwConvParams& p, const NchwLayout& l, const float* scr,
                           int64_t lr, const float* wc, float bias, float* y0, int64_t r,
                           int act) {
  if constexpr (R > 1) {
    if (r < R) {
      return nchw_rows_tail<KH, KW, SH, SW, D, R - 1>(p, l, scr, lr, wc, bias, y0, r, act);
    }
  }
  nchw_rows_fast<KH, KW, SH, SW, D, R>(p, l, scr, lr, wc, bias, y0, act);
}

// Any shape: one output row, taps from run-time loops.
inline void nchw_row_generic(const DwConvParams& p, const NchwLayout& l, const float* scr,
                             int64_t lr, const float* wc, float bias, float* yr, int act) {
  const int64_t OW = p.OW;
  for (int64_t ow = 0; ow < OW; ow += VL) {
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

template <int KH, int KW, int SH, int SW, int D>
void dw_nchw_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  constexpr bool kFast = KH > 0;
  const int64_t RB = a.plan.row_block;
  const int64_t nrb = div_up(p.OH, RB);
  const NchwLayout l = nchw_layout(p, RB);
  const int64_t scr_floats = l.rows * l.row_len;
  AlignedScratch mem(scr_floats + l.row_len);
  float* scr = mem.data;
  float* tmp = scr + scr_floats;
  for (int64_t j = 0; j < scr_floats + l.row_len; ++j) scr[j] = 0.0f;
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
      nchw_fill_row(p, l, (ih >= 0 && ih < p.H) ? xp + ih * p.W : nullptr, scr + r * l.row_len,
                    tmp);
    }
    const float* wc = a.w + c * p.KH * p.KW;
    const float bias = a.b != nullptr ? a.b[c] : 0.0f;
    // The next item's input rows, fetched a slice per register block while this item computes
    // from its scratch: otherwise memory idles during the compute and the fill waits on it.
    const float* pf = nullptr;
    int64_t pf_left = 0, pf_step = 0;
    if (item + 1 < end) {
      const int64_t u = item + 1, uoh0 = (u % nrb) * RB, uoh1 = imin(p.OH, uoh0 + RB);
      const int64_t lo = imax(0, uoh0 * p.SH - p.PH);
      const int64_t hi = imin(p.H, (uoh1 - 1) * p.SH - p.PH + (p.KH - 1) * p.DH + 1);
      pf = a.x + (u / nrb) * p.H * p.W + lo * p.W;
      pf_left = imax(0, hi - lo) * p.W;
      pf_step = div_up(div_up(pf_left, div_up(oh1 - oh0, kRows)), 16) * 16;
    }
    int64_t oh = oh0;
    if constexpr (kFast) {
      for (; oh + kRows <= oh1; oh += kRows) {
        for (int64_t e = 0; e < imin(pf_step, pf_left); e += 16) __builtin_prefetch(pf + e, 0, 2);
        pf += pf_step;
        pf_left -= pf_step;
        nchw_rows_fast<KH, KW, SH, SW, D, kRows>(p, l, scr, (oh - oh0) * p.SH, wc, bias,
                                                 yp + oh * p.OW, a.act);
      }
      if (oh < oh1) {
        for (int64_t e = 0; e < pf_left; e += 16) __builtin_prefetch(pf + e, 0, 2);
        nchw_rows_tail<KH, KW, SH, SW, D, kRows - 1>(p, l, scr, (oh - oh0) * p.SH, wc, bias,
                                                     yp + oh * p.OW, oh1 - oh, a.act);
      }
    } else {
      for (; oh < oh1; ++oh) {
        nchw_row_generic(p, l, scr, (oh - oh0) * p.SH, wc, bias, yp + oh * p.OW, a.act);
      }
    }
  }
}

void dwconv_nchw_planes(const DwArgs& a, int64_t begin, int64_t end) {
  const auto fixed = [&]<int K, int S, int D>() { dw_nchw_items<K, K, S, S, D>(a, begin, end); };
  if (!with_dw_shape(a.p, fixed)) dw_nchw_items<0, 0, 0, 0, 0>(a, begin, end);
}
