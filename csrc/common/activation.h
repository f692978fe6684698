// Activation math shared by the CPU and CUDA kernels.
#pragma once

#include <c10/macros/Macros.h>

namespace mnv3 {

// The codes are shared with the kernels' int switches (csrc/cpu/kernels/f32_activation.h,
// csrc/cuda/device_utils.cuh) and the Triton kernels (mnv3_kernels/triton/kernels.py).
enum class Activation : int { None = 0, ReLU = 1, HardSwish = 2, ReLU6 = 3 };

// NaN in, NaN out, as PyTorch's relu/relu6/hardsigmoid/hardswish: every clamp is written as
// "replace only when the comparison holds", and a comparison with NaN never holds.

// h-sigmoid(x) = relu6(x + 3) / 6, written as one FMA and a clamp (no divide).
C10_HOST_DEVICE inline float hardsigmoid_f(float x) {
  float t = x * (1.0f / 6.0f) + 0.5f;
  t = t < 0.0f ? 0.0f : t;
  return t > 1.0f ? 1.0f : t;
}

C10_HOST_DEVICE inline float hardswish_f(float x) { return x * hardsigmoid_f(x); }

// relu6(x) = min(max(x, 0), 6) (MobileNetV2, MNASNet, EfficientNet-Lite).
C10_HOST_DEVICE inline float relu6_f(float x) {
  x = x < 0.0f ? 0.0f : x;
  return x > 6.0f ? 6.0f : x;
}

template <Activation A>
C10_HOST_DEVICE inline float apply_activation(float x) {
  if constexpr (A == Activation::ReLU) {
    return x < 0.0f ? 0.0f : x;
  } else if constexpr (A == Activation::HardSwish) {
    return hardswish_f(x);
  } else if constexpr (A == Activation::ReLU6) {
    return relu6_f(x);
  } else {
    return x;
  }
}

}  // namespace mnv3
