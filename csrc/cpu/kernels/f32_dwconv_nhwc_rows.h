// Register-block row kernels of the NHWC depthwise conv: ncols output pixels of one output row,
// over a run of channel tiles, from a frame of input rows (the input itself or a zero-padded
// scratch). Used by the NHWC paths (f32_dwconv_nhwc.h) and by the NCHW channel tiles
// (f32_dwconv_nchw_tiles.h). A tile is VL consecutive channels; a tile's weights are packed as
// [bias][tap 0][tap 1]..., VL floats each (nhwc_pack).
//  - compile-time shapes (dwconv_shapes.h): input-reuse blocks of one tile (nhwc_fixed_*), whose
//    blocks at the ends of a row read in place skip the padding columns;
//  - run-time shapes: PX pixels x CV tiles of accumulators (nhwc_block and its tails).
#pragma once

#include "f32_activation.h"
#include "index_math.h"
#include "scratch.h"

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
  // Compile-time-shape kernels only: nrows output rows, the first's taps at row r0, the others
  // SH rows down each, written ystep floats apart; their taps on rows [vlo, vhi) only (kh0 and
  // kh1 are then unused). A tile runs all the rows before the next tile, so its input rows stay
  // in L1 for each output row that reads them.
  int64_t nrows = 1, ystep = 0, vlo = 0, vhi = 0;
  // Compile-time-shape kernels only, or null: every output (after the activation) is also added
  // to its channel's sum, the first tile's channel 0 at sums (a squeeze-excite block's pool,
  // while the outputs are in registers, instead of a pass over them afterwards).
  float* sums = nullptr;
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

// Compile-time shapes (kernel width, stride, dilation): PX output pixels of a row (of each of
// f.nrows rows), for each of `ntiles` consecutive tiles. Per kernel row, the KW weights stay in
// registers and each input vector of the row is loaded once and feeds every (pixel, tap) pair
// that reads it: PX*SW + (KW-1)*DW loads for PX*KW FMAs instead of one load per FMA (stride 1,
// k=5: 0.2 loads per FMA).
// The conditions below are compile-time constants, so the unrolled body is straight-line FMAs.
// The tiles are a loop inside (one call per block of pixels, not per tile), and the input
// columns are walked with one pointer (an add per column): an offset register per column took
// more registers than there are, and their set-up, spills and moves were paid for every tile.
// Measured on one core, a fused block's rows in cache: 3x3 at 14x14 with 672 channels 61 -> 69
// GFLOP/s, 5x5 at 7x7 with 960 97 -> 103, 3x3 stride 2 at 112 wide with 64 35 -> 41.
template <int KW, int SW, int DH, int DW, int PX, bool LMASK, bool EDGE, int LS, int RS>
inline void nhwc_fixed_block(const NhwcFrame& f, const float* bx, int64_t jlo, int64_t jhi,
                             const float* wt, int64_t wtile, float* yo, int64_t ntiles, int nl,
                             int act) {
  constexpr int NJ = (PX - 1) * SW + (KW - 1) * DW + 1;  // input pixels of the block's row
  const int64_t pxs = f.pxs;
  for (int64_t tl = 0; tl < ntiles; ++tl, bx += VL, wt += wtile, yo += VL) {
    float* sm = f.sums != nullptr ? f.sums + tl * VL : nullptr;
    for (int64_t row = 0; row < f.nrows; ++row) {
      const int64_t r0 = f.r0 + row * SW;  // the compile-time shapes have SH == SW
      int64_t kh0 = f.kh0, kh1 = f.kh1;
      if (f.nrows > 1) tap_rows(r0, f.vlo, f.vhi, KW, DH, kh0, kh1);
      float* yr = yo + row * f.ystep;
      vf acc[PX];
      const vf b = vload(wt);
#pragma GCC unroll 32
      for (int px = 0; px < PX; ++px) acc[px] = b;
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const float* xp = bx + (r0 + kh * DH) * f.rowp;
        const float* wk = wt + VL + kh * KW * VL;
        vf w[KW];
#pragma GCC unroll 8
        for (int kw = 0; kw < KW; ++kw) w[kw] = vload(wk + kw * VL);
#pragma GCC unroll 64
        for (int j = 0; j < NJ; ++j) {
          const float* xj = xp;
          xp += pxs;
          asm("" : "+r"(xp));  // an add per column, not an offset register per column
          // Edge blocks skip the input columns that are padding: the first LS and last RS at
          // compile time, others with a (predictable) branch per column.
          if (j < LS || j >= NJ - RS) continue;
          if (EDGE && (j < jlo || j >= jhi)) continue;
          const vf xv = vkeep(LMASK ? vload_n(xj, nl) : vload(xj));
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw) {
            const int t = j - kw * DW;  // SW * pixel
            if (t >= 0 && t % SW == 0 && t / SW < PX) acc[t / SW] = vfma(xv, w[kw], acc[t / SW]);
          }
        }
      }
#pragma GCC unroll 32
      for (int px = 0; px < PX; ++px) {
        acc[px] = act_v(acc[px], act);
        if (nl < VL) {
          vstore_n(yr + px * f.ypx, acc[px], nl);
        } else {
          vstore(yr + px * f.ypx, acc[px]);
        }
      }
      if (sm != nullptr) {  // lanes past nl hold the products of zero weights: not stored
        vf total = acc[0];
#pragma GCC unroll 32
        for (int px = 1; px < PX; ++px) total = vadd(total, acc[px]);
        vstore_n(sm, vadd(vload_n(sm, nl), total), nl);
      }
    }
  }
}

// Pixels per block: accumulators + KW weights + one input vector fill the register file, with
// one register to spare.
constexpr int fixed_px(int kw) { return kVecRegs - kw - 2 < 24 ? kVecRegs - kw - 2 : 24; }

// One block of exactly r pixels, 1 <= r <= R, over ntiles tiles.
template <int KW, int SW, int DH, int DW, int R, bool LMASK, bool EDGE, int LS, int RS>
inline void nhwc_fixed_exact(const NhwcFrame& f, const float* bx, int64_t jlo, int64_t jhi,
                             const float* wt, int64_t wtile, float* yo, int64_t ntiles, int64_t r,
                             int nl, int act) {
  if constexpr (R > 1) {
    if (r < R) {
      return nhwc_fixed_exact<KW, SW, DH, DW, R - 1, LMASK, EDGE, LS, RS>(
          f, bx, jlo, jhi, wt, wtile, yo, ntiles, r, nl, act);
    }
  }
  nhwc_fixed_block<KW, SW, DH, DW, R, LMASK, EDGE, LS, RS>(f, bx, jlo, jhi, wt, wtile, yo, ntiles,
                                                           nl, act);
}

// A block of r <= PX pixels whose taps read input columns [jlo, jhi) of the `need` it spans (the
// others are padding). Where it misses the "same" padding P at either end (the first and last
// blocks of a row, or both for a row that is one block) those columns are left out at compile
// time instead of by a branch per column; every block of the 28-, 14- and 7-wide layers is at
// an edge. One core, rows in cache, ReLU: 672 channels 14 wide 78 -> 83 GFLOP/s, 960 channels 7
// wide k = 5 108 -> 114, 120 channels 28 wide k = 5 100 -> 103. A last tile read masked keeps
// the branch (fewer instantiations).
template <int KW, int SW, int DH, int DW, int PX, bool LMASK>
inline void nhwc_fixed_edges(const NhwcFrame& f, const float* bx, int64_t jlo, int64_t jhi,
                             int64_t need, const float* wt, int64_t wtile, float* yo,
                             int64_t ntiles, int64_t r, int nl, int act) {
  if (jlo == 0 && jhi == need) {
    return nhwc_fixed_exact<KW, SW, DH, DW, PX, LMASK, false, 0, 0>(f, bx, jlo, jhi, wt, wtile,
                                                                    yo, ntiles, r, nl, act);
  }
  if constexpr (!LMASK) {
    constexpr int P = (KW - 1) / 2 * DW;
    const bool left = jlo == P, right = jhi == need - P;
    if (left && right) {
      return nhwc_fixed_exact<KW, SW, DH, DW, PX, false, false, P, P>(f, bx, jlo, jhi, wt, wtile,
                                                                      yo, ntiles, r, nl, act);
    }
    if (left && jhi == need) {
      return nhwc_fixed_exact<KW, SW, DH, DW, PX, false, false, P, 0>(f, bx, jlo, jhi, wt, wtile,
                                                                      yo, ntiles, r, nl, act);
    }
    if (jlo == 0 && right) {
      return nhwc_fixed_exact<KW, SW, DH, DW, PX, false, false, 0, P>(f, bx, jlo, jhi, wt, wtile,
                                                                      yo, ntiles, r, nl, act);
    }
  }
  nhwc_fixed_exact<KW, SW, DH, DW, PX, LMASK, true, 0, 0>(f, bx, jlo, jhi, wt, wtile, yo, ntiles,
                                                          r, nl, act);
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
// Always inlined into nhwc_row (as when all depthwise kernels shared one unit); forcing nhwc_row
// itself inline as well made this unit take minutes longer to compile.
template <int KW, int SW, int DH, int DW>
__attribute__((always_inline)) inline void nhwc_fixed_row(const DwConvParams& p, NhwcFrame f, int64_t wtile, const float* wpk,
                           int64_t t0, int64_t t1, float* yo, int64_t ncols, bool masked_tail,
                           int act) {
  constexpr int PX = fixed_px(KW);
  const int64_t per = div_up(ncols, div_up(ncols, PX));
  // Whole tiles in one call; a last tile of fewer than VL channels in another (stored masked,
  // and read masked when `masked_tail`).
  const int64_t nt = t1 - t0;
  const int last_nl = tile_lanes(p.C, t1 - 1);
  const int64_t nfull = last_nl < VL ? nt - 1 : nt;
  for (int64_t j = 0; j < ncols; j += per) {
    const int64_t r = imin(per, ncols - j);
    const int64_t c0 = f.col0 + j * SW;  // input column of the block's first tap
    const int64_t need = (r - 1) * SW + (KW - 1) * DW + 1;
    const int64_t jlo = imax(0, -c0), jhi = imin(need, f.cols - c0);
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
    const float* bx = frame_column(f, c0);
    float* yb = yo + j * f.ypx;
    // The full tiles' last lane count is VL (nl = VL: no masked store).
    if (nfull > 0) {
      nhwc_fixed_edges<KW, SW, DH, DW, PX, false>(f, bx, jlo, jhi, need, wpk, wtile, yb, nfull, r,
                                                  VL, act);
    }
    if (nfull < nt) {
      const float* bl = bx + nfull * VL;
      const float* wl = wpk + nfull * wtile;
      float* yl = yb + nfull * VL;
      NhwcFrame fl = f;
      if (fl.sums != nullptr) fl.sums += nfull * VL;
      if (masked_tail) {
        nhwc_fixed_edges<KW, SW, DH, DW, PX, true>(fl, bl, jlo, jhi, need, wl, wtile, yl, 1, r,
                                                   last_nl, act);
      } else {
        nhwc_fixed_edges<KW, SW, DH, DW, PX, false>(fl, bl, jlo, jhi, need, wl, wtile, yl, 1, r,
                                                    last_nl, act);
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
