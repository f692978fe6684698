#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
// CPU entry of mnv3::dwconv_bn_act (depthwise conv + folded BN + activation): argument checks,
// layout, the plan (plan.cpp: kernel path and work items) and threading. Kernels, per path:
// kernels/f32_dwconv_nhwc.h, f32_dwconv_nchw_planes.h, f32_dwconv_nchw_tiles.h.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../common/activation.h"
#include "../common/checks.h"
#include "kernels.h"
#include "plan.h"

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
  at::Tensor out = at::empty({p.N, p.C, p.OH, p.OW}, x_in.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  // Neither NCHW- nor NHWC-dense inputs (slices, permutes) are copied once into the output's
  // layout; the two dense layouts are read in place.
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor w = weight_in.contiguous();
  at::Tensor b;
  if (bias_in.has_value()) b = bias_in->contiguous();

  DwArgs a;
  a.p = p;
  a.act = static_cast<int>(act);
  a.x = x.data_ptr<float>();
  a.y = out.data_ptr<float>();
  a.w = w.data_ptr<float>();
  a.b = b.defined() ? b.data_ptr<float>() : nullptr;
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const bool nested = at::in_parallel_region();
  const KernelTable& k = kernels();
  a.plan = plan_dwconv(p, nhwc, k.lanes, nested ? 1 : at::get_num_threads());
  DwKernel* kernel = nullptr;
  switch (a.plan.path) {
    case DwPath::NhwcRows:
    case DwPath::NhwcWindow:
      kernel = k.dw_nhwc;
      break;
    case DwPath::NchwPlanes:
      kernel = k.dw_nchw_planes;
      break;
    case DwPath::NchwTiles:
      kernel = k.dw_nchw_tiles;
      break;
  }
  auto body = [&](int64_t begin, int64_t end) { kernel(a, begin, end); };
  if (a.plan.parallel && a.plan.items > 1) {
    at::parallel_for(0, a.plan.items, 1, body);
  } else {
    body(0, a.plan.items);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, CPU, m) { m.impl("dwconv_bn_act", &dwconv_bn_act_cpu); }

}  // namespace cpu
}  // namespace mnv3
