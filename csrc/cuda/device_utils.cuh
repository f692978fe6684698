// Device helpers shared by the kernels: dtype conversion, 16-byte vector loads/stores, the
// runtime activation switch and warp reductions. All arithmetic is fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common/activation.h"

namespace mnv3 {
namespace cuda {

template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V elements at p, as fp32. V * sizeof(T) must be 16 (one 16-byte load; p 16-byte aligned) or
// V must be 1.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&o)[V]) {
  if constexpr (V == 1) {
    o[0] = to_f(p[0]);
  } else {
    static_assert(V * sizeof(T) == 16, "vector access must be 16 bytes");
    alignas(16) T t[V];
    *reinterpret_cast<uint4*>(t) = *reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int v = 0; v < V; ++v) o[v] = to_f(t[v]);
  }
}

template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&i)[V]) {
  if constexpr (V == 1) {
    p[0] = from_f<T>(i[0]);
  } else {
    static_assert(V * sizeof(T) == 16, "vector access must be 16 bytes");
    alignas(16) T t[V];
#pragma unroll
    for (int v = 0; v < V; ++v) t[v] = from_f<T>(i[v]);
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(t);
  }
}

// The activation is a uniform runtime switch: one predictable branch in the epilogue instead of
// four times the kernel instantiations.
__device__ __forceinline__ float activate(float v, int act) {
  if (act == static_cast<int>(Activation::ReLU)) return apply_activation<Activation::ReLU>(v);
  if (act == static_cast<int>(Activation::HardSwish))
    return apply_activation<Activation::HardSwish>(v);
  if (act == static_cast<int>(Activation::ReLU6)) return apply_activation<Activation::ReLU6>(v);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
inline T clamp_val(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace cuda
}  // namespace mnv3
