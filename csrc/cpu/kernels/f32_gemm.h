// Pointwise (1x1) conv and small dense conv kernel bodies (see ../pointwise.h), shared by the
// f32_gemm_<tile>_<isa>.cpp translation units. Not a normal header: the including file opens an
// anonymous namespace, includes its ISA's vector primitives (../simd/<isa>.h), defines MR (rows
// per register tile) and NV (vectors per tile row), then includes this file inside that
// namespace, so everything here is compiled once per ISA.
//
// A register tile is MR output rows x NV vectors (the accumulators never leave registers); the
// bias initializes them; the activation and the residual are applied before the single store.
// A panel is kPanel output channels; when NV * VL < kPanel (AVX2, portable), a panel is walked in
// slices of NV * VL channels. Indices are int64_t: large NHWC tensors overflow 32-bit offsets.
//
// The activation is f32_activation.h's act_v (NaN in, NaN out, as PyTorch).

#include "f32_activation.h"

constexpr int64_t kSlice = static_cast<int64_t>(NV) * VL;  // output channels per register tile
static_assert(kPanel % kSlice == 0, "a panel must hold whole register-tile slices");

constexpr int64_t kChunkFloats = kGemmChunkFloats;

// The input channels that get a tile with K known at compile time: MobileNetV3's 16-channel
// layers (the first block's projection, the second's expansion), where a K loop of 16 steps
// with a run-time row stride ran at 0.7x the speed of the compile-time one (K = 16, 112 rows,
// output in L1/L2; 7 x 16 tiles 43-52 vs 64-66 GFLOP/s, 7 x 32 tiles 48-54 vs 61-69).
constexpr int64_t kSmallK = 16;

inline int64_t gmin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t gmax(int64_t a, int64_t b) { return a > b ? a : b; }

// dst = src with rows 1..K (the weights of input channel k = row - 1) times s[k]; the bias row is
// copied. This is the squeeze-excite gate folded into the weights: W * diag(s), per sample.
inline void scale_panel(const float* src, const float* s, int64_t K, float* dst) {
  for (int64_t j = 0; j < kPanel; j += VL) vstore(dst + j, vload(src + j));
  for (int64_t k = 0; k < K; ++k) {
    const vf sk = vset1(s[k]);
    const float* sr = src + (k + 1) * kPanel;
    float* dr = dst + (k + 1) * kPanel;
    for (int64_t j = 0; j < kPanel; j += VL) vstore(dr + j, vmul(vload(sr + j), sk));
  }
}

// Stores row r of a tile: n real lanes in vector v (n >= VL: all), residual added first;
// nt: full vectors as streaming stores (y aligned to a vector).
__attribute__((always_inline)) inline void store_out(vf o, float* y, const float* res, int n,
                                                     bool nt = false) {
  if (n >= VL) {
    if (res != nullptr) o = vadd(o, vload(res));
    if (nt) {
      vstream(y, o);
    } else {
      vstore(y, o);
    }
  } else {
    if (res != nullptr) o = vadd(o, vload_n(res, n));
    vstore_n(y, o, n);
  }
}

// A tile epilogue's activation (kActAny: the call's, at run time), residual and streaming as
// compile-time constants.
constexpr int kActAny = -1;
template <int ACT, bool RES, bool NT>
struct Epilogue {
  static constexpr int act = ACT;
  static constexpr bool res = RES, nt = NT;
};

// Calls store(Epilogue<...>{}) for the combinations MobileNetV3's 1x1 convs use (an expansion's
// activation without residual or streaming; a projection's residual and streaming without
// activation) and returns true, else returns false (the caller's run-time epilogue). A tile's
// stores with the activation and the residual tested per vector ran up to 1.2x slower (one core,
// 784 px 40 -> 240 with h-swish 115 -> 95 us, 120 -> 240 275 -> 247).
template <class Store>
__attribute__((always_inline)) inline bool fixed_epilogue(int act, bool res, bool nt,
                                                          Store&& store) {
  if (!res && !nt) {
    switch (act) {
      case kActNone:
        store(Epilogue<kActNone, false, false>{});
        return true;
      case kActRelu:
        store(Epilogue<kActRelu, false, false>{});
        return true;
      case kActHardSwish:
        store(Epilogue<kActHardSwish, false, false>{});
        return true;
      default:
        return false;
    }
  }
  if (act != kActNone) return false;
  if (res && nt) {
    store(Epilogue<kActNone, true, true>{});
  } else if (res) {
    store(Epilogue<kActNone, true, false>{});
  } else {
    store(Epilogue<kActNone, false, true>{});
  }
  return true;
}

// store_out of a full vector with E's activation (act: kActAny's), residual and streaming.
template <class E>
__attribute__((always_inline)) inline void store_full(vf o, float* y, const float* res,
                                                      int act) {
  o = act_v(o, E::act == kActAny ? act : E::act);
  if constexpr (E::res) o = vadd(o, vload(res));
  if constexpr (E::nt) {
    vstream(y, o);
  } else {
    vstore(y, o);
  }
}

// store_out of lanes [0, n), n < VL, with E's activation (act: kActAny's) and residual.
template <class E>
__attribute__((always_inline)) inline void store_part(vf o, float* y, const float* res, int n,
                                                      int act) {
  o = act_v(o, E::act == kActAny ? act : E::act);
  if constexpr (E::res) o = vadd(o, vload_n(res, n));
  vstore_n(y, o, n);
}

// Stores an R x V register tile (rows ld floats apart, ncols real lanes per row) through the
// activation, residual (same layout) added: fixed_epilogue's loop where the rows are whole,
// else store_out's tests per vector.
template <int R, int V>
__attribute__((always_inline)) inline void store_tile(const vf (&acc)[R][V], float* y,
                                                      int64_t ld, const float* res, int ncols,
                                                      int act, bool nt) {
  if (ncols >= V * VL &&
      fixed_epilogue(act, res != nullptr, nt, [&](auto e) __attribute__((always_inline)) {
        using E = decltype(e);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v) {
            store_full<E>(acc[r][v], y + r * ld + v * VL, E::res ? res + r * ld + v * VL : nullptr,
                          act);
          }
        }
      })) {
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      store_out(act_v(acc[r][v], act), y + r * ld + v * VL,
                res != nullptr ? res + r * ld + v * VL : nullptr, ncols - v * VL, nt);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC: R pixels x V vectors of output channels. a: x at the tile's first pixel (rows of lda
// floats); pb: the panel slice (bias row first, then kPanel floats per k); y/res: the tile's first
// output element (rows of ldy floats); ncols: real output channels of the slice.
// ---------------------------------------------------------------------------------------------
// KMAJOR: a holds gathered patches k-major, MR floats per k (a[k * MR + r]); lda is unused.
// KC > 0: K = lda = KC at compile time (dense rows of x): each row's x elements are immediate
// offsets from one pointer instead of an indexed address per row.
// bias: the accumulators' start (kPanel floats), null for the panel's bias row (pb).
// pb1: a two-panel tile's second panel (V > kPanel / VL: its vectors [kPanel / VL, V) are that
// panel's, and bias, if any, starts both panels).
template <int R, int V, bool KMAJOR = false, int KC = 0>
inline void nhwc_tile(int64_t K, const float* a, int64_t lda, const float* pb, float* y,
                      int64_t ldy, const float* res, int ncols, int act, bool nt,
                      const float* bias = nullptr, const float* pb1 = nullptr) {
  constexpr int H = kPanel / VL;  // vectors per panel
  vf acc[R][V];
#pragma GCC unroll 8
  for (int v = 0; v < V; ++v) {
    const vf b = vload((bias != nullptr ? bias : v < H ? pb : pb1) + (v % H) * VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][v] = b;
  }
  const float* bk = pb + kPanel;
  const float* bk1 = V > H ? pb1 + kPanel : nullptr;
  const int64_t kn = KC > 0 ? KC : K, ld = KC > 0 ? KC : lda;
#pragma GCC unroll 2
  for (int64_t k = 0; k < kn; ++k) {
    vf w[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) w[v] = vload((v < H ? bk : bk1) + k * kPanel + (v % H) * VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf xr = vset1(KMAJOR ? a[k * MR + r] : a[r * ld + k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(xr, w[v], acc[r][v]);
    }
  }
  store_tile<R, V>(acc, y, ldy, res, ncols, act, nt);
}

template <int R, int V, bool KMAJOR = false, int KC = 0>
inline void nhwc_tile_rows(int rows, int64_t K, const float* a, int64_t lda, const float* pb,
                           float* y, int64_t ldy, const float* res, int ncols, int act,
                           bool nt = false, const float* bias = nullptr,
                           const float* pb1 = nullptr) {
  if constexpr (R > 0) {
    if (rows == R) {
      return nhwc_tile<R, V, KMAJOR, KC>(K, a, lda, pb, y, ldy, res, ncols, act, nt, bias, pb1);
    }
    nhwc_tile_rows<R - 1, V, KMAJOR, KC>(rows, K, a, lda, pb, y, ldy, res, ncols, act, nt, bias,
                                         pb1);
  }
}

#ifdef MNV3_PAIR_TILES
// Pair vectors: lane pair j of a vector holds output channel j's products with input channels
// k (even lane) and k + 1 (odd lane), x[m, k] and x[m, k + 1] being one 8-byte broadcast: for
// a slice of at most VL / 2 channels (the 8 after 16, 32 or 64 in 24, 40, 72, 200) half the
// FMAs of a 16-lane tile, and for a panel of 24 channels (24-channel outputs, the last 24 of
// 120, 184) three of them take one broadcast per row and input-channel pair where a vector and
// a pair vector take three (a load per FMA). The two partial sums of a lane pair are added at
// the end, then the bias, the activation and the residual as in nhwc_tile.
//
// The pair weights [w_k[c], w_k+1[c], ...] are interleaved once per call (pair_interleave), not
// by a permute per tile and input-channel pair. One core, 3136 px 72 -> 24 78.4 -> 72.4 us,
// 12544 px 64 -> 24 324 -> 296, 3136 px 88 -> 24 96 -> 88.

// Vector q of input-channel pair kp at pw + kp * pstride + q * VL: channels [q * VL / 2,
// (q + 1) * VL / 2) of the panel slice pb (bias row first), for q in [0, nv).
inline void pair_interleave(int64_t K, const float* pb, int nv, int64_t pstride, float* pw) {
  const float* bk = pb + kPanel;
  for (int64_t k = 0; k + 2 <= K; k += 2) {
    for (int q = 0; q < nv; ++q) {
      vstore(pw + (k / 2) * pstride + q * VL,
             vpair_w(bk + k * kPanel + q * (VL / 2), bk + (k + 1) * kPanel + q * (VL / 2)));
    }
  }
}

// Stores row r's pair sums of P pair vectors (ncols real channels), bias b[q] added, with E's
// activation and residual.
template <int P, class E>
__attribute__((always_inline)) inline void store_pairs(const vf* acc, const vf* b, float* y,
                                                       const float* res, int ncols, int act) {
#pragma GCC unroll 4
  for (int q = 0; q < P; ++q) {
    const int n = ncols - q * (VL / 2);
    store_part<E>(vadd(vpair_sum(acc[q]), b[q]), y + q * (VL / 2),
                  E::res ? res + q * (VL / 2) : nullptr, n < VL / 2 ? n : VL / 2, act);
  }
}

// Calls store(Epilogue<...>{}) for any activation, residual and streaming: fixed_epilogue's
// combinations, the others with the activation at run time.
template <class Store>
__attribute__((always_inline)) inline void any_epilogue(int act, bool res, bool nt,
                                                        Store&& store) {
  if (fixed_epilogue(act, res, nt, store)) return;
  if (res && nt) {
    store(Epilogue<kActAny, true, true>{});
  } else if (res) {
    store(Epilogue<kActAny, true, false>{});
  } else if (nt) {
    store(Epilogue<kActAny, false, true>{});
  } else {
    store(Epilogue<kActAny, false, false>{});
  }
}

template <int P>
__attribute__((always_inline)) inline void load_pair_bias(const float* b0, int ncols, vf* b) {
#pragma GCC unroll 4
  for (int q = 0; q < P; ++q) {
    const int n = ncols - q * (VL / 2);
    b[q] = vload_n(b0 + q * (VL / 2), n < VL / 2 ? n : VL / 2);
  }
}

// R rows x P pair vectors (ncols <= P * VL / 2 channels). pb: the slice's panel (bias row first,
// the odd K's last row read from it); pw / pstride: its interleaved weights; bias: the
// accumulators' bias (null: pb's row).
template <int R, int P>
inline void nhwc_pairs_tile(int64_t K, const float* a, int64_t lda, const float* pb,
                            const float* pw, int64_t pstride, float* y, int64_t ldy,
                            const float* res, int ncols, int act, const float* bias) {
  vf acc[R][P];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q) acc[r][q] = vzero();
  }
  int64_t k = 0;
#pragma GCC unroll 2
  for (; k + 2 <= K; k += 2) {
    const float* wk = pw + (k / 2) * pstride;
    vf w[P];
#pragma GCC unroll 4
    for (int q = 0; q < P; ++q) w[q] = vload(wk + q * VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf xp = vpair_x(a + r * lda + k);
#pragma GCC unroll 4
      for (int q = 0; q < P; ++q) acc[r][q] = vfma(xp, w[q], acc[r][q]);
    }
  }
  if (k < K) {
    const float* bk = pb + kPanel + k * kPanel;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int q = 0; q < P; ++q) {
        acc[r][q] = vpair_fma_even(a[r * lda + k], bk + q * (VL / 2), acc[r][q]);
      }
    }
  }
  vf b[P];
  load_pair_bias<P>(bias != nullptr ? bias : pb, ncols, b);
  any_epilogue(act, res != nullptr, false, [&](auto e) __attribute__((always_inline)) {
    using E = decltype(e);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      store_pairs<P, E>(acc[r], b, y + r * ldy, E::res ? res + r * ldy : nullptr, ncols, act);
    }
  });
}

template <int R, int P>
inline void nhwc_pairs_tile_rows(int rows, int64_t K, const float* a, int64_t lda,
                                 const float* pb, const float* pw, int64_t pstride, float* y,
                                 int64_t ldy, const float* res, int ncols, int act,
                                 const float* bias) {
  if constexpr (R > 0) {
    if (rows == R) {
      return nhwc_pairs_tile<R, P>(K, a, lda, pb, pw, pstride, y, ldy, res, ncols, act, bias);
    }
    nhwc_pairs_tile_rows<R - 1, P>(rows, K, a, lda, pb, pw, pstride, y, ldy, res, ncols, act,
                                   bias);
  }
}

// V vectors of output channels and a pair vector of at most VL / 2 more, over the same rows:
// 2 V + 1 FMAs per row and two input channels. V = 2: a whole panel and the at most VL / 2
// channels of the next (40 = 32 + 8), instead of a 7 x 32 tile and a pair tile that each read
// the rows of x. The vectors' sums are the two-vector tile's (the same FMAs in the same order),
// the pair's are nhwc_pairs_tile's.
// pb: the vectors' panel (bias row first); pp: the pair's channels in their panel (bias row
// first), pw / pstride: their interleaved weights; bias / pbias: the vectors' and the pair's
// bias (bias null: pb's row).
template <int R, int V>
inline void nhwc_vec_pair_tile(int64_t K, const float* a, int64_t lda, const float* pb,
                               const float* pp, const float* pw, int64_t pstride, float* y,
                               int64_t ldy, const float* res, int ncols, int act, bool nt,
                               const float* bias, const float* pbias) {
  vf acc[R][V], accp[R];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const vf bv = vload((bias != nullptr ? bias : pb) + v * VL);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][v] = bv;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) accp[r] = vzero();
  const float* bk = pb + kPanel;
  int64_t k = 0;
#pragma GCC unroll 2
  for (; k + 2 <= K; k += 2) {
    vf w0[V], w1[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      w0[v] = vload(bk + k * kPanel + v * VL);
      w1[v] = vload(bk + (k + 1) * kPanel + v * VL);
    }
    const vf wp = vload(pw + (k / 2) * pstride);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* ar = a + r * lda + k;
      const vf x0 = vset1(ar[0]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(x0, w0[v], acc[r][v]);
      accp[r] = vfma(vpair_x(ar), wp, accp[r]);
      const vf x1 = vset1(ar[1]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(x1, w1[v], acc[r][v]);
    }
  }
  if (k < K) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf x0 = vset1(a[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(x0, vload(bk + k * kPanel + v * VL), acc[r][v]);
      accp[r] = vpair_fma_even(a[r * lda + k], pp + kPanel + k * kPanel, accp[r]);
    }
  }
  vf bp[1];
  load_pair_bias<1>(pbias, ncols - V * VL, bp);
  any_epilogue(act, res != nullptr, nt, [&](auto e) __attribute__((always_inline)) {
    using E = decltype(e);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        store_full<E>(acc[r][v], y + r * ldy + v * VL, E::res ? res + r * ldy + v * VL : nullptr,
                      act);
      }
      store_pairs<1, Epilogue<E::act, E::res, false>>(
          &accp[r], bp, y + r * ldy + V * VL, E::res ? res + r * ldy + V * VL : nullptr,
          ncols - V * VL, act);
    }
  });
}

template <int R, int V>
inline void nhwc_vec_pair_tile_rows(int rows, int64_t K, const float* a, int64_t lda,
                                    const float* pb, const float* pp, const float* pw,
                                    int64_t pstride, float* y, int64_t ldy, const float* res,
                                    int ncols, int act, bool nt, const float* bias,
                                    const float* pbias) {
  if constexpr (R > 0) {
    if (rows == R) {
      return nhwc_vec_pair_tile<R, V>(K, a, lda, pb, pp, pw, pstride, y, ldy, res, ncols, act,
                                      nt, bias, pbias);
    }
    nhwc_vec_pair_tile_rows<R - 1, V>(rows, K, a, lda, pb, pp, pw, pstride, y, ldy, res, ncols,
                                      act, nt, bias, pbias);
  }
}

// Rows of the pair tiles (24 accumulators for a 24-channel panel).
constexpr int kPairRows = 8;

// A per-thread buffer of at least `floats` floats for the interleaved pair weights, reused.
inline float* pair_weights_buffer(int64_t floats) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t cap = 0;
  if (cap < floats) {
    buf.reset(new float[floats]);
    cap = floats;
  }
  return buf.get();
}
#endif

// Up to RMAX rows of x (rows of lda floats) x V vectors; the compile-time-K tile when
// K = lda = kSmallK.
template <int V, int RMAX = MR>
inline void nhwc_x_rows(int rows, int64_t K, const float* a, int64_t lda, const float* pb,
                        float* y, int64_t ldy, const float* res, int ncols, int act, bool nt,
                        const float* bias, const float* pb1 = nullptr) {
  if (K == kSmallK && lda == K) {
    nhwc_tile_rows<RMAX, V, false, kSmallK>(rows, K, a, K, pb, y, ldy, res, ncols, act, nt, bias,
                                            pb1);
  } else {
    nhwc_tile_rows<RMAX, V>(rows, K, a, lda, pb, y, ldy, res, ncols, act, nt, bias, pb1);
  }
}

// Rows of the tile of a panel and at most a vector of the next (24 accumulators).
constexpr int kTripleRows = 8;

// The accumulators' start of a call without a bias (PwArgs::no_bias).
alignas(64) constexpr float kZeroRow[kPanel] = {};

// Whether a call's full output vectors go out as streaming stores: asked for, and every one
// aligned (rows of whole vectors from an aligned start).
inline bool stream_stores(bool asked, const float* y, int64_t ldy) {
  return asked && ldy % VL == 0 && reinterpret_cast<uintptr_t>(y) % (VL * sizeof(float)) == 0;
}

void pw_nhwc(const PwArgs& a, int64_t n, int64_t r0, int64_t r1, int64_t p0, int64_t p1,
             float* scratch) {
  const int64_t K = a.K, Cout = a.Cout;
  const int64_t pf = a.panel_stride > 0 ? a.panel_stride : pointwise_panel_floats(K);
  const int64_t lda = a.lda > 0 ? a.lda : K;
  const int64_t ldy = a.ldy > 0 ? a.ldy : Cout;
  const float* bias = a.no_bias ? kZeroRow : nullptr;
  const int64_t base = n * a.HW;
  const float* x = a.x + base * lda;
  float* y = a.y + base * ldy;
  const float* res = a.residual != nullptr ? a.residual + base * ldy : nullptr;
  const bool nt = stream_stores(a.stream, a.y, ldy);
  // Two-panel tiles where the call has two whole panels in a row (AVX-512); their rows set the
  // chunks' (and tiles') heights.
  const int64_t lo_col = gmax(a.col_lo, p0 * kPanel), hi_col = gmin(gmin(a.col_hi, Cout), p1 * kPanel);
  const bool wide = WR > 0 && (hi_col / kPanel) - (lo_col + kPanel - 1) / kPanel >= 2;
  const int64_t tr = wide ? WR : MR;
#ifdef MNV3_PAIR_TILES
  // The call's last panel, where its channels are pair vectors (at most VL / 2 of them, or
  // VL < n <= 3 VL / 2): their weights interleaved once for every tile.
  const int64_t pair_p = (hi_col - 1) / kPanel;
  const int64_t pair_real = gmin(kPanel, Cout - pair_p * kPanel);
  const bool pair_panel =
      hi_col > lo_col && (pair_real <= VL / 2 || (pair_real > VL && pair_real <= VL + VL / 2));
  const int pair_nv = static_cast<int>((pair_real + VL / 2 - 1) / (VL / 2));
  const int64_t pstride = pair_nv * VL;
  float* pw = nullptr;
  if (pair_panel) {
    pw = pair_weights_buffer(gmax(1, K / 2) * pstride);
    pair_interleave(K, a.packed + pair_p * pf, pair_nv, pstride, pw);
  }
#endif
  // Rows per chunk: the chunk's x rows stay in L1/L2 while every panel of the call passes. The
  // rows are cut into near-equal chunks (49 rows in 6-row chunks: four of 6 and five of 5, not
  // eight of 6 and one of 1).
  const int64_t mc = gmax(tr, kChunkFloats / gmax(K, 1) / tr * tr);
  const int64_t nchunks = (r1 - r0 + mc - 1) / mc;
  for (int64_t ci = 0, c0 = r0, c1 = r0; ci < nchunks; ++ci, c0 = c1) {
    c1 = wide ? r0 + (r1 - r0) * (ci + 1) / nchunks : gmin(r1, c0 + mc);
    // The squeeze-excite gate scales the chunk's x rows once, in cache, for all the panels
    // (measured: scaling each panel's weights instead cost up to +130% on 7x7 and 14x14 layers,
    // where a chunk is a single tile and the panels were rescaled for every one).
    const float* xc = x;  // row m of the chunk at xc + m * ldc
    int64_t ldc = lda;
    if (a.scale != nullptr) {
      const float* s = a.scale + n * (a.scale_stride > 0 ? a.scale_stride : K);
      for (int64_t m = c0; m < c1; ++m) {
        const float* src = x + m * lda;
        float* dst = scratch + (m - c0) * K;
        int64_t k = 0;
        for (; k + VL <= K; k += VL) vstore(dst + k, vmul(vload(src + k), vload(s + k)));
        if (k < K) vstore_n(dst + k, vmul(vload_n(src + k, static_cast<int>(K - k)),
                                          vload_n(s + k, static_cast<int>(K - k))), static_cast<int>(K - k));
      }
      xc = scratch - c0 * K;
      ldc = K;
    }
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = a.packed + p * pf;
      if constexpr (WR > 0) {
        if (wide && p * kPanel >= lo_col && (p + 2) * kPanel <= hi_col) {
          // Panels p and p + 1, whole, as one two-panel tile of up to WR rows x 2 * kPanel
          // channels: 24 accumulators on AVX-512, each x element broadcast once for four
          // weight vectors (10 loads per 24 FMAs; two 7 x 32 tiles take 18 per 28). Measured on
          // one core (hot, Xeon with two 512-bit FMA units): 188-196 GFLOP/s against 171-176 for
          // 7 x 32 tiles at K = 112 to 960, 164 against 155 at K = 64. The chunk's rows go in
          // near-equal tiles.
          const int64_t n = c1 - c0, tiles = (n + WR - 1) / WR;
          for (int64_t t = 0, m = c0; t < tiles; ++t) {
            const int rows = static_cast<int>(n / tiles + (t < n % tiles));
            nhwc_x_rows<2 * kPanel / VL, WR>(rows, K, xc + m * ldc, ldc, panel,
                                             y + m * ldy + p * kPanel, ldy,
                                             res != nullptr ? res + m * ldy + p * kPanel : nullptr,
                                             2 * kPanel, a.act, nt, bias, panel + pf);
            m += rows;
          }
          ++p;
          continue;
        }
      }
      // Panel p, whole, and the call's channels of panel p + 1 (its last) as one tile.
      const int64_t tail = hi_col - (p + 1) * kPanel;  // channels of panel p + 1
      [[maybe_unused]] const bool whole_and_part = p + 1 < p1 && p * kPanel >= lo_col && tail > 0;
      if constexpr (WR > 0) {
        if (whole_and_part && tail > VL / 2 && tail <= VL) {
          // Panel p, whole, and the at most VL channels of panel p + 1 (240 = 3 x 64 + 48,
          // 112 = 64 + 48, 48) as one tile of 8 rows x 3 vectors (24 accumulators, as the
          // two-panel tile), where a 7 x 32 tile and a 7 x 16 tile each read x's rows, the
          // second with 7 accumulators (FMA latency bound).
          for (int64_t m = c0; m < c1; m += kTripleRows) {
            const int rows = static_cast<int>(gmin(kTripleRows, c1 - m));
            nhwc_x_rows<3, kTripleRows>(rows, K, xc + m * ldc, ldc, panel,
                                        y + m * ldy + p * kPanel, ldy,
                                        res != nullptr ? res + m * ldy + p * kPanel : nullptr,
                                        static_cast<int>(kPanel + tail), a.act, nt, bias,
                                        panel + pf);
          }
          ++p;
          continue;
        }
      }
#ifdef MNV3_PAIR_TILES
      if constexpr (NV == 2) {
        if (whole_and_part && tail <= VL / 2) {
          // Panel p, whole, and the at most VL / 2 channels of panel p + 1 (the pair panel) as
          // one tile.
          for (int64_t m = c0; m < c1; m += MR) {
            const int rows = static_cast<int>(gmin(MR, c1 - m));
            nhwc_vec_pair_tile_rows<MR, 2>(rows, K, xc + m * ldc, ldc, panel, panel + pf, pw,
                                           pstride, y + m * ldy + p * kPanel, ldy,
                                           res != nullptr ? res + m * ldy + p * kPanel : nullptr,
                                           static_cast<int>(kPanel + tail), a.act, nt, bias,
                                           bias != nullptr ? bias : panel + pf);
          }
          ++p;
          continue;
        }
      }
#endif
      const int64_t cols = gmin(gmin(kPanel, Cout - p * kPanel), a.col_hi - p * kPanel);
      for (int64_t s0 = gmax(0, a.col_lo - p * kPanel); s0 < cols; s0 += kSlice) {
        const int nc = static_cast<int>(gmin(kSlice, cols - s0));
        const float* pb = panel + s0;
        const int64_t yoff = p * kPanel + s0;
#ifdef MNV3_PAIR_TILES
        if (pair_panel && p == pair_p) {
          // Pair vectors: nc <= VL / 2 channels (the last of 40, 72, 200) or part or all of a
          // 24-channel panel (a fused block's threads may cut it at 16).
          const float* pws = pw + s0 / (VL / 2) * VL;
          const float* bs = bias != nullptr ? bias + s0 : nullptr;
          for (int64_t m = c0; m < c1; m += kPairRows) {
            const int rows = static_cast<int>(gmin(kPairRows, c1 - m));
            const float* xa = xc + m * ldc;
            float* yo = y + m * ldy + yoff;
            const float* ro = res != nullptr ? res + m * ldy + yoff : nullptr;
            if (nc > VL) {
              nhwc_pairs_tile_rows<kPairRows, 3>(rows, K, xa, ldc, pb, pws, pstride, yo, ldy, ro,
                                                 nc, a.act, bs);
            } else if (nc > VL / 2) {
              nhwc_pairs_tile_rows<kPairRows, 2>(rows, K, xa, ldc, pb, pws, pstride, yo, ldy, ro,
                                                 nc, a.act, bs);
            } else {
              nhwc_pairs_tile_rows<kPairRows, 1>(rows, K, xa, ldc, pb, pws, pstride, yo, ldy, ro,
                                                 nc, a.act, bs);
            }
          }
          continue;
        }
#endif
        for (int64_t m = c0; m < c1; m += MR) {
          const int rows = static_cast<int>(gmin(MR, c1 - m));
          const float* xa = xc + m * ldc;
          float* yo = y + m * ldy + yoff;
          const float* ro = res != nullptr ? res + m * ldy + yoff : nullptr;
          if (nc > (NV - 1) * VL) {
            nhwc_x_rows<NV>(rows, K, xa, ldc, pb, yo, ldy, ro, nc, a.act, nt,
                            bias != nullptr ? bias + s0 : nullptr);
          } else if constexpr (NV > 1) {
            nhwc_x_rows<NV - 1>(rows, K, xa, ldc, pb, yo, ldy, ro, nc, a.act, nt,
                                bias != nullptr ? bias + s0 : nullptr);
          }
        }
      }
    }
  }
  if (nt) vstream_fence();
}

// ---------------------------------------------------------------------------------------------
// NCHW: R output channels x V vectors of pixels. pa: the panel's weights for the tile's first
// channel (kPanel floats per k; element r of a row is channel r); bias: its bias; x: the input
// plane of channel 0 at the tile's first pixel (planes of hw floats); y/res likewise for output
// channel 0 of the tile; nq: real pixels of the tile (TAIL: fewer than V * VL).
// ---------------------------------------------------------------------------------------------
template <int R, int V, bool TAIL>
inline void nchw_tile(int64_t K, const float* pa, const float* bias, const float* x, int64_t hw,
                      float* y, const float* res, int nq, int act) {
  vf acc[R][V];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const vf b = vset1(bias[r]);
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = b;
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    const float* xk = x + k * hw;
    vf xv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      if (TAIL) {
        const int n = nq - v * VL;
        xv[v] = vload_n(xk + v * VL, n < VL ? n : VL);
      } else {
        xv[v] = vload(xk + v * VL);
      }
    }
    const float* wk = pa + k * kPanel;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf w = vset1(wk[r]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(w, xv[v], acc[r][v]);
    }
  }
  store_tile<R, V>(acc, y, hw, res, TAIL ? nq : V * VL, act, false);
}

template <int R, int V, bool TAIL>
inline void nchw_tile_rows(int rows, int64_t K, const float* pa, const float* bias,
                           const float* x, int64_t hw, float* y, const float* res, int nq,
                           int act) {
  if constexpr (R > 0) {
    if (rows == R) return nchw_tile<R, V, TAIL>(K, pa, bias, x, hw, y, res, nq, act);
    nchw_tile_rows<R - 1, V, TAIL>(rows, K, pa, bias, x, hw, y, res, nq, act);
  }
}

template <int V>
inline void nchw_tile_any(int rows, int64_t K, const float* pa, const float* bias,
                          const float* x, int64_t hw, float* y, const float* res, int nq,
                          int act) {
  if (nq == V * VL) {
    nchw_tile_rows<MR, V, false>(rows, K, pa, bias, x, hw, y, res, nq, act);
  } else {
    nchw_tile_rows<MR, V, true>(rows, K, pa, bias, x, hw, y, res, nq, act);
  }
}

void pw_nchw(const PwArgs& a, int64_t n, int64_t q0, int64_t q1, int64_t p0, int64_t p1,
             float* scratch) {
  const int64_t K = a.K, Cout = a.Cout, HW = a.HW, pf = pointwise_panel_floats(K);
  const float* x = a.x + n * K * HW;
  float* y = a.y + n * Cout * HW;
  const float* res = a.residual != nullptr ? a.residual + n * Cout * HW : nullptr;
  // Pixels per chunk: the chunk's K x chunk block of x stays in L2 while the panels pass.
  const int64_t qc = gmax(kSlice, kChunkFloats * 4 / gmax(K, 1) / kSlice * kSlice);
  int64_t scaled = -1;
  for (int64_t c0 = q0; c0 < q1; c0 += qc) {
    const int64_t c1 = gmin(q1, c0 + qc);
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = a.packed + p * pf;
      if (a.scale != nullptr) {
        if (scaled != p) scale_panel(panel, a.scale + n * K, K, scratch);
        scaled = p;
        panel = scratch;
      }
      const int64_t cols = gmin(kPanel, Cout - p * kPanel);
      for (int64_t i0 = 0; i0 < cols; i0 += MR) {
        const int rows = static_cast<int>(gmin(MR, cols - i0));
        const int64_t co = p * kPanel + i0;
        for (int64_t q = c0; q < c1; q += kSlice) {
          const int nq = static_cast<int>(gmin(kSlice, c1 - q));
          const float* pa = panel + kPanel + i0;
          float* yo = y + co * HW + q;
          const float* ro = res != nullptr ? res + co * HW + q : nullptr;
          if (nq > (NV - 1) * VL) {
            nchw_tile_any<NV>(rows, K, pa, panel + i0, x + q, HW, yo, ro, nq, a.act);
          } else if constexpr (NV > 1) {
            nchw_tile_any<NV - 1>(rows, K, pa, panel + i0, x + q, HW, yo, ro, nq, a.act);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Dense conv: MR output pixels of a row at a time, their K = C*KH*KW input values gathered into
// scratch (k-major, MR floats per k, padding as zeros), then the NHWC tiles reading it k-major.
// ---------------------------------------------------------------------------------------------
static_assert(MR <= kMaxTileRows, "scratch is sized for kMaxTileRows rows");
static_assert(MR <= VL, "a tap's rows are stored with one vector store");

inline void gather_patches(const DenseConvArgs& a, int64_t n, int64_t oh, int64_t ow0, int rows,
                           float* dst) {
  // k-major: the rows' values of tap k are dst[k * MR .. k * MR + rows), a contiguous store.
  // Element (c, ih, iw) is at row(c, ih)[iw * cs]: NCHW rows are contiguous, NHWC rows step C.
  const int64_t cs = a.x_nhwc ? a.C : 1;
  const int64_t span = (rows - 1) * a.SW;  // first to last input column of a tap over the rows
  int64_t k = 0;
  for (int64_t c = 0; c < a.C; ++c) {
    for (int64_t i = 0; i < a.KH; ++i) {
      const int64_t ih = oh * a.SH - a.PH + i * a.DH;
      const float* xr = nullptr;
      if (ih >= 0 && ih < a.H) {
        xr = a.x_nhwc ? a.x + (n * a.H + ih) * a.W * a.C + c : a.x + ((n * a.C + c) * a.H + ih) * a.W;
      }
      for (int64_t j = 0; j < a.KW; ++j, ++k) {
        const int64_t iw0 = ow0 * a.SW - a.PW + j * a.DW;
        float* d = dst + k * MR;
        if (xr != nullptr && iw0 >= 0 && iw0 + span < a.W) {  // interior: no bounds per pixel
          const float* s = xr + iw0 * cs;
          // NCHW rows with a vector's worth of room to the right: one or two vector loads (the
          // stem's stride 2 deinterleaved) instead of `rows` scalar ones.
          if (cs == 1 && a.SW == 1 && iw0 + VL <= a.W) {
            vstore_n(d, vload(s), rows);
          } else if (cs == 1 && a.SW == 2 && iw0 + 2 * VL <= a.W) {
            vf even, odd;
            vdeinterleave2(vload(s), vload(s + VL), even, odd);
            vstore_n(d, even, rows);
          } else {
            for (int r = 0; r < rows; ++r) d[r] = s[r * a.SW * cs];
          }
        } else {
          for (int r = 0; r < rows; ++r) {
            const int64_t iw = iw0 + r * a.SW;
            d[r] = (xr != nullptr && iw >= 0 && iw < a.W) ? xr[iw * cs] : 0.0f;
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Direct dense conv for the stem's shape (3 input channels, 3x3 taps, stride 1 or 2, no
// dilation, at most two vectors of output channels): the 27 weight vectors stay in registers
// and each output pixel is 27 broadcast FMAs read straight from the input, R pixels at a time.
// The patch gather above costs as much as the arithmetic for so short a K (27).
// ---------------------------------------------------------------------------------------------
constexpr int kDirectC = 3, kDirectK = 3;

inline bool dense_direct_fits(const DenseConvArgs& a) {
  return a.C == kDirectC && a.KH == kDirectK && a.KW == kDirectK && a.DH == 1 && a.DW == 1 &&
         a.SH == a.SW && (a.SH == 1 || a.SH == 2) && a.Cout <= 2 * VL && a.Cout <= kPanel;
}

template <int R, int CV, int S, bool NHWC, bool EDGE>
inline void dense_direct_block(const DenseConvArgs& a, const float* xn, int64_t ih0, int64_t iw0,
                               const vf (&w)[kDirectC * kDirectK * kDirectK][CV], const vf (&b)[CV],
                               float* y, bool nt) {
  const int64_t cs = NHWC ? 1 : a.H * a.W, rs = NHWC ? a.W * kDirectC : a.W;
  constexpr int64_t ps = NHWC ? kDirectC : 1;
  vf acc[R][CV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < CV; ++v) acc[r][v] = b[v];
  }
#pragma GCC unroll 3
  for (int c = 0; c < kDirectC; ++c) {
#pragma GCC unroll 3
    for (int ky = 0; ky < kDirectK; ++ky) {
      const int64_t ih = ih0 + ky;
      if (EDGE && (ih < 0 || ih >= a.H)) continue;
      const float* xr = xn + c * cs + ih * rs;
#pragma GCC unroll 3
      for (int kx = 0; kx < kDirectK; ++kx) {
        const int t = (c * kDirectK + ky) * kDirectK + kx;
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const int64_t iw = iw0 + r * S + kx;
          if (EDGE && (iw < 0 || iw >= a.W)) continue;
          const vf xv = vset1(xr[iw * ps]);
#pragma GCC unroll 2
          for (int v = 0; v < CV; ++v) acc[r][v] = vfma(xv, w[t][v], acc[r][v]);
        }
      }
    }
  }
  store_tile<R, CV>(acc, y, a.Cout, nullptr, static_cast<int>(a.Cout), a.act, nt);
}

// The interior of a row, one vector of output channels (AVX-512: 32 registers): blocks of RW
// pixels with the weights loaded for each input channel of each block (9 vectors, from L1), not
// held in 27 registers. That leaves room for RW accumulators, more independent FMA chains than
// the 4 of the 27-register blocks. Every accumulator takes the same FMAs in the same order as in
// dense_direct_block, so the same bits. Not inlined: the caller's 27 weight registers are saved
// around the call, not spilled inside the loop.
// Measured (Xeon, MobileNetV3's stem, 224 x 224 NCHW, hot, medians): one core 129 -> 117-122 us;
// two threads at batch 8 512 -> 458-483 us.
constexpr int kDirectRW = 14;

template <int R, int S, bool NHWC>
inline void dense_direct_wblock(const DenseConvArgs& a, const float* xn, int64_t ih0, int64_t iw0,
                                float* y, bool nt) {
  const int64_t cs = NHWC ? 1 : a.H * a.W, rs = NHWC ? a.W * kDirectC : a.W;
  constexpr int64_t ps = NHWC ? kDirectC : 1;
  vf acc[R];
  const vf b = vload(a.packed);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = b;
  for (int c = 0; c < kDirectC; ++c) {
    vf w[kDirectK * kDirectK];
#pragma GCC unroll 9
    for (int t = 0; t < kDirectK * kDirectK; ++t) {
      w[t] = vkeep(vload(a.packed + (c * kDirectK * kDirectK + t + 1) * kPanel));
    }
    // Input column j of the block feeds pixel r through tap kx = j - r * S: one broadcast per
    // column, each accumulator still taking its taps in kx order.
    constexpr int NJ = (R - 1) * S + kDirectK;
#pragma GCC unroll 3
    for (int ky = 0; ky < kDirectK; ++ky) {
      const float* xr = xn + c * cs + (ih0 + ky) * rs + iw0 * ps;
#pragma GCC unroll 64
      for (int j = 0; j < NJ; ++j) {
        const vf xv = vkeep(vset1(xr[j * ps]));
#pragma GCC unroll 3
        for (int kx = 0; kx < kDirectK; ++kx) {
          const int t = j - kx;
          if (t >= 0 && t % S == 0 && t / S < R) {
            acc[t / S] = vfma(xv, w[ky * kDirectK + kx], acc[t / S]);
          }
        }
      }
    }
  }
  if (a.Cout >= VL &&
      fixed_epilogue(a.act, false, nt, [&](auto e) __attribute__((always_inline)) {
        using E = decltype(e);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) store_full<E>(acc[r], y + r * a.Cout, nullptr, 0);
      })) {
    return;
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    store_out(act_v(acc[r], a.act), y + r * a.Cout, nullptr, static_cast<int>(a.Cout), nt);
  }
}

// Output columns [ow, ow + RW * blocks) of a row whose taps are all inside the image.
template <int S, bool NHWC>
__attribute__((noinline)) void dense_direct_interior(const DenseConvArgs& a, const float* xn,
                                                     int64_t ih0, int64_t ow, int64_t blocks,
                                                     float* yrow, bool nt) {
  for (int64_t i = 0; i < blocks; ++i, ow += kDirectRW) {
    dense_direct_wblock<kDirectRW, S, NHWC>(a, xn, ih0, ow * S - a.PW, yrow + ow * a.Cout, nt);
  }
}

template <int CV, int S, bool NHWC>
void dense_direct(const DenseConvArgs& a, int64_t r0, int64_t r1) {
  constexpr int T = kDirectC * kDirectK * kDirectK, R = 4;
  vf w[T][CV], b[CV];
  for (int v = 0; v < CV; ++v) {
    b[v] = vload(a.packed + v * VL);  // panel 0: the bias row, then one row per tap
    for (int t = 0; t < T; ++t) w[t][v] = vload(a.packed + (t + 1) * kPanel + v * VL);
  }
  // Output columns whose taps all fall inside the row: [ow_lo, ow_hi).
  const int64_t ow_lo = gmin(a.OW, (a.PW + S - 1) / S);
  const int64_t last = a.W - kDirectK + a.PW;  // S * ow <= last
  const int64_t ow_hi = gmax(ow_lo, gmin(a.OW, last < 0 ? 0 : last / S + 1));
  const bool nt = stream_stores(a.stream, a.y, a.Cout);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.OH, oh = row % a.OH;
    const float* xn = a.x + n * kDirectC * a.H * a.W;
    const int64_t ih0 = oh * S - a.PH;
    float* yrow = a.y + row * a.OW * a.Cout;
    const bool rows_in = ih0 >= 0 && ih0 + kDirectK <= a.H;
    const int64_t lo = rows_in ? ow_lo : a.OW, hi = rows_in ? ow_hi : a.OW;
    for (int64_t ow = 0; ow < lo; ++ow) {
      dense_direct_block<1, CV, S, NHWC, true>(a, xn, ih0, ow * S - a.PW, w, b,
                                               yrow + ow * a.Cout, nt);
    }
    int64_t ow = lo;
    if constexpr (CV == 1 && kVecRegs >= 32) {  // RW accumulators + 9 weights fit
      const int64_t blocks = (hi - lo) / kDirectRW;
      if (blocks > 0) dense_direct_interior<S, NHWC>(a, xn, ih0, ow, blocks, yrow, nt);
      ow += blocks * kDirectRW;
    }
    for (; ow + R <= hi; ow += R) {
      dense_direct_block<R, CV, S, NHWC, false>(a, xn, ih0, ow * S - a.PW, w, b,
                                                yrow + ow * a.Cout, nt);
    }
    for (; ow < hi; ++ow) {
      dense_direct_block<1, CV, S, NHWC, false>(a, xn, ih0, ow * S - a.PW, w, b,
                                                yrow + ow * a.Cout, nt);
    }
    for (ow = gmax(hi, lo); ow < a.OW; ++ow) {
      dense_direct_block<1, CV, S, NHWC, true>(a, xn, ih0, ow * S - a.PW, w, b,
                                               yrow + ow * a.Cout, nt);
    }
  }
  if (nt) vstream_fence();
}

template <int CV>
void dense_direct_any(const DenseConvArgs& a, int64_t r0, int64_t r1) {
  if (a.SH == 1) {
    a.x_nhwc ? dense_direct<CV, 1, true>(a, r0, r1) : dense_direct<CV, 1, false>(a, r0, r1);
  } else {
    a.x_nhwc ? dense_direct<CV, 2, true>(a, r0, r1) : dense_direct<CV, 2, false>(a, r0, r1);
  }
}

void dense_conv(const DenseConvArgs& a, int64_t r0, int64_t r1, float* scratch) {
  if (dense_direct_fits(a)) {
    if (a.Cout <= VL) return dense_direct_any<1>(a, r0, r1);
    return dense_direct_any<2>(a, r0, r1);
  }
  const int64_t K = a.C * a.KH * a.KW, Cout = a.Cout, pf = pointwise_panel_floats(K);
  const int64_t P = pointwise_panels(Cout);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.OH, oh = row % a.OH;
    float* yrow = a.y + row * a.OW * Cout;
    for (int64_t ow0 = 0; ow0 < a.OW; ow0 += MR) {
      const int rows = static_cast<int>(gmin(MR, a.OW - ow0));
      gather_patches(a, n, oh, ow0, rows, scratch);
      for (int64_t p = 0; p < P; ++p) {
        const float* panel = a.packed + p * pf;
        const int64_t cols = gmin(kPanel, Cout - p * kPanel);
        for (int64_t s0 = 0; s0 < cols; s0 += kSlice) {
          const int nc = static_cast<int>(gmin(kSlice, cols - s0));
          float* yo = yrow + ow0 * Cout + p * kPanel + s0;
          if (nc > (NV - 1) * VL) {
            nhwc_tile_rows<MR, NV, true>(rows, K, scratch, K, panel + s0, yo, Cout, nullptr, nc, a.act);
          } else if constexpr (NV > 1) {
            nhwc_tile_rows<MR, NV - 1, true>(rows, K, scratch, K, panel + s0, yo, Cout, nullptr, nc, a.act);
          }
        }
      }
    }
  }
}

void scale_panels(const float* packed, const float* s, int64_t K, int64_t panels, float* dst) {
  const int64_t pf = pointwise_panel_floats(K);
  for (int64_t p = 0; p < panels; ++p) scale_panel(packed + p * pf, s, K, dst + p * pf);
}

const PointwiseKernels kPointwise = {MR, WR > 0 ? 2 : 1, &pw_nhwc, &pw_nchw, &dense_conv,
                                     &scale_panels};
