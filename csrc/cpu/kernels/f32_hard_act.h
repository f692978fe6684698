// Element-wise hardswish / hardsigmoid.
#pragma once

#include "f32_activation.h"

void hard_activation(const float* x, float* y, int64_t n, bool swish) {
  int64_t i = 0;
  for (; i + VL <= n; i += VL) {
    const vf v = vload(x + i);
    const vf t = hardsigmoid_v(v);
    vstore(y + i, swish ? vmul(v, t) : t);
  }
  if (i < n) {
    const int nl = static_cast<int>(n - i);
    const vf v = vload_n(x + i, nl);
    const vf t = hardsigmoid_v(v);
    vstore_n(y + i, swish ? vmul(v, t) : t, nl);
  }
}
