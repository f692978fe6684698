// Kernel bodies shared by the AVX-512, AVX2 and portable translation units. Not a normal header:
// the including file first opens an anonymous namespace and defines the vector type `vf` of VL
// floats, kVecRegs (vector registers of the ISA), kShapeKernels (whether to instantiate the
// compile-time-shape kernels for k 3/5 at stride 1/2 and dilation 2 at stride 1, or only the
// run-time-shape ones) and the vector operations (vload, vstore, vload_n, vload_span, vstore_n,
// vkeep, vset1, vzero, vfma, vadd, vmul, vmax, vmin, vhsum, vdeinterleave2, vtranspose), then
// includes this file inside that namespace. Everything here therefore has internal linkage and is compiled once per ISA;
// it must not instantiate any std:: template (those are shared between translation units and
// could be emitted with the wider ISA).
//
// Depthwise conv paths (plan.cpp picks one per call):
//   NHWC, wide rows     rows read in place; compile-time shapes in input-reuse blocks whose ends
//                       skip the padding columns, other shapes with zero-padded border strips
//   NHWC, narrow rows   the item's input window copied to zero-padded scratch first
//   NCHW, wide planes   per plane, rows copied to zero-padded (stride-phase split) scratch
//   NCHW, narrow planes channel tiles transposed into an NHWC window, the NHWC row kernels,
//                       and transposed back
//
// Indices are int64_t throughout: a channels_last tensor of a few GB overflows 32-bit offsets.

constexpr int kActNone = 0, kActRelu = 1, kActHardSwish = 2;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// n floats, 64-byte aligned: vector loads of the scratch never split a cache line.
struct AlignedScratch {
  float* base;
  float* data;
  explicit AlignedScratch(int64_t n) : base(new float[n + 16]) {
    const int64_t mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(base) / sizeof(float) % 16);
    data = base + (16 - mis) % 16;
  }
  ~AlignedScratch() { delete[] base; }
  AlignedScratch(const AlignedScratch&) = delete;
  AlignedScratch& operator=(const AlignedScratch&) = delete;
};

// vmax/vmin return their second operand when either is NaN (as maxps/minps do), so every clamp
// takes the bound first and the value second: NaN in, NaN out, as PyTorch's relu/hardsigmoid.
inline vf act_v(vf v, int act) {
  if (act == kActRelu) return vmax(vzero(), v);
  if (act == kActHardSwish) {
    // x * clamp(x/6 + 1/2, 0, 1): one FMA, two clamps, one multiply, no divide.
    vf t = vfma(v, vset1(1.0f / 6.0f), vset1(0.5f));
    t = vmin(vset1(1.0f), vmax(vzero(), t));
    return vmul(v, t);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// NHWC depthwise conv
// ---------------------------------------------------------------------------------------------
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


// Lanes of tile t that hold real channels.
inline int tile_lanes(int64_t C, int64_t t) { return static_cast<int>(imin(VL, C - t * VL)); }

inline void nhwc_pack(const DwArgs& a, int64_t t0, int64_t t1, int64_t wtile, float* dst) {
  const int64_t C = a.p.C, KK = a.p.KH * a.p.KW;
  for (int64_t t = t0; t < t1; ++t) {
    float* d = dst + (t - t0) * wtile;
    const int nc = tile_lanes(C, t);
    const float* w = a.w + t * VL * KK;
    if (a.b != nullptr) {
      vstore(d, vload_n(a.b + t * VL, nc));
    } else {
      vstore(d, vzero());
    }
    // The tile's (channels x taps) weights, VL taps at a time, transposed to (taps x channels).
    for (int64_t k0 = 0; k0 < KK; k0 += VL) {
      const int nk = static_cast<int>(imin(VL, KK - k0));
      vf v[VL];
      for (int l = 0; l < VL; ++l) v[l] = l < nc ? vload_n(w + l * KK + k0, nk) : vzero();
      vtranspose(v);
      for (int k = 0; k < nk; ++k) vstore(d + VL + (k0 + k) * VL, v[k]);
    }
  }
}

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

// Where the input rows of an output row live: the input itself, or a border strip of scratch.
struct NhwcFrame {
  const float* x;  // pixel 0 of row 0 (only rows r0 + kh*DH, kh in [kh0, kh1), are read)
  int64_t rowp;    // floats per row
  int64_t pxs;     // floats per pixel
  int64_t r0, kh0, kh1;
  int64_t ypx;     // floats per output pixel: C in an NHWC output, VL in a tile's scratch
  int64_t ahead;   // > 0: x is the input tensor; prefetch its next `ahead` rows past the taps
  // Compile-time-shape kernels only: output column 0's first tap reads input column col0, and
  // columns outside [0, cols) are padding (zeros). Scratch frames hold their padding: col0 = 0,
  // cols = kNoEdge.
  int64_t col0, cols;
};
constexpr int64_t kNoEdge = int64_t(1) << 60;

// PX consecutive output pixels x CV tiles. f.x points at the block's first input column and
// first tile; wt: packed weights of that tile; yo: output of the first pixel and channel;
// LMASK: the (single) tile has nl < VL real channels and must not be read past them.
// Shape values are compile-time when the template argument is non-zero.
template <int KW_, int SW_, int DH_, int DW_, int CV, int PX, bool LMASK>
inline void nhwc_block(const DwConvParams& p, const NhwcFrame& f, int64_t wtile, const float* wt,
                       float* yo, int nl, int act) {
  const int64_t KW = KW_ ? KW_ : p.KW;
  const int64_t SW = SW_ ? SW_ : p.SW;
  const int64_t DH = DH_ ? DH_ : p.DH, DW = DW_ ? DW_ : p.DW;
  const int64_t pxs = f.pxs;
  vf acc[PX][CV];
#pragma GCC unroll 4
  for (int cv = 0; cv < CV; ++cv) {
    const vf b = vload(wt + cv * wtile);
#pragma GCC unroll 16
    for (int px = 0; px < PX; ++px) acc[px][cv] = b;
  }
  for (int64_t kh = f.kh0; kh < f.kh1; ++kh) {
    const float* xr = f.x + (f.r0 + kh * DH) * f.rowp;
    const float* wk = wt + VL + kh * KW * VL;
#pragma GCC unroll 8
    for (int64_t kw = 0; kw < KW; ++kw) {
      vf w[CV];
#pragma GCC unroll 4
      for (int cv = 0; cv < CV; ++cv) w[cv] = vload(wk + cv * wtile + kw * VL);
      const float* xk = xr + kw * DW * pxs;
#pragma GCC unroll 16
      for (int px = 0; px < PX; ++px) {
        const float* xp = xk + px * SW * pxs;
#pragma GCC unroll 4
        for (int cv = 0; cv < CV; ++cv) {
          const vf xv = LMASK ? vload_n(xp + cv * VL, nl) : vload(xp + cv * VL);
          acc[px][cv] = vfma(xv, w[cv], acc[px][cv]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int px = 0; px < PX; ++px) {
#pragma GCC unroll 4
    for (int cv = 0; cv < CV; ++cv) {
      const vf v = act_v(acc[px][cv], act);
      float* yp = yo + px * f.ypx + cv * VL;
      if (cv == CV - 1 && nl < VL) {
        vstore_n(yp, v, nl);
      } else {
        vstore(yp, v);
      }
    }
  }
}

// The last r < PX pixels of a row in one block of exactly r pixels (r >= R0), or in blocks of
// halving size below that.
template <int KW_, int SW_, int DH_, int DW_, int CV, int R, int R0, bool LMASK>
inline void nhwc_tail(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wt,
                      float* yo, int64_t r, int nl, int act) {
  if constexpr (R >= R0 && R > 1) {
    if (r == R) return nhwc_block<KW_, SW_, DH_, DW_, CV, R, LMASK>(p, f, wtile, wt, yo, nl, act);
    return nhwc_tail<KW_, SW_, DH_, DW_, CV, R - 1, R0, LMASK>(p, f, wtile, wt, yo, r, nl, act);
  } else {
    const int64_t step = (SW_ ? SW_ : p.SW) * f.pxs;
    int64_t j = 0;
    for (; j + R <= r; j += R) {
      nhwc_block<KW_, SW_, DH_, DW_, CV, R, LMASK>(p, f, wtile, wt, yo + j * f.ypx, nl, act);
      f.x += R * step;
    }
    if constexpr (R > 1) {
      if (j < r) {
        nhwc_tail<KW_, SW_, DH_, DW_, CV, R / 2, R0, LMASK>(p, f, wtile, wt, yo + j * f.ypx, r - j,
                                                             nl, act);
      }
    }
  }
}

// ncols output pixels of one row: blocks of PX, then the tail. Multi-tile blocks take the tail
// in one exact-size block (narrow rows of small images are mostly tail); single-tile blocks
// halve, which keeps the number of instantiated block shapes down.
template <int KW_, int SW_, int DH_, int DW_, int CV, int PX, bool LMASK>
inline void nhwc_cols(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wt,
                      float* yo, int64_t ncols, int nl, int act) {
  const int64_t step = (SW_ ? SW_ : p.SW) * f.pxs;
  int64_t j = 0;
  for (; j + PX <= ncols; j += PX) {
    nhwc_block<KW_, SW_, DH_, DW_, CV, PX, LMASK>(p, f, wtile, wt, yo + j * f.ypx, nl, act);
    f.x += PX * step;
  }
  if (j < ncols) {
    constexpr int R0 = CV > 1 ? 2 : PX;
    nhwc_tail<KW_, SW_, DH_, DW_, CV, PX - 1, R0, LMASK>(p, f, wtile, wt, yo + j * f.ypx,
                                                        ncols - j, nl, act);
  }
}

// Compile-time shapes (kernel width, stride, dilation): one tile, PX output pixels of a row.
// Per kernel row, the KW weights stay in registers and each input vector of the row is loaded
// once and feeds every (pixel, tap) pair that reads it: PX*SW + (KW-1)*DW loads for PX*KW FMAs
// instead of one load per FMA (stride 1, k=5: 0.2 loads per FMA). The conditions below are
// compile-time constants, so the unrolled body is straight-line FMAs.
template <int KW, int SW, int DH, int DW, int PX, bool LMASK, bool EDGE>
inline void nhwc_fixed_block(const NhwcFrame& f, const float* bx, int64_t jlo, int64_t jhi,
                             const float* wt, float* yo, int nl, int act) {
  constexpr int NJ = (PX - 1) * SW + (KW - 1) * DW + 1;  // input pixels of the block's row
  const int64_t pxs = f.pxs;
  vf acc[PX];
  const vf b = vload(wt);
#pragma GCC unroll 32
  for (int px = 0; px < PX; ++px) acc[px] = b;
  for (int64_t kh = f.kh0; kh < f.kh1; ++kh) {
    const float* xr = bx + (f.r0 + kh * DH) * f.rowp;
    const float* wk = wt + VL + kh * KW * VL;
    vf w[KW];
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw) w[kw] = vload(wk + kw * VL);
#pragma GCC unroll 64
    for (int j = 0; j < NJ; ++j) {
      // Edge blocks skip the input columns that are padding (a predictable branch per column).
      if (EDGE && (j < jlo || j >= jhi)) continue;
      const vf xv = vkeep(LMASK ? vload_n(xr + j * pxs, nl) : vload(xr + j * pxs));
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const int t = j - kw * DW;  // SW * pixel
        if (t >= 0 && t % SW == 0 && t / SW < PX) acc[t / SW] = vfma(xv, w[kw], acc[t / SW]);
      }
    }
  }
#pragma GCC unroll 32
  for (int px = 0; px < PX; ++px) {
    const vf v = act_v(acc[px], act);
    if (nl < VL) {
      vstore_n(yo + px * f.ypx, v, nl);
    } else {
      vstore(yo + px * f.ypx, v);
    }
  }
}

// Pixels per block: accumulators + KW weights + one input vector fill the register file, with
// one register to spare.
constexpr int fixed_px(int kw) { return kVecRegs - kw - 2 < 24 ? kVecRegs - kw - 2 : 24; }

// One block of exactly r pixels, 1 <= r <= R.
template <int KW, int SW, int DH, int DW, int R, bool LMASK, bool EDGE>
inline void nhwc_fixed_exact(const NhwcFrame& f, const float* bx, int64_t jlo, int64_t jhi,
                             const float* wt, float* yo, int64_t r, int nl, int act) {
  if constexpr (R > 1) {
    if (r < R) {
      return nhwc_fixed_exact<KW, SW, DH, DW, R - 1, LMASK, EDGE>(f, bx, jlo, jhi, wt, yo, r, nl,
                                                                  act);
    }
  }
  nhwc_fixed_block<KW, SW, DH, DW, R, LMASK, EDGE>(f, bx, jlo, jhi, wt, yo, nl, act);
}

// Address of input column `col` of the frame's rows; col may be negative (a padding column,
// never read), so this goes through integers.
inline const float* frame_column(const NhwcFrame& f, int64_t col) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(f.x) +
                                        static_cast<uintptr_t>(col * f.pxs * 4));
}

// ncols pixels of tiles [t0, t1), in equal blocks (a row of 26 is 13 + 13, not 24 + 2: a short
// block has too few accumulator chains to hide the FMA latency). Tiles are the inner loop: the
// tiles of a pixel are adjacent in memory, so a block's input stays in L1 across them. Blocks
// whose taps reach past the frame's columns (the padding of a row read in place) skip those
// columns instead of reading a zero-padded copy.
template <int KW, int SW, int DH, int DW>
inline void nhwc_fixed_row(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wpk,
                           int64_t t0, int64_t t1, float* yo, int64_t ncols, bool masked_tail,
                           int act) {
  constexpr int PX = fixed_px(KW);
  const int64_t per = div_up(ncols, div_up(ncols, PX));
  for (int64_t j = 0; j < ncols; j += per) {
    const int64_t r = imin(per, ncols - j);
    const int64_t c0 = f.col0 + j * SW;  // input column of the block's first tap
    const int64_t need = (r - 1) * SW + (KW - 1) * DW + 1;
    const int64_t jlo = imax(0, -c0), jhi = imin(need, f.cols - c0);
    const bool edge = jlo > 0 || jhi < need;
    if (f.ahead > 0 && jhi > jlo) {
      // The input rows the next output row adds, for this block's columns and tiles: fetched
      // into L2 while this row computes (the strided reads defeat the hardware prefetcher).
      const int64_t row0 = f.r0 + (p.KH - 1) * DH + 1;
      const int64_t bytes = (t1 - t0) * VL * static_cast<int64_t>(sizeof(float));
      for (int64_t rr = imax(row0, 0); rr < row0 + f.ahead; ++rr) {
        const char* px = reinterpret_cast<const char*>(f.x + rr * f.rowp + (c0 + jlo) * f.pxs);
        for (int64_t q = 0; q < jhi - jlo; ++q) {
          for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(px + q * f.pxs * 4 + b, 0, 2);
        }
      }
    }
    for (int64_t tl = 0; tl < t1 - t0; ++tl) {
      const int nl = tile_lanes(p.C, t0 + tl);
      const float* bx = frame_column(f, c0) + tl * VL;
      float* yb = yo + j * f.ypx + tl * VL;
      const float* wt = wpk + tl * wtile;
      if (masked_tail && nl < VL) {
        if (edge) {
          nhwc_fixed_exact<KW, SW, DH, DW, PX, true, true>(f, bx, jlo, jhi, wt, yb, r, nl, act);
        } else {
          nhwc_fixed_exact<KW, SW, DH, DW, PX, true, false>(f, bx, jlo, jhi, wt, yb, r, nl, act);
        }
      } else if (edge) {
        nhwc_fixed_exact<KW, SW, DH, DW, PX, false, true>(f, bx, jlo, jhi, wt, yb, r, nl, act);
      } else {
        nhwc_fixed_exact<KW, SW, DH, DW, PX, false, false>(f, bx, jlo, jhi, wt, yb, r, nl, act);
      }
    }
  }
}

// Register blocking: PX pixels x CV tiles of accumulators, sized to the vector register file.
constexpr int kPx = kVecRegs >= 32 ? 8 : 4;

// ncols output pixels of one row, tiles [t0, t1): full tiles three at a time, a partial last
// tile alone (read masked when `masked_tail`, i.e. straight from the input).
template <int KW_, int SW_, int DH_, int DW_>
inline void nhwc_row_any(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wpk,
                         int64_t t0, int64_t t1, float* yo, int64_t ncols, bool masked_tail,
                         int act) {
  const int64_t nt = t1 - t0, nfull = imin(nt, p.C / VL - t0);
  const float* x0 = f.x;
  int64_t tl = 0;
  for (; tl + 3 <= nfull; tl += 3) {
    f.x = x0 + tl * VL;
    nhwc_cols<KW_, SW_, DH_, DW_, 3, kPx, false>(p, f, wtile, wpk + tl * wtile, yo + tl * VL,
                                                 ncols, VL, act);
  }
  f.x = x0 + tl * VL;
  if (nfull - tl == 2) {
    nhwc_cols<KW_, SW_, DH_, DW_, 2, kPx, false>(p, f, wtile, wpk + tl * wtile, yo + tl * VL,
                                                 ncols, VL, act);
    tl += 2;
  } else if (nfull - tl == 1) {
    nhwc_cols<KW_, SW_, DH_, DW_, 1, 2 * kPx, false>(p, f, wtile, wpk + tl * wtile, yo + tl * VL,
                                                     ncols, VL, act);
    tl += 1;
  }
  if (tl < nt) {
    f.x = x0 + tl * VL;
    const int nl = tile_lanes(p.C, t0 + tl);
    if (masked_tail) {
      nhwc_cols<KW_, SW_, DH_, DW_, 1, 2 * kPx, true>(p, f, wtile, wpk + tl * wtile,
                                                      yo + tl * VL, ncols, nl, act);
    } else {
      nhwc_cols<KW_, SW_, DH_, DW_, 1, 2 * kPx, false>(p, f, wtile, wpk + tl * wtile,
                                                       yo + tl * VL, ncols, nl, act);
    }
  }
}

// Compile-time shapes take the input-reuse blocks, the others the run-time-shape blocks.
template <int KW_, int SW_, int DH_, int DW_>
inline void nhwc_row(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wpk,
                     int64_t t0, int64_t t1, float* yo, int64_t ncols, bool masked_tail, int act) {
  if constexpr (KW_ > 0 && SW_ > 0 && DH_ > 0 && DW_ > 0) {
    nhwc_fixed_row<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yo, ncols, masked_tail, act);
  } else {
    nhwc_row_any<KW_, SW_, DH_, DW_>(p, f, wtile, wpk, t0, t1, yo, ncols, masked_tail, act);
  }
}

template <int KH_, int KW_, int SW_, int DH_, int DW_>
void dw_nhwc_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const int64_t C = p.C;
  const int64_t KH = KH_ ? KH_ : p.KH;
  const int64_t ntiles = div_up(C, VL);
  const int64_t tpb = a.tiles_per_block;
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
      a.window ? ((a.row_block - 1) * p.SH + span_h) * win_cols * cbw
               : (strip_px > 0 ? span_h * ((strip_px - 1) * p.SW + span_w) * cbw : 0);
  AlignedScratch mem(scr_floats + tpb * wtile);
  float* scr = mem.data;
  float* wpk = scr + scr_floats;
  if (a.window) {
    for (int64_t i = 0; i < scr_floats; i += VL) vstore(scr + i, vzero());
  }
  int64_t packed = -1;  // tile block whose weights are in wpk
  const int64_t rb = a.row_block, nrb = div_up(p.OH, rb);
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
    if (a.window) {
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

void dw_nhwc(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  if constexpr (kShapeKernels) {
    const bool fast = p.DH == 1 && p.DW == 1 && p.KH == p.KW && p.SH == p.SW;
    if (fast && p.KH == 3 && p.SW == 1) return dw_nhwc_items<3, 3, 1, 1, 1>(a, begin, end);
    if (fast && p.KH == 3 && p.SW == 2) return dw_nhwc_items<3, 3, 2, 1, 1>(a, begin, end);
    if (fast && p.KH == 5 && p.SW == 1) return dw_nhwc_items<5, 5, 1, 1, 1>(a, begin, end);
    if (fast && p.KH == 5 && p.SW == 2) return dw_nhwc_items<5, 5, 2, 1, 1>(a, begin, end);
    const bool d2 = p.DH == 2 && p.DW == 2 && p.KH == p.KW && p.SH == 1 && p.SW == 1;
    if (d2 && p.KH == 3) return dw_nhwc_items<3, 3, 1, 2, 2>(a, begin, end);
    if (d2 && p.KH == 5) return dw_nhwc_items<5, 5, 1, 2, 2>(a, begin, end);
  }
  dw_nhwc_items<0, 0, 0, 0, 0>(a, begin, end);
}

// ---------------------------------------------------------------------------------------------
// NCHW depthwise conv
// ---------------------------------------------------------------------------------------------
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
  const int64_t RB = a.row_block;
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

// ---------------------------------------------------------------------------------------------
// NCHW depthwise conv on narrow planes, through channel tiles
// ---------------------------------------------------------------------------------------------
// An output row of 7 or 14 fills at most half of a vector, and is too short to amortize the
// per-row work of the plane kernels above. Here VL planes at a time are transposed in registers
// into a zero-padded NHWC window of one channel tile, computed by the NHWC row kernels, and the
// tile's outputs are transposed back: every vector is full. The planes of a row block are one
// contiguous range per channel, so the transposes run over flat VL-element chunks whatever the
// width. An item is (tile, n, block of row_block output rows); see plan.cpp.

template <int KH_, int KW_, int SW_, int DH_, int DW_>
void dw_nchw_tiled_items(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  const int64_t C = p.C, HW = p.H * p.W, OHW = p.OH * p.OW;
  const int64_t KH = KH_ ? KH_ : p.KH;
  const int64_t span_h = (KH - 1) * p.DH + 1, span_w = (p.KW - 1) * p.DW + 1;
  const int64_t win_cols = (p.OW - 1) * p.SW + span_w;
  const int64_t rb = a.row_block, nrb = div_up(p.OH, rb);
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

void dw_nchw_tiled(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  if constexpr (kShapeKernels) {
    const bool fast = p.DH == 1 && p.DW == 1 && p.KH == p.KW && p.SH == p.SW;
    if (fast && p.KH == 3 && p.SW == 1) return dw_nchw_tiled_items<3, 3, 1, 1, 1>(a, begin, end);
    if (fast && p.KH == 3 && p.SW == 2) return dw_nchw_tiled_items<3, 3, 2, 1, 1>(a, begin, end);
    if (fast && p.KH == 5 && p.SW == 1) return dw_nchw_tiled_items<5, 5, 1, 1, 1>(a, begin, end);
    if (fast && p.KH == 5 && p.SW == 2) return dw_nchw_tiled_items<5, 5, 2, 1, 1>(a, begin, end);
    const bool d2 = p.DH == 2 && p.DW == 2 && p.KH == p.KW && p.SH == 1 && p.SW == 1;
    if (d2 && p.KH == 3) return dw_nchw_tiled_items<3, 3, 1, 2, 2>(a, begin, end);
    if (d2 && p.KH == 5) return dw_nchw_tiled_items<5, 5, 1, 2, 2>(a, begin, end);
  }
  dw_nchw_tiled_items<0, 0, 0, 0, 0>(a, begin, end);
}

void dw_nchw(const DwArgs& a, int64_t begin, int64_t end) {
  const DwConvParams& p = a.p;
  if (a.tiled) return dw_nchw_tiled(a, begin, end);
  if constexpr (kShapeKernels) {
    const bool d1 = p.DH == 1 && p.DW == 1;
    const bool sq = p.KH == p.KW && p.SH == p.SW;
    if (d1 && sq && p.KH == 3 && p.SH == 1) return dw_nchw_items<3, 3, 1, 1, 1>(a, begin, end);
    if (d1 && sq && p.KH == 3 && p.SH == 2) return dw_nchw_items<3, 3, 2, 2, 1>(a, begin, end);
    if (d1 && sq && p.KH == 5 && p.SH == 1) return dw_nchw_items<5, 5, 1, 1, 1>(a, begin, end);
    if (d1 && sq && p.KH == 5 && p.SH == 2) return dw_nchw_items<5, 5, 2, 2, 1>(a, begin, end);
    // Dilation 2, stride 1: the last stage of the segmentation backbones (dilated=True).
    const bool d2 = p.DH == 2 && p.DW == 2 && sq && p.SH == 1;
    if (d2 && p.KH == 3) return dw_nchw_items<3, 3, 1, 1, 2>(a, begin, end);
    if (d2 && p.KH == 5) return dw_nchw_items<5, 5, 1, 1, 2>(a, begin, end);
  }
  dw_nchw_items<0, 0, 0, 0, 0>(a, begin, end);
}

// ---------------------------------------------------------------------------------------------
// Element-wise and squeeze-excite
// ---------------------------------------------------------------------------------------------

void hard_act(const float* x, float* y, int64_t n, bool swish) {
  const vf sixth = vset1(1.0f / 6.0f), half = vset1(0.5f), one = vset1(1.0f), zero = vzero();
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vf v = vload(x + i);
    const vf t = vmin(one, vmax(zero, vfma(v, sixth, half)));
    vstore(y + i, swish ? vmul(v, t) : t);
  }
  if (i < n) {
    const int nl = static_cast<int>(n - i);
    const vf v = vload_n(x + i, nl);
    const vf t = vmin(one, vmax(zero, vfma(v, sixth, half)));
    vstore_n(y + i, swish ? vmul(v, t) : t, nl);
  }
}

inline float sum_n(const float* x, int64_t n) {
  vf a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
  int64_t i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL) {
    a0 = vadd(a0, vload(x + i));
    a1 = vadd(a1, vload(x + i + VL));
    a2 = vadd(a2, vload(x + i + 2 * VL));
    a3 = vadd(a3, vload(x + i + 3 * VL));
  }
  for (; i + VL <= n; i += VL) a0 = vadd(a0, vload(x + i));
  if (i < n) a1 = vadd(a1, vload_n(x + i, static_cast<int>(n - i)));
  return vhsum(vadd(vadd(a0, a1), vadd(a2, a3)));
}

inline float dot_n(const float* x, const float* w, int64_t n) {
  vf a0 = vzero(), a1 = vzero();
  int64_t i = 0;
  for (; i + 2 * VL <= n; i += 2 * VL) {
    a0 = vfma(vload(x + i), vload(w + i), a0);
    a1 = vfma(vload(x + i + VL), vload(w + i + VL), a1);
  }
  for (; i + VL <= n; i += VL) a0 = vfma(vload(x + i), vload(w + i), a0);
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
  // Blocks of up to 8 vectors of channels, held in 8 accumulators across all pixels.
  for (int64_t cb = c0; cb < c1; cb += 8 * VL) {
    const int64_t nc = imin(8 * VL, c1 - cb);
    const int nv = static_cast<int>(div_up(nc, VL));
    vf acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = vzero();
    for (int64_t pix = 0; pix < hw; ++pix) {
      const float* xp = x + pix * C + cb;
      for (int v = 0; v < nv; ++v) {
        const int64_t nl = imin(VL, nc - v * VL);
        acc[v] = vadd(acc[v], nl == VL ? vload(xp + v * VL) : vload_n(xp + v * VL, int(nl)));
      }
    }
    for (int v = 0; v < nv; ++v) {
      const int64_t nl = imin(VL, nc - v * VL);
      if (nl == VL) {
        vstore(sums + cb + v * VL, acc[v]);
      } else {
        vstore_n(sums + cb + v * VL, acc[v], int(nl));
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
    for (; i + VL <= hw; i += VL) vstore(yp + i, vmul(vload(xp + i), sv));
    if (i < hw) {
      const int nl = static_cast<int>(hw - i);
      vstore_n(yp + i, vmul(vload_n(xp + i, nl), sv), nl);
    }
  }
}

void scale_pixels(const float* x, float* y, const float* s, int64_t C, int64_t begin,
                  int64_t end) {
  const int64_t cf = C / VL * VL;
  for (int64_t pix = begin; pix < end; ++pix) {
    const float* xp = x + pix * C;
    float* yp = y + pix * C;
    int64_t c = 0;
    for (; c < cf; c += VL) vstore(yp + c, vmul(vload(xp + c), vload(s + c)));
    if (c < C) {
      const int nl = static_cast<int>(C - c);
      vstore_n(yp + c, vmul(vload_n(xp + c, nl), vload_n(s + c, nl)), nl);
    }
  }
}

void se_fc1(const float* sums, float scale, const float* w1, const float* b1, float* hidden,
            int64_t N, int64_t C, int64_t R, int64_t r0, int64_t r1) {
  // Weight rows outer, samples inner: each weight row is read once for the whole batch.
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t n = 0; n < N; ++n) {
      const float h = b1[r] + scale * dot_n(sums + n * C, w1 + r * C, C);
      hidden[n * R + r] = h < 0.0f ? 0.0f : h;  // relu(NaN) = NaN
    }
  }
}

void se_fc2(const float* hidden, const float* w2, const float* b2, float* gate, int64_t N,
            int64_t C, int64_t R, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t n = 0; n < N; ++n) {
      float g = (b2[c] + dot_n(hidden + n * R, w2 + c * R, R)) * (1.0f / 6.0f) + 0.5f;
      gate[n * C + c] = g < 0.0f ? 0.0f : (g > 1.0f ? 1.0f : g);  // NaN stays NaN
    }
  }
}

const KernelTable kTable = {VL,           dw_nhwc,      dw_nchw, hard_act, plane_sums, pixel_sums,
                            scale_planes, scale_pixels, se_fc1,  se_fc2};
