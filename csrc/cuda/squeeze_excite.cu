// Squeeze-excite on CUDA: y = x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))).
//
// Two paths, both deterministic (fixed summation order, no atomics) and fp32 throughout:
//  * single kernel, one block per sample: channel sums -> MLP in shared memory -> scale. One
//    launch, and the second read of the sample mostly hits L2. Used for small samples (the 7x7
//    and 14x14 stages) and whenever the batch alone fills the GPU.
//  * three kernels for large samples at small batch: per-(sample, chunk) partial channel sums
//    into a scratch buffer, a per-sample MLP kernel, then a scale kernel over the same chunks.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "device_utils.cuh"
#include "launch.h"

namespace mnv3 {
namespace cuda {
namespace {

constexpr int kSingleThreads = 512;
constexpr int kThreads = 256;
// Largest sample (C * H * W elements) the single-kernel path takes at small batch. One SM reads
// it twice; above this the three-kernel path spreads a sample over many SMs. Untuned guess.
constexpr int64_t kSingleMaxElems = 96 * 1024;
constexpr size_t kMaxStaticSmem = 48 * 1024;

// NHWC channel sums over pixels [p_begin, p_end) of one sample -> dst[0..C). Thread t owns
// channel c0 + t % lanesC and pixel lane t / lanesC, so a warp reads consecutive addresses.
// scratch holds blockDim.x floats (shared). Every thread of the block must call this.
template <typename T>
__device__ void channel_sums_nhwc(const T* __restrict__ xs, int64_t p_begin, int64_t p_end,
                                  int64_t C, float* dst, float* scratch) {
  const int B = blockDim.x;
  const int t = threadIdx.x;
  const int lanesC = static_cast<int>(C < B ? C : B);
  const int G = B / lanesC;  // pixel lanes
  const int cl = t % lanesC;
  const int g = t / lanesC;
  for (int64_t c0 = 0; c0 < C; c0 += lanesC) {
    const int64_t c = c0 + cl;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    if (g < G && c < C) {
      int64_t p = p_begin + g;
      // Four independent accumulators keep several loads in flight.
      for (; p + 3 * G < p_end; p += 4 * G) {
        s0 += to_f(xs[p * C + c]);
        s1 += to_f(xs[(p + G) * C + c]);
        s2 += to_f(xs[(p + 2 * G) * C + c]);
        s3 += to_f(xs[(p + 3 * G) * C + c]);
      }
      for (; p < p_end; p += G) s0 += to_f(xs[p * C + c]);
    }
    scratch[t] = (s0 + s1) + (s2 + s3);
    __syncthreads();
    if (t < lanesC && c0 + t < C) {
      float tot = 0.f;
      for (int gg = 0; gg < G; ++gg) tot += scratch[gg * lanesC + t];
      dst[c0 + t] = tot;
    }
    __syncthreads();
  }
}

// NCHW channel sums for channels [c_begin, c_end) over pixels [p_begin, p_end): one warp per
// channel, lanes along the contiguous pixels. dst is indexed by absolute channel.
template <typename T>
__device__ void channel_sums_nchw(const T* __restrict__ xs, int64_t HW, int64_t c_begin,
                                  int64_t c_end, int64_t p_begin, int64_t p_end, float* dst) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  for (int64_t c = c_begin + warp; c < c_end; c += nw) {
    const T* xc = xs + c * HW;
    float s0 = 0.f, s1 = 0.f;
    int64_t p = p_begin + lane;
    for (; p + 32 < p_end; p += 64) {
      s0 += to_f(xc[p]);
      s1 += to_f(xc[p + 32]);
    }
    for (; p < p_end; p += 32) s0 += to_f(xc[p]);
    const float s = warp_sum(s0 + s1);
    if (lane == 0) dst[c] = s;
  }
}

// hidden = relu(fc1(sums * inv_hw)), gate = hardsigmoid(fc2(hidden)); one warp per output row
// (coalesced along the weight row). gate may alias sums. Every thread must call this.
// sums/hidden/gate are written in this kernel, so they are plain (coherent) pointers.
template <typename T>
__device__ void se_mlp(const float* sums, float inv_hw, float* hidden, float* gate,
                       const T* __restrict__ w1, const T* __restrict__ b1,
                       const T* __restrict__ w2, const T* __restrict__ b2, int64_t C,
                       int64_t R) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  for (int64_t r = warp; r < R; r += nw) {
    const T* wr = w1 + r * C;
    float s = 0.f;
    for (int64_t c = lane; c < C; c += 32) s = fmaf(to_f(wr[c]), sums[c], s);
    s = warp_sum(s);
    if (lane == 0) {
      hidden[r] = apply_activation<Activation::ReLU>(fmaf(s, inv_hw, to_f(b1[r])));  // keeps NaN
    }
  }
  __syncthreads();
  for (int64_t c = warp; c < C; c += nw) {
    const T* wr = w2 + c * R;
    float s = 0.f;
    for (int64_t r = lane; r < R; r += 32) s = fmaf(to_f(wr[r]), hidden[r], s);
    s = warp_sum(s);
    if (lane == 0) gate[c] = hardsigmoid_f(s + to_f(b2[c]));
  }
  __syncthreads();
}

template <typename T>
__device__ void scale_nhwc(const T* __restrict__ xs, T* __restrict__ ys, int64_t p_begin,
                           int64_t p_end, int64_t C, const float* gate) {
  const int B = blockDim.x;
  const int t = threadIdx.x;
  const int lanesC = static_cast<int>(C < B ? C : B);
  const int G = B / lanesC;
  const int cl = t % lanesC;
  const int g = t / lanesC;
  if (g >= G) return;
  for (int64_t c = cl; c < C; c += lanesC) {
    const float gc = gate[c];
    for (int64_t p = p_begin + g; p < p_end; p += G) {
      ys[p * C + c] = from_f<T>(to_f(xs[p * C + c]) * gc);
    }
  }
}

template <typename T>
__device__ void scale_nchw(const T* __restrict__ xs, T* __restrict__ ys, int64_t HW,
                           int64_t c_begin, int64_t c_end, int64_t p_begin, int64_t p_end,
                           const float* gate) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nw = blockDim.x >> 5;
  for (int64_t c = c_begin + warp; c < c_end; c += nw) {
    const float gc = gate[c];
    const T* xc = xs + c * HW;
    T* yc = ys + c * HW;
    for (int64_t p = p_begin + lane; p < p_end; p += 32) yc[p] = from_f<T>(to_f(xc[p]) * gc);
  }
}

template <typename T, bool CL>
__global__ void __launch_bounds__(kSingleThreads)
    se_single_kernel(const T* __restrict__ x, const T* __restrict__ w1, const T* __restrict__ b1,
                     const T* __restrict__ w2, const T* __restrict__ b2, T* __restrict__ y,
                     int64_t C, int64_t HW, int64_t R) {
  extern __shared__ float4 smem4[];
  float* scratch = reinterpret_cast<float*>(smem4);  // blockDim.x
  float* sums = scratch + blockDim.x;                 // C, later the gate
  float* hidden = sums + C;                           // R
  const int64_t n = blockIdx.x;
  const T* xs = x + n * C * HW;
  T* ys = y + n * C * HW;
  if constexpr (CL) {
    channel_sums_nhwc(xs, 0, HW, C, sums, scratch);
  } else {
    channel_sums_nchw(xs, HW, 0, C, 0, HW, sums);
    __syncthreads();
  }
  se_mlp(sums, 1.0f / static_cast<float>(HW), hidden, sums, w1, b1, w2, b2, C, R);
  if constexpr (CL) {
    scale_nhwc(xs, ys, 0, HW, C, sums);
  } else {
    scale_nchw(xs, ys, HW, 0, C, 0, HW, sums);
  }
}

// Multi-kernel path. Block b covers sample n = b / (nCB * P), channel block cb, pixel chunk k;
// partial sums land in partial[(n * P + k) * C + c].
struct Chunks {
  int64_t C, HW, P, PC, CPB, nCB;
};

template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads)
    se_pool_kernel(const T* __restrict__ x, float* __restrict__ partial, const Chunks ch) {
  extern __shared__ float4 smem4[];
  float* scratch = reinterpret_cast<float*>(smem4);
  const int64_t bid = blockIdx.x;
  const int64_t k = bid % ch.P;
  const int64_t rest = bid / ch.P;
  const int64_t cb = rest % ch.nCB;
  const int64_t n = rest / ch.nCB;
  const int64_t p_begin = k * ch.PC;
  const int64_t p_end = p_begin + ch.PC < ch.HW ? p_begin + ch.PC : ch.HW;
  const T* xs = x + n * ch.C * ch.HW;
  float* dst = partial + (n * ch.P + k) * ch.C;
  if constexpr (CL) {
    channel_sums_nhwc(xs, p_begin, p_end, ch.C, dst, scratch);
  } else {
    const int64_t c_begin = cb * ch.CPB;
    const int64_t c_end = c_begin + ch.CPB < ch.C ? c_begin + ch.CPB : ch.C;
    channel_sums_nchw(xs, ch.HW, c_begin, c_end, p_begin, p_end, dst);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    se_mlp_kernel(const float* __restrict__ partial, float* gate, float* hidden,
                  const T* __restrict__ w1, const T* __restrict__ b1, const T* __restrict__ w2,
                  const T* __restrict__ b2, int64_t C, int64_t HW, int64_t R, int64_t P) {
  const int64_t n = blockIdx.x;
  float* g = gate + n * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < P; ++k) s += partial[(n * P + k) * C + c];
    g[c] = s;
  }
  __syncthreads();
  se_mlp(g, 1.0f / static_cast<float>(HW), hidden + n * R, g, w1, b1, w2, b2, C, R);
}

template <typename T, bool CL>
__global__ void __launch_bounds__(kThreads)
    se_scale_kernel(const T* __restrict__ x, const float* __restrict__ gate, T* __restrict__ y,
                    const Chunks ch) {
  const int64_t bid = blockIdx.x;
  const int64_t k = bid % ch.P;
  const int64_t rest = bid / ch.P;
  const int64_t cb = rest % ch.nCB;
  const int64_t n = rest / ch.nCB;
  const int64_t p_begin = k * ch.PC;
  const int64_t p_end = p_begin + ch.PC < ch.HW ? p_begin + ch.PC : ch.HW;
  const T* xs = x + n * ch.C * ch.HW;
  T* ys = y + n * ch.C * ch.HW;
  const float* g = gate + n * ch.C;
  if constexpr (CL) {
    scale_nhwc(xs, ys, p_begin, p_end, ch.C, g);
  } else {
    const int64_t c_begin = cb * ch.CPB;
    const int64_t c_end = c_begin + ch.CPB < ch.C ? c_begin + ch.CPB : ch.C;
    scale_nchw(xs, ys, ch.HW, c_begin, c_end, p_begin, p_end, g);
  }
}

template <typename T, bool CL>
void launch_se_typed(const SeLaunch& a, const SePlan& plan, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.x);
  const T* w1 = static_cast<const T*>(a.w1);
  const T* b1 = static_cast<const T*>(a.b1);
  const T* w2 = static_cast<const T*>(a.w2);
  const T* b2 = static_cast<const T*>(a.b2);
  T* y = static_cast<T*>(a.y);
  if (plan.single) {
    se_single_kernel<T, CL><<<static_cast<unsigned>(a.N), plan.single_threads, plan.single_smem,
                              stream>>>(x, w1, b1, w2, b2, y, a.C, a.HW, a.R);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const Chunks ch{a.C, a.HW, plan.P, plan.PC, plan.CPB, plan.nCB};
  float* partial = a.scratch;
  float* gate = partial + a.N * plan.P * a.C;
  float* hidden = gate + a.N * a.C;
  const unsigned blocks = static_cast<unsigned>(a.N * plan.nCB * plan.P);
  const size_t pool_smem = CL ? kThreads * sizeof(float) : 0;
  se_pool_kernel<T, CL><<<blocks, kThreads, pool_smem, stream>>>(x, partial, ch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  se_mlp_kernel<T><<<static_cast<unsigned>(a.N), kThreads, 0, stream>>>(
      partial, gate, hidden, w1, b1, w2, b2, a.C, a.HW, a.R, plan.P);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  se_scale_kernel<T, CL><<<blocks, kThreads, 0, stream>>>(x, gate, y, ch);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch_layout(const SeLaunch& a, const SePlan& plan, cudaStream_t stream) {
  if (a.channels_last) launch_se_typed<T, true>(a, plan, stream);
  else launch_se_typed<T, false>(a, plan, stream);
}

}  // namespace

SePlan se_plan(const SeLaunch& a) {
  SePlan plan;
  const int64_t sms = std::max(a.sm_count, 1);
  const int64_t elems = a.C * a.HW;
  const size_t single_smem = static_cast<size_t>(kSingleThreads + a.C + a.R) * sizeof(float);
  plan.single = single_smem <= kMaxStaticSmem && a.N <= 0x7fffffff &&
                (elems <= kSingleMaxElems || a.N >= sms);
  if (plan.single) {
    plan.single_threads = kSingleThreads;
    plan.single_smem = single_smem;
    return plan;
  }
  if (a.channels_last) {
    // Pixel chunks of at least ~2048 elements, enough chunks for ~4 blocks per SM.
    const int64_t min_pc = std::max<int64_t>(1, ceil_div(2048, a.C));
    plan.P = clamp_val<int64_t>(ceil_div(4 * sms, a.N), 1, ceil_div(a.HW, min_pc));
    plan.CPB = a.C;
    plan.nCB = 1;
  } else {
    // Blocks of CPB channels (one warp each at a time) and pixel chunks of >= 256 pixels.
    plan.CPB = 8 * clamp_val<int64_t>(ceil_div(2048, 8 * a.HW), 1, 16);
    plan.nCB = ceil_div(a.C, plan.CPB);
    plan.P = clamp_val<int64_t>(ceil_div(4 * sms, a.N * plan.nCB), 1, ceil_div(a.HW, 256));
  }
  plan.PC = ceil_div(a.HW, plan.P);
  plan.P = ceil_div(a.HW, plan.PC);  // no empty chunk
  plan.scratch_floats = a.N * plan.P * a.C + a.N * a.C + a.N * a.R;
  return plan;
}

void launch_se(const SeLaunch& a, const SePlan& plan, cudaStream_t stream) {
  if (!plan.single) {
    TORCH_CHECK(a.N * plan.nCB * plan.P <= 0x7fffffff && a.N <= 0x7fffffff,
                "mnv3::squeeze_excite (CUDA): batch too large (", a.N, ")");
  }
  switch (a.dtype) {
    case DType::Float: dispatch_layout<float>(a, plan, stream); break;
    case DType::Half: dispatch_layout<__half>(a, plan, stream); break;
    case DType::BFloat16: dispatch_layout<__nv_bfloat16>(a, plan, stream); break;
  }
}

}  // namespace cuda
}  // namespace mnv3
