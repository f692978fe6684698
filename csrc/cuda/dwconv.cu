// Depthwise conv + folded BN + activation on CUDA.
//
// Three kernels, all fp32 accumulation and 64-bit offsets:
//  * dw_nhwc_kernel<T, K, S, V, TW>: channels_last, square k in {3,5}, stride in {1,2}, no
//    dilation. A thread owns V consecutive channels (one 16-byte access when C and the pointers
//    allow, else V = 1) and TW consecutive output pixels of one row; consecutive threadIdx.x are
//    consecutive channel groups, so every load is coalesced. The block's folded weights and bias
//    are staged once in shared memory as fp32 [tap][channel], and the block walks many output
//    tiles (grid-stride), so that staging is amortized.
//  * dw_nchw_kernel<T, K, S, TH>: contiguous NCHW, same shapes. A thread owns one output column
//    and TH output rows; consecutive threads are consecutive columns (coalesced), each loaded
//    input value feeds up to ceil(K/S) outputs, and the K*K weights live in registers.
//  * dw_generic_kernel<T, CL>: anything else (any kh, kw, stride, padding, dilation), one output
//    element per thread, the fastest-varying index matching the memory layout.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "device_utils.cuh"
#include "launch.h"

namespace mnv3 {
namespace cuda {
namespace {

constexpr int kBlock = 256;

template <typename T, int K, int S, int V, int TW>
__global__ void __launch_bounds__(kBlock)
    dw_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                   T* __restrict__ y, const DwConvParams p, const int act) {
  constexpr int KK = K * K;
  constexpr int NCOL = (TW - 1) * S + K;  // input columns one output tile reads per row
  extern __shared__ float4 smem4[];       // float4 for 16-byte alignment
  float* smem = reinterpret_cast<float*>(smem4);

  const int CB = blockDim.x * V;  // channels of this block
  const int64_t c_block = static_cast<int64_t>(blockIdx.x) * CB;
  const int nthreads = blockDim.x * blockDim.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;

  // Stage weights as [tap][CB] and bias as [CB] (fp32). Global reads run along (c, tap), which
  // is the weight tensor's contiguous order.
  for (int i = tid; i < CB * KK; i += nthreads) {
    const int cl = i / KK;
    const int tap = i - cl * KK;
    const int64_t c = c_block + cl;
    smem[tap * CB + cl] = c < p.C ? to_f(w[c * KK + tap]) : 0.0f;
  }
  for (int cl = tid; cl < CB; cl += nthreads) {
    const int64_t c = c_block + cl;
    smem[KK * CB + cl] = (b != nullptr && c < p.C) ? to_f(b[c]) : 0.0f;
  }
  __syncthreads();

  const int64_t c0 = c_block + static_cast<int64_t>(threadIdx.x) * V;
  // With V > 1 the host guarantees C % V == 0, so c0 < C means the whole vector is in range.
  if (c0 >= p.C) return;  // no barrier follows

  const float* ws = smem + threadIdx.x * V;
  float bias[V];
#pragma unroll
  for (int v = 0; v < V; ++v) bias[v] = ws[KK * CB + v];

  const int64_t tiles = (p.OW + TW - 1) / TW;
  const int64_t M = p.N * p.OH * tiles;
  const int64_t rowC = p.W * p.C;
  for (int64_t m = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; m < M;
       m += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    const int64_t tile = m % tiles;
    const int64_t r = m / tiles;
    const int64_t oh = r % p.OH;
    const int64_t n = r / p.OH;
    const int64_t ow0 = tile * TW;
    const int64_t iw0 = ow0 * S - p.PW;

    float acc[TW][V];
#pragma unroll
    for (int t = 0; t < TW; ++t)
#pragma unroll
      for (int v = 0; v < V; ++v) acc[t][v] = bias[v];

    const T* xn = x + n * p.H * rowC + c0;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ih = oh * S - p.PH + kh;
      if (ih < 0 || ih >= p.H) continue;  // zero padding rows
      const T* xr = xn + ih * rowC;
      float col[NCOL][V];
#pragma unroll
      for (int j = 0; j < NCOL; ++j) {
        const int64_t iw = iw0 + j;
        if (iw >= 0 && iw < p.W) {
          load_vec<T, V>(xr + iw * p.C, col[j]);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) col[j][v] = 0.0f;
        }
      }
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        float wv[V];
        const float* wp = ws + (kh * K + kw) * CB;
        if constexpr (V % 4 == 0) {
#pragma unroll
          for (int q = 0; q < V / 4; ++q) {
            const float4 f = reinterpret_cast<const float4*>(wp)[q];
            wv[4 * q + 0] = f.x;
            wv[4 * q + 1] = f.y;
            wv[4 * q + 2] = f.z;
            wv[4 * q + 3] = f.w;
          }
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) wv[v] = wp[v];
        }
#pragma unroll
        for (int t = 0; t < TW; ++t)
#pragma unroll
          for (int v = 0; v < V; ++v) acc[t][v] = fmaf(col[t * S + kw][v], wv[v], acc[t][v]);
      }
    }

    T* yo = y + ((n * p.OH + oh) * p.OW + ow0) * p.C + c0;
#pragma unroll
    for (int t = 0; t < TW; ++t) {
      if (ow0 + t < p.OW) {
        float o[V];
#pragma unroll
        for (int v = 0; v < V; ++v) o[v] = activate(acc[t][v], act);
        store_vec<T, V>(yo + t * p.C, o);
      }
    }
  }
}

template <typename T, int K, int S, int TH>
__global__ void __launch_bounds__(kBlock)
    dw_nchw_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                   T* __restrict__ y, const DwConvParams p, const int act) {
  constexpr int KK = K * K;
  constexpr int NROW = (TH - 1) * S + K;  // input rows one thread reads
  const int64_t row_tiles = (p.OH + TH - 1) / TH;
  const int64_t total = p.N * p.C * row_tiles * p.OW;
  const int64_t HW = p.H * p.W;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = i % p.OW;
    const int64_t r = i / p.OW;
    const int64_t rt = r % row_tiles;
    const int64_t nc = r / row_tiles;  // n * C + c
    const int64_t c = nc % p.C;

    float wr[KK];
#pragma unroll
    for (int t = 0; t < KK; ++t) wr[t] = to_f(w[c * KK + t]);
    const float bias = b != nullptr ? to_f(b[c]) : 0.0f;
    float acc[TH];
#pragma unroll
    for (int t = 0; t < TH; ++t) acc[t] = bias;

    const int64_t oh0 = rt * TH;
    const int64_t ih0 = oh0 * S - p.PH;
    const int64_t iw0 = ow * S - p.PW;
    const T* xp = x + nc * HW;
#pragma unroll
    for (int rr = 0; rr < NROW; ++rr) {
      const int64_t ih = ih0 + rr;
      if (ih < 0 || ih >= p.H) continue;
      const T* xr = xp + ih * p.W;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const int64_t iw = iw0 + kw;
        const float v = (iw >= 0 && iw < p.W) ? to_f(xr[iw]) : 0.0f;
#pragma unroll
        for (int t = 0; t < TH; ++t) {
          const int kh = rr - t * S;  // compile-time after unrolling
          if (kh >= 0 && kh < K) acc[t] = fmaf(v, wr[kh * K + kw], acc[t]);
        }
      }
    }
    T* yo = y + nc * p.OH * p.OW + ow;
#pragma unroll
    for (int t = 0; t < TH; ++t) {
      const int64_t oh = oh0 + t;
      if (oh < p.OH) yo[oh * p.OW] = from_f<T>(activate(acc[t], act));
    }
  }
}

struct Strides4 {
  int64_t n, c, h, w;
};

template <typename T, bool CL>
__global__ void __launch_bounds__(kBlock)
    dw_generic_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                      T* __restrict__ y, const DwConvParams p, const Strides4 xs,
                      const Strides4 ys, const int act) {
  const int64_t total = p.N * p.C * p.OH * p.OW;
  const int64_t KK = p.KH * p.KW;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, oh, ow, r;
    if constexpr (CL) {  // channel fastest, matching NHWC
      c = i % p.C;
      r = i / p.C;
      ow = r % p.OW;
      r /= p.OW;
      oh = r % p.OH;
      n = r / p.OH;
    } else {
      ow = i % p.OW;
      r = i / p.OW;
      oh = r % p.OH;
      r /= p.OH;
      c = r % p.C;
      n = r / p.C;
    }
    float acc = b != nullptr ? to_f(b[c]) : 0.0f;
    const T* xc = x + n * xs.n + c * xs.c;
    const T* wc = w + c * KK;
    for (int64_t kh = 0; kh < p.KH; ++kh) {
      const int64_t ih = oh * p.SH - p.PH + kh * p.DH;
      if (ih < 0 || ih >= p.H) continue;
      for (int64_t kw = 0; kw < p.KW; ++kw) {
        const int64_t iw = ow * p.SW - p.PW + kw * p.DW;
        if (iw < 0 || iw >= p.W) continue;
        acc = fmaf(to_f(xc[ih * xs.h + iw * xs.w]), to_f(wc[kh * p.KW + kw]), acc);
      }
    }
    y[n * ys.n + c * ys.c + oh * ys.h + ow * ys.w] = from_f<T>(activate(acc, act));
  }
}

// Enough blocks to fill every SM several times; the kernels are grid-stride loops.
inline unsigned grid_1d(int64_t work, int threads, int sm_count) {
  const int64_t want = ceil_div(work, threads);
  const int64_t cap = static_cast<int64_t>(std::max(sm_count, 1)) * 32;
  return static_cast<unsigned>(clamp_val<int64_t>(std::min(want, cap), 1, 0x7fffffff));
}

template <typename T, int K, int S, int V>
void launch_nhwc(const DwConvLaunch& a, cudaStream_t stream) {
  constexpr int TW = V >= 8 ? 2 : 4;  // 16-bit types carry 8 channels: fewer pixels, same regs
  const DwConvParams& p = a.p;
  const int64_t CG = p.C / V;  // channel groups (C % V == 0 when V > 1)
  const int bx = static_cast<int>(std::min<int64_t>(CG, 32));
  const int by = std::max(1, kBlock / bx);
  const int64_t grid_x = ceil_div(CG, bx);
  TORCH_CHECK(grid_x <= 0x7fffffff, "mnv3::dwconv_bn_act (CUDA): too many channels (", p.C, ")");
  const int64_t tiles = ceil_div(p.OW, TW);
  const int64_t rows = p.N * p.OH * tiles;
  const int64_t want_y = ceil_div(rows, by);
  const int64_t target_y = std::max<int64_t>(1, ceil_div(int64_t(std::max(a.sm_count, 1)) * 16, grid_x));
  const unsigned grid_y =
      static_cast<unsigned>(clamp_val<int64_t>(std::min(want_y, target_y), 1, 65535));
  const size_t smem = static_cast<size_t>(K * K + 1) * bx * V * sizeof(float);
  dw_nhwc_kernel<T, K, S, V, TW>
      <<<dim3(static_cast<unsigned>(grid_x), grid_y), dim3(bx, by), smem, stream>>>(
          static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.b),
          static_cast<T*>(a.y), p, a.act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int K, int S>
void launch_nchw(const DwConvLaunch& a, cudaStream_t stream) {
  constexpr int TH = 4;
  const DwConvParams& p = a.p;
  const int64_t total = p.N * p.C * ceil_div(p.OH, TH) * p.OW;
  dw_nchw_kernel<T, K, S, TH><<<grid_1d(total, kBlock, a.sm_count), kBlock, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.b),
      static_cast<T*>(a.y), p, a.act);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_generic(const DwConvLaunch& a, cudaStream_t stream) {
  const DwConvParams& p = a.p;
  const int64_t total = p.N * p.C * p.OH * p.OW;
  const Strides4 xs{a.xs[0], a.xs[1], a.xs[2], a.xs[3]};
  const Strides4 ys{a.ys[0], a.ys[1], a.ys[2], a.ys[3]};
  const unsigned grid = grid_1d(total, kBlock, a.sm_count);
  if (a.channels_last) {
    dw_generic_kernel<T, true><<<grid, kBlock, 0, stream>>>(
        static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.b),
        static_cast<T*>(a.y), p, xs, ys, a.act);
  } else {
    dw_generic_kernel<T, false><<<grid, kBlock, 0, stream>>>(
        static_cast<const T*>(a.x), static_cast<const T*>(a.w), static_cast<const T*>(a.b),
        static_cast<T*>(a.y), p, xs, ys, a.act);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int K, int S>
void launch_fast(const DwConvLaunch& a, cudaStream_t stream) {
  if (!a.channels_last) {
    launch_nchw<T, K, S>(a, stream);
    return;
  }
  constexpr int VEC = 16 / sizeof(T);
  const bool vec = a.p.C % VEC == 0 && aligned16(a.x) && aligned16(a.y);
  if (vec) {
    launch_nhwc<T, K, S, VEC>(a, stream);
  } else {
    launch_nhwc<T, K, S, 1>(a, stream);
  }
}

template <typename T>
void launch_typed(const DwConvLaunch& a, cudaStream_t stream) {
  const DwConvParams& p = a.p;
  const bool fast = p.KH == p.KW && p.SH == p.SW && p.DH == 1 && p.DW == 1 &&
                    (p.KH == 3 || p.KH == 5) && (p.SH == 1 || p.SH == 2);
  if (!fast) {
    launch_generic<T>(a, stream);
    return;
  }
  if (p.KH == 3) {
    if (p.SH == 1) launch_fast<T, 3, 1>(a, stream);
    else launch_fast<T, 3, 2>(a, stream);
  } else {
    if (p.SH == 1) launch_fast<T, 5, 1>(a, stream);
    else launch_fast<T, 5, 2>(a, stream);
  }
}

}  // namespace

void launch_dwconv(const DwConvLaunch& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::Float: launch_typed<float>(a, stream); break;
    case DType::Half: launch_typed<__half>(a, stream); break;
    case DType::BFloat16: launch_typed<__nv_bfloat16>(a, stream); break;
  }
}

}  // namespace cuda
}  // namespace mnv3
