// The vector activations: the depthwise epilogue (act_v) and h-sigmoid, shared by the
// element-wise kernels. vmax/vmin return their second operand when either is NaN (as
// maxps/minps do), so every clamp takes the bound first and the value second: NaN in, NaN out,
// as PyTorch's relu/relu6/hardsigmoid/hardswish.
#pragma once

// Activation (common/activation.h)
constexpr int kActNone = 0, kActRelu = 1, kActHardSwish = 2, kActRelu6 = 3;

// clamp(x/6 + 1/2, 0, 1): one FMA and two clamps, no divide.
inline vf hardsigmoid_v(vf v) {
  return vmin(vset1(1.0f), vmax(vzero(), vfma(v, vset1(1.0f / 6.0f), vset1(0.5f))));
}

inline vf act_v(vf v, int act) {
  if (act == kActRelu) return vmax(vzero(), v);
  if (act == kActHardSwish) return vmul(v, hardsigmoid_v(v));
  if (act == kActRelu6) return vmin(vset1(6.0f), vmax(vzero(), v));
  return v;
}
