#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entries of mnv3::hardswish, hardsigmoid and their in-place forms: dtype and layout
// handling, threading. Kernel: kernels/f32_hard_act.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "kernels.h"
#include "threading.h"

namespace mnv3 {
namespace cpu {
namespace {

// y[i] = act(x[i]) over n floats in chunks across threads; y may be x (each element is read
// before it is written, by the same thread).
void hard_act_flat(const float* xp, float* yp, int64_t n, bool swish) {
  if (n == 0) return;
  const KernelTable& k = kernels();
  constexpr int64_t kChunk = 1 << 14;
  run_items(ceil_div(n, kChunk), n, kSerialElems, [&](int64_t begin, int64_t end) {
    const int64_t lo = begin * kChunk, hi = std::min(n, end * kChunk);
    k.hard_act(xp + lo, yp + lo, hi - lo, swish);
  });
}

template <bool Swish>
at::Tensor hard_act_cpu(const at::Tensor& x_in) {
  const char* op = Swish ? "mnv3::hardswish (CPU)" : "mnv3::hardsigmoid (CPU)";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  // Dense inputs of any layout are processed as flat storage; the output takes their strides.
  at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (out.strides() != x.strides()) {
    x = x.contiguous();
    out = at::empty_like(x);
  }
  hard_act_flat(x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x.numel(), Swish);
  return out;
}

template <bool Swish>
void hard_act_inplace_cpu(const at::Tensor& x) {
  const char* op = Swish ? "mnv3::hardswish_ (CPU)" : "mnv3::hardsigmoid_ (CPU)";
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x.scalar_type());
  check_writable_in_place(op, x);
  if (x.numel() == 0) return;
  if (x.is_non_overlapping_and_dense()) {
    float* p = x.mutable_data_ptr<float>();
    hard_act_flat(p, p, x.numel(), Swish);
    return;
  }
  // A strided view (a slice, a transpose of a slice): computed packed, then written back.
  x.copy_(hard_act_cpu<Swish>(x));
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("hardswish", &hard_act_cpu<true>);
  m.impl("hardsigmoid", &hard_act_cpu<false>);
  m.impl("hardswish_", &hard_act_inplace_cpu<true>);
  m.impl("hardsigmoid_", &hard_act_inplace_cpu<false>);
}

}  // namespace cpu
}  // namespace mnv3
