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
