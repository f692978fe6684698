// Portable build of the kernels on the NHWC row kernels (f32_dwconv_nhwc_rows.h): the NHWC
// depthwise paths (f32_dwconv_nhwc.h), the NCHW channel tiles (f32_dwconv_nchw_tiles.h) and the
// fused block's depthwise rows (f32_dwconv_band.h), in
// one unit so the row kernels are compiled once. Plain C++ for the baseline ISA.
#include <cstdint>

#include "../kernels.h"

namespace mnv3 {
namespace cpu {
namespace portable {
namespace {

#include "../simd/portable.h"
#include "f32_dwconv_nhwc.h"
#include "f32_dwconv_nchw_tiles.h"
#include "f32_dwconv_band.h"

}  // namespace

void dw_nhwc(const DwArgs& a, int64_t begin, int64_t end) { dwconv_nhwc(a, begin, end); }
void dw_nchw_tiles(const DwArgs& a, int64_t begin, int64_t end) {
  dwconv_nchw_tiles(a, begin, end);
}
void dw_band_pack(const DwBandArgs& a, float* dst) { dwconv_band_pack_all(a, dst); }
void dw_band(const DwBandArgs& a) { dwconv_band(a); }
bool dw_band_in_place(const DwConvParams& p) { return dwconv_band_in_place(p); }

}  // namespace portable
}  // namespace cpu
}  // namespace mnv3
