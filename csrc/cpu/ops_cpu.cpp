#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU implementations of the mnv3 operators (dispatch key CPU).
// Placeholder scalar kernels: correct on every layout; the vectorized kernels replace them.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/hardsigmoid.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/relu.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/activation.h"
#include "../common/checks.h"

namespace mnv3 {
namespace cpu {
namespace {

at::Tensor dwconv_bn_act_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                             const c10::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation,
                             c10::string_view activation) {
  const char* op = "mnv3::dwconv_bn_act (CPU)";
  const DwConvParams p = check_dwconv_args(op, x_in, weight_in, bias_in, stride, padding, dilation);
  const Activation act = parse_activation(activation);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const auto fmt = output_memory_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = weight_in.contiguous();
  at::Tensor out = at::empty({p.N, p.C, p.OH, p.OW}, x.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  at::Tensor b = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* op_ = out.data_ptr<float>();
  const auto xs = x.strides();
  const auto os = out.strides();
  at::parallel_for(0, p.N * p.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / p.C, c = nc % p.C;
      for (int64_t oh = 0; oh < p.OH; ++oh) {
        for (int64_t ow = 0; ow < p.OW; ++ow) {
          float acc = bp ? bp[c] : 0.0f;
          for (int64_t kh = 0; kh < p.KH; ++kh) {
            const int64_t ih = oh * p.SH - p.PH + kh * p.DH;
            if (ih < 0 || ih >= p.H) continue;
            for (int64_t kw = 0; kw < p.KW; ++kw) {
              const int64_t iw = ow * p.SW - p.PW + kw * p.DW;
              if (iw < 0 || iw >= p.W) continue;
              acc += xp[n * xs[0] + c * xs[1] + ih * xs[2] + iw * xs[3]] *
                     wp[(c * p.KH + kh) * p.KW + kw];
            }
          }
          float v = act == Activation::ReLU        ? apply_activation<Activation::ReLU>(acc)
                    : act == Activation::HardSwish ? apply_activation<Activation::HardSwish>(acc)
                                                   : acc;
          op_[n * os[0] + c * os[1] + oh * os[2] + ow * os[3]] = v;
        }
      }
    }
  });
  return out;
}

at::Tensor squeeze_excite_cpu(const at::Tensor& x_in, const at::Tensor& fc1_weight,
                              const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                              const at::Tensor& fc2_bias) {
  const char* op = "mnv3::squeeze_excite (CPU)";
  check_squeeze_excite_args(op, x_in, fc1_weight, fc1_bias, fc2_weight, fc2_bias);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const auto fmt = output_memory_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor pooled = x.mean({2, 3});
  const at::Tensor gate =
      at::hardsigmoid(at::linear(at::relu(at::linear(pooled, fc1_weight, fc1_bias)), fc2_weight, fc2_bias));
  return x.mul(gate.unsqueeze(-1).unsqueeze(-1)).contiguous(fmt);
}

template <bool Swish>
at::Tensor hard_act_cpu(const at::Tensor& x_in) {
  const char* op = Swish ? "mnv3::hardswish (CPU)" : "mnv3::hardsigmoid (CPU)";
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 32768, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = Swish ? hardswish_f(xp[i]) : hardsigmoid_f(xp[i]);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act_cpu);
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("hardswish", &hard_act_cpu<true>);
  m.impl("hardsigmoid", &hard_act_cpu<false>);
}

}  // namespace cpu
}  // namespace mnv3
