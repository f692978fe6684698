#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CUDA implementations of the mnv3 operators (dispatch key CUDA): argument checks, output
// allocation and layout choice here; the kernels live in the .cu files behind launch.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>

#include "../common/checks.h"
#include "launch.h"

namespace mnv3 {
namespace cuda {
namespace {

DType gpu_dtype(const char* op, const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::Float;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, op, ": x must be float32, float16 or bfloat16, got ",
                       x.scalar_type());
  }
  return DType::Float;  // unreachable
}

void check_on_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got a tensor on ", x.device());
}

// Multiprocessor count per device, queried once (launch sizing only).
int sm_count(c10::DeviceIndex dev) {
  static std::atomic<int> cache[64] = {};
  if (dev < 0 || dev >= 64) dev = 0;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

at::Tensor dwconv_bn_act_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                              const c10::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation,
                              c10::string_view activation) {
  const char* op = "mnv3::dwconv_bn_act (CUDA)";
  const DwConvParams p = check_dwconv_args(op, x_in, weight_in, bias_in, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  check_on_cuda(op, x_in);
  const DType dtype = gpu_dtype(op, x_in);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = output_memory_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = weight_in.contiguous();
  at::Tensor b;
  if (bias_in.has_value() && bias_in->defined()) b = bias_in->contiguous();
  at::Tensor out = at::empty({p.N, p.C, p.OH, p.OW}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;

  DwConvLaunch a;
  a.x = x.data_ptr();
  a.w = w.data_ptr();
  a.b = b.defined() ? b.data_ptr() : nullptr;
  a.y = out.data_ptr();
  a.dtype = dtype;
  a.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  a.act = static_cast<int>(act);
  a.p = p;
  for (int d = 0; d < 4; ++d) {
    a.xs[d] = x.stride(d);
    a.ys[d] = out.stride(d);
  }
  a.sm_count = sm_count(x.get_device());
  launch_dwconv(a, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  return out;
}

at::Tensor squeeze_excite_cuda(const at::Tensor& x_in, const at::Tensor& fc1_weight,
                               const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                               const at::Tensor& fc2_bias) {
  const char* op = "mnv3::squeeze_excite (CUDA)";
  check_squeeze_excite_args(op, x_in, fc1_weight, fc1_bias, fc2_weight, fc2_bias);
  check_on_cuda(op, x_in);
  const DType dtype = gpu_dtype(op, x_in);

  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto fmt = output_memory_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w1 = fc1_weight.contiguous();
  const at::Tensor b1 = fc1_bias.contiguous();
  const at::Tensor w2 = fc2_weight.contiguous();
  const at::Tensor b2 = fc2_bias.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  if (out.numel() == 0) return out;

  SeLaunch a;
  a.x = x.data_ptr();
  a.w1 = w1.data_ptr();
  a.b1 = b1.data_ptr();
  a.w2 = w2.data_ptr();
  a.b2 = b2.data_ptr();
  a.y = out.data_ptr();
  a.scratch = nullptr;
  a.dtype = dtype;
  a.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  a.N = x.size(0);
  a.C = x.size(1);
  a.HW = x.size(2) * x.size(3);
  a.R = w1.size(0);
  a.sm_count = sm_count(x.get_device());
  const SePlan plan = se_plan(a);
  at::Tensor scratch;
  if (plan.scratch_floats > 0) {
    scratch = at::empty({plan.scratch_floats}, x.options().dtype(at::kFloat));
    a.scratch = scratch.data_ptr<float>();
  }
  launch_se(a, plan, c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  return out;
}

template <bool Swish>
at::Tensor hard_act_cuda(const at::Tensor& x_in) {
  const char* op = Swish ? "mnv3::hardswish (CUDA)" : "mnv3::hardsigmoid (CUDA)";
  check_on_cuda(op, x_in);
  const DType dtype = gpu_dtype(op, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  // Dense inputs keep their strides (the kernel maps storage to storage); others are packed.
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (out.numel() == 0) return out;
  launch_hard_act(x.data_ptr(), out.data_ptr(), x.numel(), dtype, Swish,
                  sm_count(x.get_device()),
                  c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
  return out;
}

template <bool Swish>
void hard_act_inplace_cuda(const at::Tensor& x) {
  const char* op = Swish ? "mnv3::hardswish_ (CUDA)" : "mnv3::hardsigmoid_ (CUDA)";
  check_on_cuda(op, x);
  const DType dtype = gpu_dtype(op, x);
  check_writable_in_place(op, x);
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  if (!x.is_non_overlapping_and_dense()) {
    // A strided view: computed packed, then written back.
    x.copy_(hard_act_cuda<Swish>(x));
    return;
  }
  // The kernel reads each element before the same thread writes it, so y may be x.
  launch_hard_act(x.data_ptr(), x.data_ptr(), x.numel(), dtype, Swish, sm_count(x.get_device()),
                  c10::cuda::getCurrentCUDAStream(x.get_device()).stream());
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CUDA, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act_cuda);
  m.impl("squeeze_excite", &squeeze_excite_cuda);
  m.impl("hardswish", &hard_act_cuda<true>);
  m.impl("hardsigmoid", &hard_act_cuda<false>);
  m.impl("hardswish_", &hard_act_inplace_cuda<true>);
  m.impl("hardsigmoid_", &hard_act_inplace_cuda<false>);
}

}  // namespace cuda
}  // namespace mnv3
