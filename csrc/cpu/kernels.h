// Raw-pointer interface of the CPU kernels. Plain C++ on purpose: the ISA-specific translation
// units include this header and nothing from torch, so no inline torch code gets compiled for a
// wider instruction set than the rest of the library.
#pragma once

#include <cstdint>

#include "../common/dwconv_params.h"

namespace mnv3 {
namespace cpu {

// One dwconv_bn_act call. Work is cut into "items" that the caller spreads over threads
// (plan.cpp); a tile is `lanes` consecutive channels (the vector width of the kernel table):
//   NHWC: item = (block of tiles_per_block tiles, n, block of row_block output rows)
//   NCHW: item = (n, c, block of row_block output rows), or when tiled
//         item = (tile, n, block of row_block output rows)
struct DwArgs {
  DwConvParams p;
  int act;                  // Activation as int: 0 none, 1 relu, 2 hardswish
  const float* x;           // input, NHWC or NCHW contiguous
  float* y;                 // output, same layout as x
  const float* w;           // weight (C, KH*KW), contiguous
  const float* b;           // bias (C), or null for none
  int64_t tiles_per_block;  // NHWC
  int64_t row_block;
  bool window;              // NHWC: read the input through a padded window (kernels_impl.h)
  bool tiled;               // NCHW: transpose channel tiles through an NHWC window
};

struct KernelTable {
  int lanes;  // floats per vector
  void (*dw_nhwc)(const DwArgs& a, int64_t item_begin, int64_t item_end);
  void (*dw_nchw)(const DwArgs& a, int64_t item_begin, int64_t item_end);
  // y[i] = hardswish(x[i]) (swish) or hardsigmoid(x[i]), i in [0, n)
  void (*hard_act)(const float* x, float* y, int64_t n, bool swish);
  // sums[pl] = sum of x[pl*hw .. pl*hw+hw) for planes pl in [begin, end)
  void (*plane_sums)(const float* x, float* sums, int64_t hw, int64_t begin, int64_t end);
  // sums[c] = sum over hw pixels of x[pix*C + c], c in [c0, c1): one NHWC sample
  void (*pixel_sums)(const float* x, float* sums, int64_t C, int64_t hw, int64_t c0, int64_t c1);
  // y = x * s[plane] for planes in [begin, end) of hw elements (NCHW)
  void (*scale_planes)(const float* x, float* y, const float* s, int64_t hw, int64_t begin,
                       int64_t end);
  // y[pix*C + c] = x[pix*C + c] * s[c] for pixels in [begin, end) of one NHWC sample
  void (*scale_pixels)(const float* x, float* y, const float* s, int64_t C, int64_t begin,
                       int64_t end);
  // hidden[n*R + r] = relu(b1[r] + scale * <sums[n*C ..], w1[r*C ..]>), rows r in [r0, r1)
  void (*se_fc1)(const float* sums, float scale, const float* w1, const float* b1, float* hidden,
                 int64_t N, int64_t C, int64_t R, int64_t r0, int64_t r1);
  // gate[n*C + c] = hardsigmoid(b2[c] + <hidden[n*R ..], w2[c*R ..]>), channels c in [c0, c1)
  void (*se_fc2)(const float* hidden, const float* w2, const float* b2, float* gate, int64_t N,
                 int64_t C, int64_t R, int64_t c0, int64_t c1);
};

const KernelTable& portable_kernels();
const KernelTable& avx2_kernels();    // only call when the CPU has AVX2+FMA
const KernelTable& avx512_kernels();  // only call when the CPU has AVX-512F

}  // namespace cpu
}  // namespace mnv3
