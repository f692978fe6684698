// The CPU implementations of the operators on prepacked weights, callable directly from C++:
// what a LayerChain (csrc/python/layer_chain.cpp) runs back to back without the dispatcher.
// Each validates its arguments as the registered operator does.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

namespace mnv3 {
namespace cpu {

at::Tensor inverted_residual_packed_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_packed, int64_t out_channels, bool residual);

at::Tensor dense_conv_bn_act_packed_cpu(const at::Tensor& x, const at::Tensor& packed,
                                        int64_t out_channels, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, c10::string_view activation);

at::Tensor pointwise_conv_bn_act_packed_cpu(const at::Tensor& x, const at::Tensor& packed,
                                            int64_t out_channels, c10::string_view activation,
                                            const c10::optional<at::Tensor>& residual,
                                            const c10::optional<at::Tensor>& input_scale);

}  // namespace cpu
}  // namespace mnv3
