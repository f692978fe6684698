// Every operator schema of the package, in one place. Kernels register per dispatch key in
// csrc/cpu and csrc/cuda; autograd in csrc/autograd.cpp; fake (meta) and Autocast kernels in
// mnv3_kernels/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(mnv3, m) {
  // Depthwise conv (weight (C,1,kh,kw), BN already folded into weight/bias), then activation
  // ("none" | "relu" | "hardswish" | "relu6"). Output keeps the input's memory format.
  m.def(
      "dwconv_bn_act(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation) -> Tensor");
  // x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))); fc1_weight (R,C), fc2_weight (C,R).
  m.def(
      "squeeze_excite(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
      "Tensor fc2_bias) -> Tensor");
  // Its gate alone, hardsigmoid(fc2(relu(fc1(mean_hw(x))))) as (N, C) (fp32 for fp32 x): what
  // a fused block folds into the next 1x1 conv as its input_scale, instead of scaling x.
  m.def(
      "squeeze_excite_gate(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
      "Tensor fc2_bias) -> Tensor");
  // Single-pass piecewise activations (the paper's "optimized h-swish").
  m.def("hardswish(Tensor x) -> Tensor");
  m.def("hardsigmoid(Tensor x) -> Tensor");
  // The same, in place (as F.hardswish(x, inplace=True)): no output buffer, so the activation
  // after a 1x1 conv stays in cache. They return nothing (what torch.compile can functionalize);
  // they refuse an x that autograd would have to track.
  m.def("hardswish_(Tensor(a!) x) -> ()");
  m.def("hardsigmoid_(Tensor(a!) x) -> ()");
  // Pointwise (1x1) conv (BN folded into weight/bias) + activation, then + residual:
  //   y = act(W (x * input_scale[n, :]) + bias) + residual
  // weight (Cout, Cin) or (Cout, Cin, 1, 1); input_scale (N, Cin) is a per-sample scale of x's
  // channels (the squeeze-excite gate, folded into the weights); residual has y's shape. Output
  // keeps the input's memory format.
  m.def(
      "pointwise_conv_bn_act(Tensor x, Tensor weight, Tensor? bias, str activation, "
      "Tensor? residual, Tensor? input_scale) -> Tensor");
  // The same on weights packed once by pack_pointwise_weight (what the modules cache).
  m.def("pack_pointwise_weight(Tensor weight, Tensor? bias) -> Tensor");
  // Small dense conv (groups = 1; weight (Cout, C, kh, kw), BN folded) + activation, as a GEMM
  // over gathered input patches. Reads NCHW or NHWC; always writes channels_last (NHWC).
  m.def(
      "dense_conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation) -> Tensor");
  m.def(
      "dense_conv_bn_act_packed(Tensor x, Tensor packed, int out_channels, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, str activation) -> Tensor");
  m.def(
      "pointwise_conv_bn_act_packed(Tensor x, Tensor packed, int out_channels, str activation, "
      "Tensor? residual, Tensor? input_scale) -> Tensor");
  // Global average pool: the (N, C, 1, 1) means of x over H and W (as adaptive_avg_pool2d(x, 1);
  // NaN for an empty H*W, as there). What a model's classifier head pools its features with.
  m.def("global_avg_pool(Tensor x) -> Tensor");
  // A whole inverted-residual block in one call:
  //   h = act_e(expand(x)) (or x) -> d = act_d(depthwise(h)) -> [d *= se_gate(d)]
  //   -> y = project(d) [+ x]
  // 1x1 weights (Cout, Cin) or (Cout, Cin, 1, 1), BN folded into every conv; the squeeze-excite
  // weights as in squeeze_excite (all four or none). Always writes channels_last: the block runs
  // NHWC, the expanded tensor only ever exists a few rows at a time.
  m.def(
      "inverted_residual(Tensor x, Tensor? expand_weight, Tensor? expand_bias, "
      "str expand_activation, Tensor dw_weight, Tensor? dw_bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str dw_activation, Tensor? se_fc1_weight, Tensor? se_fc1_bias, "
      "Tensor? se_fc2_weight, Tensor? se_fc2_bias, Tensor project_weight, Tensor? project_bias, "
      "bool residual) -> Tensor");
  // The same on 1x1 weights packed by pack_pointwise_weight (what FusedInvertedResidual caches).
  m.def(
      "inverted_residual_packed(Tensor x, Tensor? expand_packed, int expand_channels, "
      "str expand_activation, Tensor dw_weight, Tensor? dw_bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str dw_activation, Tensor? se_fc1_weight, Tensor? se_fc1_bias, "
      "Tensor? se_fc2_weight, Tensor? se_fc2_bias, Tensor project_packed, int out_channels, "
      "bool residual) -> Tensor");
}
