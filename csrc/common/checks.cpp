#include "checks.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

namespace mnv3 {

Activation parse_activation(c10::string_view name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::ReLU;
  if (name == "hardswish") return Activation::HardSwish;
  if (name == "relu6") return Activation::ReLU6;
  TORCH_CHECK_VALUE(false, "activation must be one of 'none', 'relu', 'hardswish', 'relu6', got '",
                    std::string(name), "'");
}

at::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

void check_writable_in_place(const char* op, const at::Tensor& x) {
  TORCH_CHECK(at::has_internal_overlap(x) != at::MemOverlap::Yes, op,
              ": x has elements that share memory (an expanded or stride-0 view), so it cannot "
              "be written in place; pass x.contiguous() or use the out-of-place op");
}

static void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ",
                    min_value, ", got ", v);
}

DwConvParams check_dwconv_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == 1, op,
                    ": weight must be (C, 1, kh, kw) for a depthwise conv, got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) == x.size(1), op, ": weight has ", weight.size(0),
                    " output channels but x has ", x.size(1), " channels");
  TORCH_CHECK_VALUE(weight.size(2) >= 1 && weight.size(3) >= 1, op,
                    ": weight kernel size must be positive, got ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
                   weight.scalar_type(), " does not match x dtype ", x.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == x.size(1), op, ": bias must be (C,) = (",
                      x.size(1), ",), got ", b.sizes());
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias dtype ", b.scalar_type(),
                     " does not match x dtype ", x.scalar_type());
    TORCH_CHECK(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ",
                x.device());
  }
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);

  DwConvParams p;
  p.N = x.size(0); p.C = x.size(1); p.H = x.size(2); p.W = x.size(3);
  p.KH = weight.size(2); p.KW = weight.size(3);
  p.SH = stride[0]; p.SW = stride[1];
  p.PH = padding[0]; p.PW = padding[1];
  p.DH = dilation[0]; p.DW = dilation[1];
  const int64_t eff_h = p.DH * (p.KH - 1) + 1;
  const int64_t eff_w = p.DW * (p.KW - 1) + 1;
  TORCH_CHECK_VALUE(p.H + 2 * p.PH >= eff_h && p.W + 2 * p.PW >= eff_w, op,
                    ": padded input (", p.H + 2 * p.PH, "x", p.W + 2 * p.PW,
                    ") is smaller than the dilated kernel (", eff_h, "x", eff_w, ")");
  p.OH = (p.H + 2 * p.PH - eff_h) / p.SH + 1;
  p.OW = (p.W + 2 * p.PW - eff_w) / p.SW + 1;
  return p;
}

void check_squeeze_excite_args(const char* op, const at::Tensor& x, const at::Tensor& fc1_weight,
                               const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                               const at::Tensor& fc2_bias) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  const int64_t C = x.size(1);
  TORCH_CHECK_VALUE(fc1_weight.dim() == 2 && fc1_weight.size(1) == C, op,
                    ": fc1_weight must be (R, C) with C = ", C, ", got ", fc1_weight.sizes());
  const int64_t R = fc1_weight.size(0);
  TORCH_CHECK_VALUE(fc1_bias.dim() == 1 && fc1_bias.size(0) == R, op,
                    ": fc1_bias must be (R,) = (", R, ",), got ", fc1_bias.sizes());
  TORCH_CHECK_VALUE(fc2_weight.dim() == 2 && fc2_weight.size(0) == C && fc2_weight.size(1) == R,
                    op, ": fc2_weight must be (C, R) = (", C, ", ", R, "), got ",
                    fc2_weight.sizes());
  TORCH_CHECK_VALUE(fc2_bias.dim() == 1 && fc2_bias.size(0) == C, op,
                    ": fc2_bias must be (C,) = (", C, ",), got ", fc2_bias.sizes());
  const at::Tensor* params[] = {&fc1_weight, &fc1_bias, &fc2_weight, &fc2_bias};
  const char* names[] = {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"};
  for (int i = 0; i < 4; ++i) {
    TORCH_CHECK_TYPE(params[i]->scalar_type() == x.scalar_type(), op, ": ", names[i], " dtype ",
                     params[i]->scalar_type(), " does not match x dtype ", x.scalar_type());
    TORCH_CHECK(params[i]->device() == x.device(), op, ": ", names[i], " is on ",
                params[i]->device(), " but x is on ", x.device());
  }
}

}  // namespace mnv3
