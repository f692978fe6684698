// Raw-pointer interface of the pointwise (1x1) conv kernels: a GEMM with the folded BN bias,
// activation, residual add and a per-sample input-channel scale (the squeeze-excite gate) in its
// prologue/epilogue. Plain C++ (no torch), like kernels.h, so the per-ISA translation units
// (f32_gemm_*.cpp) include nothing compiled for the wider instruction set by accident.
//
// Packed weights (pointwise_conv_bn_act.cpp packs them; the modules cache the result): panels of
// kPanel output channels, each [bias][k = 0][k = 1]...[k = K-1], kPanel floats per row, output
// channels past Cout zero. One format serves every ISA and both layouts:
//   NHWC: y[m, co] = sum_k x[m, k] * W[co, k]: the panel rows are the B operand (vectors of
//         output channels), x's elements are broadcast;
//   NCHW: y[co, q] = sum_k W[co, k] * x[k, q]: x's rows are the B operand (vectors of pixels), the
//         panel's elements are broadcast (a k step reads consecutive floats of one row).
#pragma once

#include <cstdint>

namespace mnv3 {
namespace cpu {

constexpr int64_t kPanel = 32;  // output channels per packed panel

inline int64_t pointwise_panels(int64_t cout) { return (cout + kPanel - 1) / kPanel; }
inline int64_t pointwise_panel_floats(int64_t k) { return (k + 1) * kPanel; }

struct PwArgs {
  int64_t N, HW, K, Cout;   // x: N x K channels x HW pixels; y: N x Cout x HW
  int act;                  // 0 none, 1 relu, 2 hardswish, 3 relu6
  const float* x;           // NHWC (rows of K) or NCHW (planes of HW), dense
  float* y;                 // same layout as x
  const float* packed;      // pointwise_panels(Cout) panels of pointwise_panel_floats(K)
  const float* residual;    // added after the activation, layout of y; or null
  const float* scale;       // (N, K): x's channels scaled per sample; or null
  // NHWC only: output channels [col_lo, col_hi) of the panels a call names, the rest untouched
  // (both multiples of 16, or col_hi = Cout): a fused block's threads split its expand
  // channels at 16-channel steps, not whole panels (15 panels: 7.5 each, not 7 and 8).
  int64_t col_lo = 0;
  int64_t col_hi = INT64_MAX;
  // Streaming (non-temporal) stores for the output: set when it is far larger than the caches,
  // so the store neither reads the line first nor evicts what the next tiles need. Applies
  // when y and its rows are vector-aligned (otherwise plain stores).
  bool stream = false;
  // NHWC only, for a product over part of x's channels (a fused block whose threads each hold
  // some of the expanded channels): x's rows are lda floats apart, the scale's samples
  // scale_stride (0: K for both), consecutive panels panel_stride floats (0: a panel of K), and
  // no_bias starts the sums at zero instead of the panel's bias row.
  int64_t lda = 0;
  // NHWC only: y's (and the residual's) rows are ldy floats apart (0: Cout); a fused block
  // writes its expanded rows at a padded pixel stride (inverted_residual.cpp).
  int64_t ldy = 0;
  int64_t scale_stride = 0;
  int64_t panel_stride = 0;
  bool no_bias = false;
};

// A small dense conv (groups = 1, any kernel) as the same GEMM: each register tile's input
// patches are gathered (zero padding included) into scratch first, K = C * KH * KW in (c, kh, kw)
// order, the order of weight.reshape(Cout, K). Reads NCHW or NHWC, writes NHWC.
struct DenseConvArgs {
  int64_t N, C, H, W, Cout, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW;
  int act;
  bool x_nhwc;
  const float* x;
  float* y;              // (N, OH, OW, Cout)
  const float* packed;   // pointwise_panels(Cout) panels of pointwise_panel_floats(C * KH * KW)
  bool stream = false;   // as PwArgs::stream (the direct stem kernel only)
};

struct PointwiseKernels {
  int mr;  // output rows (NHWC pixels, NCHW channels) per register tile
  int panel_group;  // NHWC panels a call should cover at least, where it can (2: two-panel tiles)
  // NHWC: output rows [r0, r1) of sample n (rows n*HW + r), panels [p0, p1). Without a scale,
  // a caller may pass n = 0 and rows of the whole batch (r1 <= N*HW). scratch: at least
  // pointwise_scratch_floats(K) floats, 64-byte aligned (the scaled x chunk).
  void (*nhwc)(const PwArgs& a, int64_t n, int64_t r0, int64_t r1, int64_t p0, int64_t p1,
               float* scratch);
  // NCHW: pixels [q0, q1) of sample n, panels [p0, p1); scratch as above.
  void (*nchw)(const PwArgs& a, int64_t n, int64_t q0, int64_t q1, int64_t p0, int64_t p1,
               float* scratch);
  // Dense conv: output rows [r0, r1) of the flattened (n, oh) range; scratch: at least
  // kMaxTileRows * C * KH * KW floats.
  void (*dense)(const DenseConvArgs& a, int64_t r0, int64_t r1, float* scratch);
  // `panels` packed panels of K input channels with input channel k's weights times s[k] (the
  // bias rows copied): a per-sample input scale folded into the weights, W diag(s).
  void (*scale_panels)(const float* packed, const float* s, int64_t K, int64_t panels,
                       float* dst);
};
constexpr int64_t kMaxTileRows = 8;
// Floats of the x block that a row range keeps cache-resident while the panels pass over it.
constexpr int64_t kGemmChunkFloats = 8192;
// Scratch a kernel call needs (pointwise: a scaled panel or a scaled x chunk; dense: patches).
inline int64_t pointwise_scratch_floats(int64_t k) {
  const int64_t panel = pointwise_panel_floats(k), rows = kMaxTileRows * k;
  const int64_t chunk = rows > kGemmChunkFloats ? rows : kGemmChunkFloats;
  return panel > chunk ? panel : chunk;
}

// The kernels of the active ISA (isa.h), and a per-thread 64-byte-aligned scratch buffer of at
// least `floats` floats, reused across calls (pointwise_conv_bn_act.cpp).
const PointwiseKernels& pointwise_kernels();
float* gemm_thread_scratch(int64_t floats);
// Part `part` of an NHWC call (rows of a.N samples) cut into `parts` near-equal parts, as
// pointwise_conv_bn_act.cpp's threads run it; the fused block's projection runs it on the
// threads of its own parallel region.
void pointwise_nhwc_part(const PwArgs& a, int64_t part, int64_t parts);

const PointwiseKernels& pointwise_portable();
const PointwiseKernels& pointwise_avx2();    // only call when the CPU has AVX2+FMA
const PointwiseKernels& pointwise_avx512();  // only call when the CPU has AVX-512F

}  // namespace cpu
}  // namespace mnv3
