// Activation math shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>

namespace mnv3 {

enum class Activation : int { None = 0, ReLU = 1, HardSwish = 2 };

// NaN in, NaN out, as PyTorch's relu/hardsigmoid/hardswish: every clamp is written as
// "replace only when the comparison holds", and a comparison with NaN never holds.

// h-sigmoid(x) = relu6(x + 3) / 6, written as one FMA and a clamp (no divide).
C10_HOST_DEVICE inline float hardsigmoid_f(float x) {
  float t = x * (1.0f / 6.0f) + 0.5f;
  t = t < 0.0f ? 0.0f : t;
  return t > 1.0f ? 1.0f : t;
}

C10_HOST_DEVICE inline float hardswish_f(float x) { return x * hardsigmoid_f(x); }

template <Activation A>
C10_HOST_DEVICE inline float apply_activation(float x) {
  if constexpr (A == Activation::ReLU) {
    return x < 0.0f ? 0.0f : x;
  } else if constexpr (A == Activation::HardSwish) {
    return hardswish_f(x);
  } else {
    return x;
  }
}

}  // namespace mnv3
