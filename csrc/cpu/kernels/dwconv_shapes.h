// The depthwise shapes with compile-time kernels (fully unrolled taps, input reuse in registers):
// square kernels with equal strides and dilations. Every depthwise path dispatches through this
// one list; other shapes run the run-time-shape kernels.
#pragma once

struct DwShape {
  int k, stride, dilation;
};

constexpr DwShape kDwShapes[] = {
    {3, 1, 1}, {3, 2, 1}, {5, 1, 1}, {5, 2, 1},  // MobileNetV3
    {3, 1, 2}, {5, 1, 2},  // the last stage of the segmentation backbones (dilated=True)
};
constexpr int kNumDwShapes = sizeof(kDwShapes) / sizeof(kDwShapes[0]);

inline bool is_dw_shape(const DwConvParams& p, const DwShape& s) {
  return p.KH == s.k && p.KW == s.k && p.SH == s.stride && p.SW == s.stride &&
         p.DH == s.dilation && p.DW == s.dilation;
}

// Calls f.template operator()<k, stride, dilation>() for the compile-time shape of p and returns
// true; false (f not called) for other shapes, or where the ISA builds no shape kernels.
template <int I = 0, typename F>
inline bool with_dw_shape(const DwConvParams& p, const F& f) {
  if constexpr (!kShapeKernels || I == kNumDwShapes) {
    return false;
  } else {
    constexpr DwShape s = kDwShapes[I];
    if (is_dw_shape(p, s)) {
      f.template operator()<s.k, s.stride, s.dilation>();
      return true;
    }
    return with_dw_shape<I + 1>(p, f);
  }
}
