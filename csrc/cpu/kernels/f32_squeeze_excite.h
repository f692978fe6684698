// Squeeze-excite: x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))), in four phases that
// squeeze_excite.cpp spreads over threads: pool (plane or pixel sums), fc1 + relu, fc2 +
// hardsigmoid, scale.
#pragma once

#include "index_math.h"

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

// The dot products of x with J rows w[0..J) of n floats each, side by side (J sequential streams
// through memory). Every row gets the same arithmetic whatever J is, so the same bits.
template <int J>
inline void dots_n(const float* x, const float* const* w, int64_t n, float* out) {
  vf a0[J], a1[J];
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j) a0[j] = a1[j] = vzero();
  int64_t i = 0;
  for (; i + 2 * VL <= n; i += 2 * VL) {
    const vf x0 = vload(x + i), x1 = vload(x + i + VL);
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) {
      a0[j] = vfma(x0, vload(w[j] + i), a0[j]);
      a1[j] = vfma(x1, vload(w[j] + i + VL), a1[j]);
    }
  }
  for (; i + VL <= n; i += VL) {
    const vf x0 = vload(x + i);
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) a0[j] = vfma(x0, vload(w[j] + i), a0[j]);
  }
  if (i < n) {
    const int nl = static_cast<int>(n - i);
    const vf x1 = vload_n(x + i, nl);
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) a1[j] = vfma(x1, vload_n(w[j] + i, nl), a1[j]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j) out[j] = vhsum(vadd(a0[j], a1[j]));
}

inline float dot_n(const float* x, const float* w, int64_t n) {
  float d;
  dots_n<1>(x, &w, n, &d);
  return d;
}

// Rows a one-sample FC layer takes at once (row_dots).
constexpr int kRowStreams = 4;

// f(r, dot_n(x, row r of w)) for rows [r0, r1) of w (rows of n floats), for one sample's
// squeeze-excite FC layers, whose weights come from memory (up to 1.8 MB per block, read once
// per call at batch 1). The rows are taken kRowStreams at a time, one from each of kRowStreams
// equal parts of the range: a core reads memory faster from several sequential streams than
// from one (2-core Xeon VM, 256 MB read by each of 2 threads: 8.9 GB/s per thread from one
// stream, 14.0 from four). Rows after the last whole group are taken one by one.
template <typename F>
inline void row_dots(const float* x, const float* w, int64_t n, int64_t r0, int64_t r1,
                     const F& f) {
  constexpr int J = kRowStreams;
  int64_t r = r0;
  if (r1 - r0 >= 2 * J) {
    const int64_t q = (r1 - r0) / J;
    const float* rows[J];
    float d[J];
    for (int64_t i = 0; i < q; ++i) {
      for (int j = 0; j < J; ++j) rows[j] = w + (r0 + j * q + i) * n;
      dots_n<J>(x, rows, n, d);
      for (int j = 0; j < J; ++j) f(r0 + j * q + i, d[j]);
    }
    r = r0 + J * q;
  }
  for (; r < r1; ++r) f(r, dot_n(x, w + r * n, n));
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

void fc1_relu(const float* sums, float scale, const float* w1, const float* b1, float* hidden,
            int64_t N, int64_t C, int64_t R, int64_t r0, int64_t r1) {
  auto put = [&](int64_t n, int64_t r, float d) {
    const float h = b1[r] + scale * d;
    hidden[n * R + r] = h < 0.0f ? 0.0f : h;  // relu(NaN) = NaN
  };
  if (N == 1) return row_dots(sums, w1, C, r0, r1, [&](int64_t r, float d) { put(0, r, d); });
  // Weight rows outer, samples inner: each weight row is read once for the whole batch.
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t n = 0; n < N; ++n) put(n, r, dot_n(sums + n * C, w1 + r * C, C));
  }
}

void fc2_hardsigmoid(const float* hidden, const float* w2, const float* b2, float* gate, int64_t N,
            int64_t C, int64_t R, int64_t c0, int64_t c1) {
  auto put = [&](int64_t n, int64_t c, float d) {
    const float g = (b2[c] + d) * (1.0f / 6.0f) + 0.5f;
    gate[n * C + c] = g < 0.0f ? 0.0f : (g > 1.0f ? 1.0f : g);  // NaN stays NaN
  };
  if (N == 1) return row_dots(hidden, w2, R, c0, c1, [&](int64_t c, float d) { put(0, c, d); });
  for (int64_t c = c0; c < c1; ++c) {
    for (int64_t n = 0; n < N; ++n) put(n, c, dot_n(hidden + n * R, w2 + c * R, R));
  }
}
