// The CPU implementations of the operators on prepacked weights, callable directly from C++:
// what a LayerChain (csrc/python/layer_chain.cpp) runs back to back without the dispatcher.
// Each validates its arguments as the registered operator does.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <memory>

namespace mnv3 {
namespace cpu {

struct KernelTable;

// A block's depthwise weights and bias in the row kernels' format (dw_band_pack), which depends
// on the instruction set: a LayerChain packs each block's once, and the block uses them while
// that instruction set is active (otherwise, and for the registered op, it packs per call).
struct DwBandPacked {
  std::shared_ptr<float[]> mem;
  const float* data = nullptr;       // 64-byte aligned, inside mem
  const KernelTable* table = nullptr;  // the kernels it was packed for
  int64_t channels = 0, taps = 0;
};
// Empty (data null) when the weight is not a float32 CPU (C, 1, kh, kw) tensor with a (C) bias
// or none: the block then reports the error (or packs) itself.
DwBandPacked pack_dw_band(const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias);

at::Tensor inverted_residual_packed_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_packed, int64_t out_channels, bool residual);
// The same with the depthwise weights already packed (used while dw_prepacked was packed for
// the active kernels and matches dw_weight's shape; the caller keeps it in step with dw_weight).
at::Tensor inverted_residual_prepacked_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& expand_packed, int64_t expand_channels,
    c10::string_view expand_activation, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view dw_activation,
    const c10::optional<at::Tensor>& se_fc1_weight, const c10::optional<at::Tensor>& se_fc1_bias,
    const c10::optional<at::Tensor>& se_fc2_weight, const c10::optional<at::Tensor>& se_fc2_bias,
    const at::Tensor& project_packed, int64_t out_channels, bool residual,
    const DwBandPacked* dw_prepacked);

at::Tensor dense_conv_bn_act_packed_cpu(const at::Tensor& x, const at::Tensor& packed,
                                        int64_t out_channels, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, c10::string_view activation);

at::Tensor pointwise_conv_bn_act_packed_cpu(const at::Tensor& x, const at::Tensor& packed,
                                            int64_t out_channels, c10::string_view activation,
                                            const c10::optional<at::Tensor>& residual,
                                            const c10::optional<at::Tensor>& input_scale);

// Per-(n, c) means over H and W: (N, C, 1, 1) in x's memory format.
at::Tensor global_avg_pool_cpu(const at::Tensor& x);

}  // namespace cpu
}  // namespace mnv3
