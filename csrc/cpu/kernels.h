// Raw-pointer interface of the CPU kernels: one table per instruction set. Plain C++ on purpose:
// the ISA-specific translation units (kernels/*_<isa>.cpp) include this header and nothing from
// torch, so no inline torch code gets compiled for a wider instruction set than the rest of the
// library.
#pragma once

#include <cstdint>

#include "../common/dwconv_params.h"
#include "plan.h"

namespace mnv3 {
namespace cpu {

// One dwconv_bn_act call; work is cut into the items of `plan` (plan.h), spread over threads
// by the caller (dwconv_bn_act.cpp).
struct DwArgs {
  DwConvParams p;
  int act;         // Activation as int: 0 none, 1 relu, 2 hardswish, 3 relu6
  const float* x;  // input, NHWC or NCHW contiguous
  float* y;        // output, same layout as x
  const float* w;  // weight (C, KH*KW), contiguous
  const float* b;  // bias (C), or null for none
  DwPlan plan;
};

// Items [item_begin, item_end) of a depthwise call.
using DwKernel = void(const DwArgs& a, int64_t item_begin, int64_t item_end);

// Depthwise rows of a fused inverted-residual block (inverted_residual.cpp): `rows` output rows
// (all channels) from a frame of buffer rows that hold the expanded input rows, each
// p.W = (OW - 1) * SW + (KW - 1) * DW + 1 pixels wide with the padding columns stored as zeros.
struct DwBandArgs {
  DwConvParams p;      // C, KH, KW, SH, SW, DH, DW, OW are read
  int act;
  const float* w;      // weight (C, KH*KW) and bias (C) or null: what dw_band_pack reads
  const float* b;
  const float* wpk;    // dw_band_pack's output: what dw_band reads
  const float* frame;  // buffer row 0, column 0
  int64_t rowp;        // floats per buffer row
  int64_t pxs;         // floats per buffer pixel (>= C; 0: C)
  int64_t first;       // buffer row of output row 0's first tap; row j's is first + j * SH
  int64_t valid_lo, valid_hi;  // buffer rows [valid_lo, valid_hi) are image rows, others padding
  int64_t rows;
  int64_t t0, t1;      // channel tiles (lanes channels each) [t0, t1); the buffer holds all C
  // In place (the block has no expand conv: the frame is x itself): frame column 0 is image
  // column 0, columns outside [0, cols) are padding that the kernel skips (col0 = -PW). Only
  // where dw_band_in_place says the shape has such kernels; otherwise 0 and 0 (a buffer frame).
  int64_t col0, cols;
  float* y;            // output row 0, pixel 0, channel 0
  int64_t ldy;         // floats per output row
  // Or null: each output (after the activation) also added to sums[c] for its channel c. Only
  // where dw_band_in_place says the shape has compile-time kernels (the others ignore it).
  float* sums;
};
// Floats of dw_band_pack's output, for an ISA of `lanes` floats per vector.
inline int64_t dw_band_packed_floats(int64_t C, int64_t taps, int lanes) {
  return (C + lanes - 1) / lanes * lanes * (1 + taps);
}
using DwBandPackKernel = void(const DwBandArgs& a, float* dst);
using DwBandKernel = void(const DwBandArgs& a);
using DwBandInPlaceKernel = bool(const DwConvParams& p);
// y[i] = hardswish(x[i]) (swish) or hardsigmoid(x[i]), i in [0, n)
using HardActKernel = void(const float* x, float* y, int64_t n, bool swish);
// sums[pl] = sum of x[pl*hw .. pl*hw+hw) for planes pl in [begin, end)
using PlaneSumsKernel = void(const float* x, float* sums, int64_t hw, int64_t begin, int64_t end);
// sums[c] = sum over hw pixels of x[pix*C + c], c in [c0, c1): one NHWC sample
using PixelSumsKernel = void(const float* x, float* sums, int64_t C, int64_t hw, int64_t c0,
                             int64_t c1);
// hidden[n*R + r] = relu(b1[r] + scale * <sums[n*C ..], w1[r*C ..]>), rows r in [r0, r1)
using SeFc1Kernel = void(const float* sums, float scale, const float* w1, const float* b1,
                         float* hidden, int64_t N, int64_t C, int64_t R, int64_t r0, int64_t r1);
// gate[n*C + c] = hardsigmoid(b2[c] + <hidden[n*R ..], w2[c*R ..]>), channels c in [c0, c1)
using SeFc2Kernel = void(const float* hidden, const float* w2, const float* b2, float* gate,
                         int64_t N, int64_t C, int64_t R, int64_t c0, int64_t c1);
// y = x * s[plane] for planes in [begin, end) of hw elements (NCHW)
using ScalePlanesKernel = void(const float* x, float* y, const float* s, int64_t hw,
                               int64_t begin, int64_t end);
// y[pix*C + c] = x[pix*C + c] * s[c] for pixels in [begin, end) of one NHWC sample
using ScalePixelsKernel = void(const float* x, float* y, const float* s, int64_t C,
                               int64_t begin, int64_t end);

struct KernelTable {
  int lanes;  // floats per vector
  // dwconv_bn_act, one per DwPath (kernels/f32_dwconv_*.h)
  DwKernel* dw_nhwc;  // NhwcRows and NhwcWindow
  DwKernel* dw_nchw_planes;
  DwKernel* dw_nchw_tiles;
  // the fused block's depthwise rows (kernels/f32_dwconv_band.h)
  DwBandPackKernel* dw_band_pack;
  DwBandKernel* dw_band;
  DwBandInPlaceKernel* dw_band_in_place;
  // hardswish, hardsigmoid (kernels/f32_hard_act.h)
  HardActKernel* hard_act;
  // squeeze_excite, its four phases (kernels/f32_squeeze_excite.h)
  PlaneSumsKernel* se_plane_sums;
  PixelSumsKernel* se_pixel_sums;
  SeFc1Kernel* se_fc1;
  SeFc2Kernel* se_fc2;
  ScalePlanesKernel* se_scale_planes;
  ScalePixelsKernel* se_scale_pixels;
};

// The table of the active instruction set (isa.h), built in kernel_table.cpp.
const KernelTable& kernels();

// Each instruction set's entry points, defined by kernels/*_<isa>.cpp. The AVX2 and AVX-512
// ones exist on x86 only, and may only run where the CPU has the instruction set.
#define MNV3_CPU_KERNEL_ENTRIES       \
  DwKernel dw_nhwc;                   \
  DwKernel dw_nchw_planes;            \
  DwKernel dw_nchw_tiles;             \
  DwBandPackKernel dw_band_pack;      \
  DwBandKernel dw_band;               \
  DwBandInPlaceKernel dw_band_in_place; \
  HardActKernel hard_act;             \
  PlaneSumsKernel se_plane_sums;      \
  PixelSumsKernel se_pixel_sums;      \
  SeFc1Kernel se_fc1;                 \
  SeFc2Kernel se_fc2;                 \
  ScalePlanesKernel se_scale_planes;  \
  ScalePixelsKernel se_scale_pixels;

namespace portable {
constexpr int kLanes = 8;
MNV3_CPU_KERNEL_ENTRIES
}  // namespace portable
namespace avx2 {
constexpr int kLanes = 8;
MNV3_CPU_KERNEL_ENTRIES
}  // namespace avx2
namespace avx512 {
constexpr int kLanes = 16;
MNV3_CPU_KERNEL_ENTRIES
}  // namespace avx512

#undef MNV3_CPU_KERNEL_ENTRIES

}  // namespace cpu
}  // namespace mnv3
