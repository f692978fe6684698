#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entry of the small dense conv operators (groups = 1; MobileNetV3's stem, 3 -> 16, 3x3,
// stride 2): checks, packing, threading. The kernel gathers each register tile's input patches
// and runs the pointwise GEMM tiles on them (f32_gemm_impl.h). The output is always NHWC: the
// first layer of a model reorders an NCHW input once, instead of every layer after it.
//
//   mnv3::dense_conv_bn_act(x, weight, bias, stride, padding, dilation, activation)
//   mnv3::dense_conv_bn_act_packed(x, packed, out_channels, kernel_size, ...)   (modules cache)
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/activation.h"
#include "../common/checks.h"
#include "packed_ops.h"
#include "pointwise.h"
#include "stream_policy.h"
#include "threading.h"

namespace mnv3 {
namespace cpu {

at::Tensor pack_pointwise_weight(const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

namespace {

// Below this many multiply-adds a call runs on the calling thread (see pointwise_conv_bn_act.cpp).
constexpr int64_t kSerialMacs = int64_t(1) << 18;

void check_pair(const char* op, const char* name, at::IntArrayRef v, int64_t min_value) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have 2 elements, got ", v.size());
  TORCH_CHECK_VALUE(v[0] >= min_value && v[1] >= min_value, op, ": ", name, " must be >= ",
                    min_value, ", got ", v);
}

}  // namespace

at::Tensor dense_conv_bn_act_packed_cpu(const at::Tensor& x_in, const at::Tensor& packed,
                                        int64_t out_channels, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, c10::string_view activation) {
  const char* op = "mnv3::dense_conv_bn_act (CPU)";
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x_in.dim(), "-D");
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, op, ": x must be float32, got ",
                   x_in.scalar_type());
  TORCH_CHECK_VALUE(out_channels >= 1, op, ": out_channels must be >= 1, got ", out_channels);
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  const Activation act = parse_activation(activation);
  DenseConvArgs a;
  a.N = x_in.size(0); a.C = x_in.size(1); a.H = x_in.size(2); a.W = x_in.size(3);
  a.Cout = out_channels;
  a.KH = kernel_size[0]; a.KW = kernel_size[1];
  a.SH = stride[0]; a.SW = stride[1];
  a.PH = padding[0]; a.PW = padding[1];
  a.DH = dilation[0]; a.DW = dilation[1];
  const int64_t span_h = a.DH * (a.KH - 1) + 1, span_w = a.DW * (a.KW - 1) + 1;
  TORCH_CHECK_VALUE(a.H + 2 * a.PH >= span_h && a.W + 2 * a.PW >= span_w, op, ": padded input (",
                    a.H + 2 * a.PH, "x", a.W + 2 * a.PW, ") is smaller than the dilated kernel (",
                    span_h, "x", span_w, ")");
  a.OH = (a.H + 2 * a.PH - span_h) / a.SH + 1;
  a.OW = (a.W + 2 * a.PW - span_w) / a.SW + 1;
  const int64_t K = a.C * a.KH * a.KW, P = pointwise_panels(out_channels);
  TORCH_CHECK_VALUE(packed.dim() == 3 && packed.size(0) == P && packed.size(1) == K + 1 &&
                        packed.size(2) == kPanel,
                    op, ": packed weight must be (", P, ", ", K + 1, ", ", kPanel, ") for ",
                    out_channels, " output channels and ", a.C, "x", a.KH, "x", a.KW,
                    " weights (mnv3::pack_pointwise_weight of weight.reshape(Cout, -1)), got ",
                    packed.sizes());
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kFloat, op, ": packed weight must be float32, got ",
                   packed.scalar_type());
  TORCH_CHECK(packed.device() == x_in.device(), op, ": packed weight is on ", packed.device(),
              " but x is on ", x_in.device());
  at::Tensor out = at::empty({a.N, out_channels, a.OH, a.OW},
                             x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  // The kernel reads dense NCHW or NHWC in place; other layouts are copied once.
  const bool nhwc = output_memory_format(x_in) == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(nhwc ? at::MemoryFormat::ChannelsLast
                                            : at::MemoryFormat::Contiguous);
  const at::Tensor pk = packed.contiguous();
  a.act = static_cast<int>(act);
  a.x_nhwc = nhwc;
  a.x = x.const_data_ptr<float>();
  a.y = out.mutable_data_ptr<float>();
  a.packed = pk.const_data_ptr<float>();
  const PointwiseKernels& k = pointwise_kernels();
  const int64_t rows = a.N * a.OH;
  auto body = [&](int64_t r0, int64_t r1) {
    k.dense(a, r0, r1, gemm_thread_scratch(kMaxTileRows * K));
  };
  const int64_t macs = rows * a.OW * K * out_channels;
  const bool serial = at::in_parallel_region() || macs < kSerialMacs || rows == 1;
  a.stream = stream_output(out.numel() * static_cast<int64_t>(sizeof(float)),
                           serial ? 1 : at::get_num_threads());
  if (serial) {
    body(0, rows);
  } else {
    at::parallel_for(0, rows, 1, body);
  }
  return out;
}

at::Tensor dense_conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight,
                                 const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view activation) {
  const char* op = "mnv3::dense_conv_bn_act (CPU)";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(0) >= 1, op,
                    ": weight must be (Cout, C, kh, kw) with C = ", x.size(1), " (groups = 1), got ",
                    weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == at::kFloat, op, ": weight must be float32, got ",
                   weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, op, ": bias must be float32, got ",
                     bias->scalar_type());
  }
  const int64_t cout = weight.size(0);
  return dense_conv_bn_act_packed_cpu(x, pack_pointwise_weight(weight.reshape({cout, -1}), bias),
                                      cout, {weight.size(2), weight.size(3)}, stride, padding,
                                      dilation, activation);
}

TORCH_LIBRARY_IMPL(mnv3, CPU, m) {
  m.impl("dense_conv_bn_act", &dense_conv_bn_act_cpu);
  m.impl("dense_conv_bn_act_packed", &dense_conv_bn_act_packed_cpu);
}

}  // namespace cpu
}  // namespace mnv3
