// AVX-512F build of the kernels on the NHWC row kernels (f32_dwconv_nhwc_rows.h): the NHWC
// depthwise paths (f32_dwconv_nhwc.h), the NCHW channel tiles (f32_dwconv_nchw_tiles.h) and the
// fused block's depthwise rows (f32_dwconv_band.h), in
// one unit so the row kernels are compiled once. Headers outside the namespaces come before the
// target pragma: only this file's code uses AVX-512F, reached through kernels() once isa.cpp has
// checked the CPU.
#include <cstdint>

#include "../kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
// GCC 12's AVX-512 intrinsics pass an undefined vector as the unused merge source, which
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace mnv3 {
namespace cpu {
namespace avx512 {
namespace {

#include "../simd/avx512.h"
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

}  // namespace avx512
}  // namespace cpu
}  // namespace mnv3

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
