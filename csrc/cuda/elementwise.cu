// Single-pass piecewise hardswish / hardsigmoid over a dense buffer: 16-byte accesses when both
// pointers are 16-byte aligned (the ragged tail done element-wise), else scalar.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "device_utils.cuh"
#include "launch.h"

namespace mnv3 {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <bool Swish>
__device__ __forceinline__ float hard_act(float v) {
  return Swish ? hardswish_f(v) : hardsigmoid_f(v);
}

// Elements [0, nvec * V) in vectors of V, then the tail [nvec * V, n) one per thread. Not
// __restrict__: the in-place ops pass y == x.
template <typename T, bool Swish, int V>
__global__ void __launch_bounds__(kThreads)
    hard_act_kernel(const T* x, T* y, int64_t nvec, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = gid; i < nvec; i += stride) {
    float v[V];
    load_vec<T, V>(x + i * V, v);
#pragma unroll
    for (int k = 0; k < V; ++k) v[k] = hard_act<Swish>(v[k]);
    store_vec<T, V>(y + i * V, v);
  }
  for (int64_t i = nvec * V + gid; i < n; i += stride) {
    y[i] = from_f<T>(hard_act<Swish>(to_f(x[i])));
  }
}

template <typename T, bool Swish>
void launch_typed(const void* xv, void* yv, int64_t n, int sm_count, cudaStream_t stream) {
  const T* x = static_cast<const T*>(xv);
  T* y = static_cast<T*>(yv);
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = aligned16(x) && aligned16(y);
  const int64_t nvec = vec ? n / VEC : 0;
  const int64_t work = vec ? std::max<int64_t>(nvec, n - nvec * VEC) : n;
  const int64_t cap = static_cast<int64_t>(std::max(sm_count, 1)) * 32;
  const unsigned grid =
      static_cast<unsigned>(clamp_val<int64_t>(ceil_div(work, kThreads), 1, cap));
  if (vec) {
    hard_act_kernel<T, Swish, VEC><<<grid, kThreads, 0, stream>>>(x, y, nvec, n);
  } else {
    hard_act_kernel<T, Swish, 1><<<grid, kThreads, 0, stream>>>(x, y, n, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch_act(const void* x, void* y, int64_t n, bool swish, int sm_count,
                  cudaStream_t stream) {
  if (swish) launch_typed<T, true>(x, y, n, sm_count, stream);
  else launch_typed<T, false>(x, y, n, sm_count, stream);
}

}  // namespace

void launch_hard_act(const void* x, void* y, int64_t n, DType dtype, bool swish, int sm_count,
                     cudaStream_t stream) {
  switch (dtype) {
    case DType::Float: dispatch_act<float>(x, y, n, swish, sm_count, stream); break;
    case DType::Half: dispatch_act<__half>(x, y, n, swish, sm_count, stream); break;
    case DType::BFloat16: dispatch_act<__nv_bfloat16>(x, y, n, swish, sm_count, stream); break;
  }
}

}  // namespace cuda
}  // namespace mnv3
