// Autograd of the mnv3 operators (dispatch key Autograd, every device): the forward redispatches
// to the device kernel, the backward is written with ATen ops. In C++ rather than through
// torch.library.register_autograd so that a call does not go through Python: that costs ~8 us,
// as much as a small depthwise layer.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace mnv3 {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using DwSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view);
using SeSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&);
using ActSig = at::Tensor(const at::Tensor&);
using PwSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::string_view, const std::optional<at::Tensor>&,
                         const std::optional<at::Tensor>&);
using DenseSig = DwSig;
using DensePackedSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, at::IntArrayRef,
                                  at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                  c10::string_view);
using PwPackedSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view,
                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);
using InplaceActSig = void(const at::Tensor&);
using OptT = std::optional<at::Tensor>;
using BlockSig = at::Tensor(const at::Tensor&, const OptT&, const OptT&, c10::string_view,
                            const at::Tensor&, const OptT&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, c10::string_view, const OptT&, const OptT&,
                            const OptT&, const OptT&, const at::Tensor&, const OptT&, bool);
using BlockPackedSig = at::Tensor(const at::Tensor&, const OptT&, int64_t, c10::string_view,
                                  const at::Tensor&, const OptT&, at::IntArrayRef,
                                  at::IntArrayRef, at::IntArrayRef, c10::string_view,
                                  const OptT&, const OptT&, const OptT&, const OptT&,
                                  const at::Tensor&, int64_t, bool);

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// relu and relu6 can take their gradient from the output (out <= 0 exactly where pre <= 0, and
// out >= 6 exactly where pre >= 6), so their forward keeps the output instead of recomputing.
bool backward_from_output(const std::string& act) { return act == "relu" || act == "relu6"; }

// grad through the activation: `t` is the output when backward_from_output(act), else the
// pre-activation. The same formulas as PyTorch's relu, hardtanh(0, 6) and hardswish.
at::Tensor activation_backward(const at::Tensor& grad, const std::string& act, const at::Tensor& t) {
  if (act == "relu") return at::threshold_backward(grad, t, 0);
  if (act == "relu6") return at::hardtanh_backward(grad, t, 0, 6);
  if (act == "hardswish") return at::hardswish_backward(grad, t);
  return grad;
}

struct DwConvFunction : public torch::autograd::Function<DwConvFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            c10::string_view activation) {
    static const auto op = op_handle<DwSig>("mnv3::dwconv_bn_act");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, weight, bias, stride, padding, dilation, activation);
    }
    const std::string act(activation);
    ctx->save_for_backward({x, weight, bias.has_value() ? *bias : at::Tensor(),
                            backward_from_output(act) ? out : at::Tensor()});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["activation"] = act;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &out = saved[3];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const std::string act = ctx->saved_data["activation"].toStringRef();
    const int64_t C = x.size(1);
    at::Tensor grad = grads[0];
    if (backward_from_output(act)) {
      grad = activation_backward(grad, act, out);
    } else if (act != "none") {
      // The pre-activation is not kept (it would double the memory of the layer): recompute it.
      const at::Tensor pre = at::conv2d(x, weight, bias, stride, padding, dilation, C);
      grad = activation_backward(grad, act, pre);
    }
    const bool has_bias = bias.defined();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::OptionalIntArrayRef bias_sizes;
    std::vector<int64_t> bias_shape = {C};
    if (has_bias) bias_sizes = bias_shape;
    auto [gx, gw, gb] = at::convolution_backward(grad, x, weight, bias_sizes, stride, padding,
                                                 dilation, false, {0, 0}, C, mask);
    return {gx, gw, has_bias ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

struct SqueezeExciteFunction : public torch::autograd::Function<SqueezeExciteFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1,
                            const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
    static const auto op = op_handle<SeSig>("mnv3::squeeze_excite");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, w1, b1, w2, b2);
    }
    ctx->save_for_backward({x, w1, b1, w2, b2});
    return out;
  }

  // The gate is recomputed from x in fp32 (a few KB), not saved by the forward kernel.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor x = s[0].to(at::kFloat), w1 = s[1].to(at::kFloat), b1 = s[2].to(at::kFloat);
    const at::Tensor w2 = s[3].to(at::kFloat), b2 = s[4].to(at::kFloat);
    const at::Tensor pooled = x.mean({2, 3});
    const at::Tensor hidden = at::relu(at::addmm(b1, pooled, w1.t()));
    const at::Tensor gate_pre = at::addmm(b2, hidden, w2.t());
    const at::Tensor gate = at::hardsigmoid(gate_pre);
    const at::Tensor g = grads[0].to(at::kFloat);
    const at::Tensor grad_gate_pre =
        at::hardsigmoid_backward((g * x).sum({2, 3}), gate_pre);
    const at::Tensor grad_hidden_pre =
        at::threshold_backward(at::mm(grad_gate_pre, w2), hidden, 0);
    const at::Tensor grad_pooled = at::mm(grad_hidden_pre, w1);
    const double inv_hw = 1.0 / static_cast<double>(x.size(2) * x.size(3));
    const at::Tensor grad_x = g * gate.unsqueeze(-1).unsqueeze(-1) +
                              (grad_pooled * inv_hw).unsqueeze(-1).unsqueeze(-1);
    return {grad_x.to(s[0].scalar_type()),
            at::mm(grad_hidden_pre.t(), pooled).to(s[1].scalar_type()),
            grad_hidden_pre.sum(0).to(s[2].scalar_type()),
            at::mm(grad_gate_pre.t(), hidden).to(s[3].scalar_type()),
            grad_gate_pre.sum(0).to(s[4].scalar_type())};
  }
};

// Dense conv (groups = 1): the depthwise formulas with one group.
struct DenseConvFunction : public torch::autograd::Function<DenseConvFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            c10::string_view activation) {
    static const auto op = op_handle<DenseSig>("mnv3::dense_conv_bn_act");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, weight, bias, stride, padding, dilation, activation);
    }
    ctx->save_for_backward({x, weight, opt(bias)});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["activation"] = std::string(activation);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const std::string act = ctx->saved_data["activation"].toStringRef();
    at::Tensor g = grads[0];
    if (act != "none") {
      const at::Tensor pre = at::conv2d(x, weight, bias, stride, padding, dilation, 1);
      g = activation_backward(g, act, pre);
    }
    const bool has_bias = bias.defined();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::OptionalIntArrayRef bias_sizes;
    std::vector<int64_t> bias_shape = {weight.size(0)};
    if (has_bias) bias_sizes = bias_shape;
    auto [gx, gw, gb] = at::convolution_backward(g, x, weight, bias_sizes, stride, padding,
                                                 dilation, false, {0, 0}, 1, mask);
    return {gx, gw, has_bias ? gb : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// y = act(W (x * s) + b) + residual. The pre-activation is recomputed in the backward.
struct PointwiseFunction : public torch::autograd::Function<PointwiseFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::string_view activation,
                            const std::optional<at::Tensor>& residual,
                            const std::optional<at::Tensor>& input_scale) {
    static const auto op = op_handle<PwSig>("mnv3::pointwise_conv_bn_act");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x, weight, bias, activation, residual, input_scale);
    }
    ctx->save_for_backward({x, weight, opt(bias), opt(input_scale)});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["residual"] = residual.has_value();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &scale = saved[3];
    const std::string act = ctx->saved_data["activation"].toStringRef();
    const int64_t cout = weight.size(0), K = weight.size(1);
    const at::Tensor w4 = weight.reshape({cout, K, 1, 1});
    const at::Tensor xs = scale.defined() ? x * scale.unsqueeze(-1).unsqueeze(-1) : x;
    at::Tensor g = grads[0];
    if (act != "none") {
      const at::Tensor pre = at::conv2d(xs, w4, bias.defined() ? bias : at::Tensor());
      g = activation_backward(g, act, pre);
    }
    const bool has_bias = bias.defined();
    const bool need_xs = ctx->needs_input_grad(0) || (scale.defined() && ctx->needs_input_grad(5));
    const std::array<bool, 3> mask = {need_xs, ctx->needs_input_grad(1),
                                      has_bias && ctx->needs_input_grad(2)};
    at::OptionalIntArrayRef bias_sizes;
    std::vector<int64_t> bias_shape = {cout};
    if (has_bias) bias_sizes = bias_shape;
    auto [gxs, gw, gb] = at::convolution_backward(g, xs, w4, bias_sizes, {1, 1}, {0, 0}, {1, 1},
                                                  false, {0, 0}, 1, mask);
    at::Tensor gx = gxs, gs;
    if (scale.defined() && gxs.defined()) {
      gx = gxs * scale.unsqueeze(-1).unsqueeze(-1);
      gs = (gxs * x).sum({2, 3});
    }
    return {gx, gw.defined() ? gw.reshape(weight.sizes()) : gw, has_bias ? gb : at::Tensor(),
            at::Tensor(), ctx->saved_data["residual"].toBool() ? grads[0] : at::Tensor(), gs};
  }
};

template <bool Swish>
struct HardActFunction : public torch::autograd::Function<HardActFunction<Swish>> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    static const auto op = op_handle<ActSig>(Swish ? "mnv3::hardswish" : "mnv3::hardsigmoid");
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(x);
    }
    ctx->save_for_backward({x});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    return {Swish ? at::hardswish_backward(grads[0], x) : at::hardsigmoid_backward(grads[0], x)};
  }
};

// Without a gradient to track, the kernel is called directly: building a graph node per call
// costs more than a small kernel.
bool track(std::initializer_list<const at::Tensor*> inputs) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : inputs) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

at::Tensor dwconv_bn_act_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  c10::string_view activation) {
  static const at::Tensor none;
  if (!track({&x, &weight, bias.has_value() ? &*bias : &none})) {
    static const auto op = op_handle<DwSig>("mnv3::dwconv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, bias, stride, padding, dilation, activation);
  }
  return DwConvFunction::apply(x, weight, bias, stride, padding, dilation, activation);
}

at::Tensor squeeze_excite_autograd(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                   const at::Tensor& w2, const at::Tensor& b2) {
  if (!track({&x, &w1, &b1, &w2, &b2})) {
    static const auto op = op_handle<SeSig>("mnv3::squeeze_excite");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, w1, b1, w2, b2);
  }
  return SqueezeExciteFunction::apply(x, w1, b1, w2, b2);
}

at::Tensor pointwise_autograd(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, c10::string_view activation,
                              const std::optional<at::Tensor>& residual,
                              const std::optional<at::Tensor>& input_scale) {
  const at::Tensor b = opt(bias), r = opt(residual), s = opt(input_scale);
  if (!track({&x, &weight, &b, &r, &s})) {
    static const auto op = op_handle<PwSig>("mnv3::pointwise_conv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, bias, activation, residual, input_scale);
  }
  return PointwiseFunction::apply(x, weight, bias, activation, residual, input_scale);
}

at::Tensor dense_autograd(const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation,
                          c10::string_view activation) {
  const at::Tensor b = opt(bias);
  if (!track({&x, &weight, &b})) {
    static const auto op = op_handle<DenseSig>("mnv3::dense_conv_bn_act");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, weight, bias, stride, padding, dilation, activation);
  }
  return DenseConvFunction::apply(x, weight, bias, stride, padding, dilation, activation);
}

at::Tensor dense_packed_autograd(const at::Tensor& x, const at::Tensor& packed,
                                 int64_t out_channels, at::IntArrayRef kernel_size,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, c10::string_view activation) {
  TORCH_CHECK(!track({&x, &packed}),
              "mnv3::dense_conv_bn_act_packed computes no gradients (its weights are packed); "
              "use mnv3::dense_conv_bn_act, or call it under torch.no_grad()");
  static const auto op = op_handle<DensePackedSig>("mnv3::dense_conv_bn_act_packed");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, packed, out_channels, kernel_size, stride, padding, dilation, activation);
}

// Packed weights are derived data with no path back to the parameters: the packed op computes
// inference only, and says so instead of returning a result without a gradient.
at::Tensor pointwise_packed_autograd(const at::Tensor& x, const at::Tensor& packed,
                                     int64_t out_channels, c10::string_view activation,
                                     const std::optional<at::Tensor>& residual,
                                     const std::optional<at::Tensor>& input_scale) {
  const at::Tensor r = opt(residual), s = opt(input_scale);
  TORCH_CHECK(!track({&x, &packed, &r, &s}),
              "mnv3::pointwise_conv_bn_act_packed computes no gradients (its weights are packed); "
              "use mnv3::pointwise_conv_bn_act, or call it under torch.no_grad()");
  static const auto op = op_handle<PwPackedSig>("mnv3::pointwise_conv_bn_act_packed");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, packed, out_channels, activation, residual, input_scale);
}

// Untracked: the fused kernel; tracked: ATen's mean, which carries the gradient.
at::Tensor global_avg_pool_autograd(const at::Tensor& x) {
  if (track({&x})) return x.mean({2, 3}, /*keepdim=*/true);
  static const auto op = op_handle<at::Tensor(const at::Tensor&)>("mnv3::global_avg_pool");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x);
}

// The gate feeds a fused block's inference path only; gradients go through squeeze_excite.
at::Tensor squeeze_excite_gate_autograd(const at::Tensor& x, const at::Tensor& w1,
                                        const at::Tensor& b1, const at::Tensor& w2,
                                        const at::Tensor& b2) {
  TORCH_CHECK(!track({&x, &w1, &b1, &w2, &b2}),
              "mnv3::squeeze_excite_gate computes no gradients; use mnv3::squeeze_excite, or call "
              "it under torch.no_grad()");
  static const auto op = op_handle<SeSig>("mnv3::squeeze_excite_gate");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, w1, b1, w2, b2);
}

// The block op: untracked, one fused call; tracked, its reference decomposition into the ops
// it fuses (each with its own backward), on a channels_last x so the output's layout is the
// fused kernel's.
at::Tensor inverted_residual_autograd(
    const at::Tensor& x, const OptT& expand_weight, const OptT& expand_bias,
    c10::string_view expand_activation, const at::Tensor& dw_weight, const OptT& dw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view dw_activation, const OptT& se_fc1_weight, const OptT& se_fc1_bias,
    const OptT& se_fc2_weight, const OptT& se_fc2_bias, const at::Tensor& project_weight,
    const OptT& project_bias, bool residual) {
  const at::Tensor ew = opt(expand_weight), eb = opt(expand_bias), db = opt(dw_bias);
  const at::Tensor s1 = opt(se_fc1_weight), s2 = opt(se_fc1_bias), s3 = opt(se_fc2_weight),
                   s4 = opt(se_fc2_bias), pb = opt(project_bias);
  if (!track({&x, &ew, &eb, &dw_weight, &db, &s1, &s2, &s3, &s4, &project_weight, &pb})) {
    static const auto op = op_handle<BlockSig>("mnv3::inverted_residual");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x, expand_weight, expand_bias, expand_activation, dw_weight, dw_bias, stride,
                   padding, dilation, dw_activation, se_fc1_weight, se_fc1_bias, se_fc2_weight,
                   se_fc2_bias, project_weight, project_bias, residual);
  }
  static const auto pw = op_handle<PwSig>("mnv3::pointwise_conv_bn_act");
  static const auto dw = op_handle<DwSig>("mnv3::dwconv_bn_act");
  static const auto se = op_handle<SeSig>("mnv3::squeeze_excite");
  const at::Tensor xc = x.dim() == 4 ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
  at::Tensor h = xc;
  if (expand_weight.has_value()) h = pw.call(xc, *expand_weight, expand_bias, expand_activation, {}, {});
  h = dw.call(h, dw_weight, dw_bias, stride, padding, dilation, dw_activation);
  if (se_fc1_weight.has_value() && se_fc1_bias.has_value() && se_fc2_weight.has_value() &&
      se_fc2_bias.has_value()) {
    h = se.call(h, *se_fc1_weight, *se_fc1_bias, *se_fc2_weight, *se_fc2_bias);
  }
  return pw.call(h, project_weight, project_bias, "none", residual ? OptT(xc) : OptT(), {});
}

at::Tensor inverted_residual_packed_autograd(
    const at::Tensor& x, const OptT& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight, const OptT& dw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    c10::string_view dw_activation, const OptT& se_fc1_weight, const OptT& se_fc1_bias,
    const OptT& se_fc2_weight, const OptT& se_fc2_bias, const at::Tensor& project_packed,
    int64_t out_channels, bool residual) {
  const at::Tensor ep = opt(expand_packed), db = opt(dw_bias), s1 = opt(se_fc1_weight),
                   s2 = opt(se_fc1_bias), s3 = opt(se_fc2_weight), s4 = opt(se_fc2_bias);
  TORCH_CHECK(!track({&x, &ep, &dw_weight, &db, &s1, &s2, &s3, &s4, &project_packed}),
              "mnv3::inverted_residual_packed computes no gradients (its weights are packed); "
              "use mnv3::inverted_residual, or call it under torch.no_grad()");
  static const auto op = op_handle<BlockPackedSig>("mnv3::inverted_residual_packed");
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, expand_packed, expand_channels, expand_activation, dw_weight, dw_bias, stride,
                 padding, dilation, dw_activation, se_fc1_weight, se_fc1_bias, se_fc2_weight,
                 se_fc2_bias, project_packed, out_channels, residual);
}

template <bool Swish>
at::Tensor hard_act_autograd(const at::Tensor& x) {
  if (!track({&x})) {
    static const auto op = op_handle<ActSig>(Swish ? "mnv3::hardswish" : "mnv3::hardsigmoid");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(x);
  }
  return HardActFunction<Swish>::apply(x);
}

// The in-place ops record no history: overwriting x would lose what the backward needs (x), so
// a tracked x is refused, as a leaf would be by PyTorch.
template <bool Swish>
void hard_act_inplace_autograd(const at::Tensor& x) {
  const char* name = Swish ? "mnv3::hardswish_" : "mnv3::hardsigmoid_";
  TORCH_CHECK(!track({&x}), name,
              ": x requires grad; the in-place op records no autograd history. Use the "
              "out-of-place op (", Swish ? "hardswish" : "hardsigmoid",
              "), or call it under torch.no_grad()");
  static const auto op = op_handle<InplaceActSig>(name);
  at::AutoDispatchBelowAutograd guard;  // on to ADInplaceOrView
  op.call(x);
}

// ADInplaceOrView, as for ATen's in-place ops: the version bump lets autograd notice that a
// tensor saved by another node was overwritten, and it is what refuses an inference tensor
// outside inference mode. Bumped before writing, so that a refused x is left untouched.
template <bool Swish>
void hard_act_inplace_view(const at::Tensor& x) {
  torch::autograd::impl::bump_version(x);
  static const auto op = op_handle<InplaceActSig>(Swish ? "mnv3::hardswish_" : "mnv3::hardsigmoid_");
  at::AutoDispatchBelowADInplaceOrView guard;
  op.call(x);
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv3, Autograd, m) {
  m.impl("dwconv_bn_act", &dwconv_bn_act_autograd);
  m.impl("squeeze_excite", &squeeze_excite_autograd);
  m.impl("hardswish", &hard_act_autograd<true>);
  m.impl("hardsigmoid", &hard_act_autograd<false>);
  m.impl("hardswish_", &hard_act_inplace_autograd<true>);
  m.impl("hardsigmoid_", &hard_act_inplace_autograd<false>);
  m.impl("pointwise_conv_bn_act", &pointwise_autograd);
  m.impl("pointwise_conv_bn_act_packed", &pointwise_packed_autograd);
  m.impl("squeeze_excite_gate", &squeeze_excite_gate_autograd);
  m.impl("dense_conv_bn_act", &dense_autograd);
  m.impl("dense_conv_bn_act_packed", &dense_packed_autograd);
  m.impl("inverted_residual", &inverted_residual_autograd);
  m.impl("inverted_residual_packed", &inverted_residual_packed_autograd);
  m.impl("global_avg_pool", &global_avg_pool_autograd);
}

TORCH_LIBRARY_IMPL(mnv3, ADInplaceOrView, m) {
  m.impl("hardswish_", &hard_act_inplace_view<true>);
  m.impl("hardsigmoid_", &hard_act_inplace_view<false>);
}

}  // namespace mnv3
