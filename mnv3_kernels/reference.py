"""The unfused PyTorch path.

This is the oracle every kernel is tested against and the fallback used when no fused
backend can serve a call. It is written with plain PyTorch ops, one pass per op, exactly as
an eager MobileNetV3 runs them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# The fused activations; the kernels know them by their index (csrc/common/activation.h).
ACTIVATIONS = ("none", "relu", "hardswish", "relu6")


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "none":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "hardswish":
        return F.hardswish(x)
    if name == "relu6":
        return F.relu6(x)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def dwconv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation_name: str,
) -> torch.Tensor:
    """Depthwise conv with BN already folded into weight/bias, then the activation."""
    y = F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups=x.shape[1])
    return activation(y, activation_name)


def dense_conv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation_name: str,
) -> torch.Tensor:
    """Dense conv (groups = 1) with BN folded into weight/bias, then the activation; the output
    is channels_last, as the fused kernels write it."""
    y = F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))
    return activation(y, activation_name).contiguous(memory_format=torch.channels_last)


def conv_bn_act_unfolded(
    x: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: Optional[torch.Tensor],
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    activation_name: str,
) -> torch.Tensor:
    """conv2d -> batch_norm (eval) -> activation: three passes, as eager PyTorch runs them."""
    y = F.conv2d(x, conv_weight, conv_bias, tuple(stride), tuple(padding), tuple(dilation), groups=x.shape[1])
    y = F.batch_norm(y, running_mean, running_var, bn_weight, bn_bias, False, 0.0, eps)
    return activation(y, activation_name)


def fold_bn(
    conv_weight: torch.Tensor,
    conv_bias: Optional[torch.Tensor],
    bn_weight: Optional[torch.Tensor],
    bn_bias: Optional[torch.Tensor],
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
):
    """Eval BN folded into the conv: w' = w*g/sqrt(var+eps), b' = beta + (b - mean)*g/sqrt(var+eps)."""
    scale = torch.rsqrt(running_var.float() + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.float()
    shift = -running_mean.float() * scale
    if bn_bias is not None:
        shift = shift + bn_bias.float()
    if conv_bias is not None:
        shift = shift + conv_bias.float() * scale
    w = conv_weight.float() * scale.reshape(-1, *([1] * (conv_weight.dim() - 1)))
    return w.to(conv_weight.dtype), shift.to(conv_weight.dtype)


def pointwise_conv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    activation_name: str,
    residual: Optional[torch.Tensor] = None,
    input_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """1x1 conv (BN folded into weight/bias) -> activation -> + residual; x's channels scaled per
    sample by input_scale (N, Cin) first. weight is (Cout, Cin) or (Cout, Cin, 1, 1)."""
    if input_scale is not None:
        x = x * input_scale[:, :, None, None]
    w = weight.reshape(weight.shape[0], weight.shape[1], 1, 1)
    y = activation(F.conv2d(x, w, bias), activation_name)
    return y if residual is None else y + residual


def squeeze_excite(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
) -> torch.Tensor:
    """x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))), fc weights given as (out, in)."""
    pooled = x.mean(dim=(2, 3))
    hidden = F.relu(F.linear(pooled, fc1_weight.flatten(1), fc1_bias))
    gate = F.hardsigmoid(F.linear(hidden, fc2_weight.flatten(1), fc2_bias))
    return x * gate[:, :, None, None]


def inverted_residual(
    x: torch.Tensor,
    expand_weight: Optional[torch.Tensor],
    expand_bias: Optional[torch.Tensor],
    expand_activation: str,
    dw_weight: torch.Tensor,
    dw_bias: Optional[torch.Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    dw_activation: str,
    se: Optional[Sequence[torch.Tensor]],
    project_weight: torch.Tensor,
    project_bias: Optional[torch.Tensor],
    residual: bool,
) -> torch.Tensor:
    """A whole inverted-residual block, layer by layer (BN folded into every conv):
    [1x1 expand + act] -> depthwise + act -> [squeeze-excite] -> 1x1 project [+ x]. The output
    is channels_last, as the fused kernel writes it."""
    h = x
    if expand_weight is not None:
        h = pointwise_conv_bn_act(h, expand_weight, expand_bias, expand_activation)
    h = dwconv_bn_act(h, dw_weight, dw_bias, stride, padding, dilation, dw_activation)
    if se is not None:
        h = squeeze_excite(h, *se)
    y = pointwise_conv_bn_act(h, project_weight, project_bias, "none", x if residual else None)
    return y.contiguous(memory_format=torch.channels_last)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1)


def hardswish(x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.hardsigmoid(x)


def hardswish_(x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x, inplace=True)


def hardsigmoid_(x: torch.Tensor) -> torch.Tensor:
    return F.hardsigmoid(x, inplace=True)


# The activation variants of the paper's Table 5, in plain PyTorch ops.
def hardswish_naive_chain(x: torch.Tensor) -> torch.Tensor:
    """h-swish as a chain of ops: add, relu6, mul, div (four passes)."""
    return x * F.relu6(x + 3.0) / 6.0


def hardswish_piecewise_where(x: torch.Tensor) -> torch.Tensor:
    """The paper's piecewise formula written with torch.where."""
    return torch.where(x <= -3.0, torch.zeros_like(x), torch.where(x >= 3.0, x, x * (x + 3.0) / 6.0))
