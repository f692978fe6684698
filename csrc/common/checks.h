// Host-side argument checks shared by every backend: one message per mistake, naming the
// argument, what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "activation.h"
#include "dwconv_params.h"

namespace mnv3 {

Activation parse_activation(c10::string_view name);

// Validates a dwconv_bn_act call and returns its shape. `op` names the caller in messages.
DwConvParams check_dwconv_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation);

void check_squeeze_excite_args(const char* op, const at::Tensor& x, const at::Tensor& fc1_weight,
                               const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                               const at::Tensor& fc2_bias);

// An in-place op cannot write a tensor whose elements share memory (an expand, a stride-0 view).
void check_writable_in_place(const char* op, const at::Tensor& x);

// The memory format every op writes its output in: channels_last when the input is laid out
// channels_last (and not also NCHW-contiguous), else contiguous NCHW. mnv3_kernels/ops.py's fake
// kernels follow the same rule.
at::MemoryFormat output_memory_format(const at::Tensor& x);

}  // namespace mnv3
