// The boundary between the host wrappers (ops_cuda.cpp, compiled by the host compiler with the
// ATen headers) and the kernels (*.cu, compiled by nvcc without them): plain structs of raw
// pointers and sizes, so that nvcc never parses the heavy ATen headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/dwconv_params.h"

namespace mnv3 {
namespace cuda {

enum class DType : int { Float = 0, Half = 1, BFloat16 = 2 };

inline int dtype_size(DType t) { return t == DType::Float ? 4 : 2; }

struct DwConvLaunch {
  const void* x;
  const void* w;  // (C, KH, KW), contiguous
  const void* b;  // (C,) or nullptr
  void* y;
  DType dtype;
  bool channels_last;  // x and y are dense NHWC (else dense NCHW)
  int act;             // Activation as int
  DwConvParams p;
  int64_t xs[4];  // element strides of x in (n, c, h, w) order, for the generic kernel
  int64_t ys[4];
  int sm_count;
};

void launch_dwconv(const DwConvLaunch& a, cudaStream_t stream);

struct SeLaunch {
  const void* x;
  const void* w1;  // (R, C)
  const void* b1;  // (R,)
  const void* w2;  // (C, R)
  const void* b2;  // (C,)
  void* y;
  float* scratch;  // se_plan(...).scratch_floats floats (may be nullptr when 0)
  DType dtype;
  bool channels_last;
  int64_t N, C, HW, R;
  int sm_count;
};

struct SePlan {
  bool single = false;     // one block per sample: pool, MLP and scale in one kernel
  int64_t P = 1;           // pixel chunks per sample (multi-kernel path)
  int64_t PC = 0;          // pixels per chunk
  int64_t CPB = 0;         // channels per block (NCHW multi-kernel path)
  int64_t nCB = 1;         // channel blocks (NCHW multi-kernel path)
  int64_t scratch_floats = 0;
  int single_threads = 0;
  size_t single_smem = 0;
};

SePlan se_plan(const SeLaunch& a);
void launch_se(const SeLaunch& a, const SePlan& plan, cudaStream_t stream);

// y = hardswish(x) (swish=true) or hardsigmoid(x) over n contiguous elements.
void launch_hard_act(const void* x, void* y, int64_t n, DType dtype, bool swish, int sm_count,
                     cudaStream_t stream);

}  // namespace cuda
}  // namespace mnv3
