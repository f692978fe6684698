"""ONNX export of converted models: every fused operator exports as the standard ONNX ops it
computes, so the file runs in any ONNX runtime (ONNX Runtime, OpenVINO, TensorRT, ...) and needs
nothing of this package.

    dwconv_bn_act   -> Conv(group=C, folded weight and bias) [-> Relu | HardSwish | Clip(0, 6)]
    squeeze_excite  -> GlobalAveragePool -> Flatten -> Gemm -> Relu -> Gemm
                       -> HardSigmoid(alpha=1/6) -> Unsqueeze -> Mul
    hardswish       -> HardSwish
    hardsigmoid     -> HardSigmoid(alpha=1/6, beta=0.5)

Both exporters of ``torch.onnx.export`` are served:

- ``dynamo=False`` (TorchScript): symbolic functions registered for opset >= 14 (HardSwish)
  when the package is imported -- nothing to pass::

      torch.onnx.export(model, (x,), "model.onnx", dynamo=False)

- ``dynamo=True``: the exporter takes translations only per call, as
  ``custom_translation_table`` (onnxscript functions)::

      torch.onnx.export(model, (x,), "model.onnx", dynamo=True,
                        custom_translation_table=mnv3_kernels.onnx_translation_table())

Why translations and not a decomposition of the operators into their reference PyTorch code:
the translation says directly which ONNX node each operator is (one Conv with the activation
next to it, the pattern runtimes fuse), both exporters produce the same graph, and the
exported program keeps the operators until the last step.

The in-place ``hardswish_``/``hardsigmoid_`` operators have no ONNX form (convert() never
inserts them); export a model with the out-of-place modules.
"""
from __future__ import annotations

from typing import Dict

import torch

__all__ = ["onnx_translation_table", "register_onnx_symbolics", "SYMBOLIC_OPSET"]

# HardSwish is an ONNX operator from opset 14 on.
SYMBOLIC_OPSET = 14
# ONNX HardSigmoid is max(0, min(1, alpha*x + beta)); PyTorch's is relu6(x + 3) / 6.
_HS_ALPHA, _HS_BETA = 1.0 / 6.0, 0.5
_NAMESPACES = ("mnv3", "mnv3_triton")


def _pads(padding):
    # ONNX pads: [h_begin, w_begin, h_end, w_end]; ours are symmetric.
    return list(padding) + list(padding)


# ----------------------------------------------------------------------------------------------
# dynamo=False: TorchScript symbolic functions
# ----------------------------------------------------------------------------------------------
def _ts_activation(g, y, activation):
    if activation == "relu":
        return g.op("Relu", y)
    if activation == "hardswish":
        return g.op("HardSwish", y)
    if activation == "relu6":
        return _ts_clip(g, y, 0.0, 6.0)
    return y


# TorchScript scalar type names -> dtypes, for constants that must match a value's dtype.
_TS_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16,
              "BFloat16": torch.bfloat16}


def _ts_clip(g, y, low, high):
    # Clip takes its bounds as inputs of y's dtype (as torch's own hardtanh symbolic builds them).
    scalar_type = getattr(y.type(), "scalarType", lambda: None)()  # None when not known
    dtype = _TS_DTYPES.get(scalar_type, torch.float32)
    bounds = [g.op("Constant", value_t=torch.tensor(v, dtype=dtype)) for v in (low, high)]
    return g.op("Clip", y, *bounds)


def _ts_channels(weight, x):
    from torch.onnx import symbolic_helper as sh

    for value, dim in ((weight, 0), (x, 1)):
        sizes = sh._get_tensor_sizes(value)
        if sizes and sizes[dim] is not None:
            return int(sizes[dim])
    raise RuntimeError("mnv3::dwconv_bn_act ONNX export: the channel count is not known at export time")


def _ts_dwconv_bn_act(g, x, weight, bias, stride, padding, dilation, activation):
    from torch.onnx import symbolic_helper as sh

    stride = sh._get_const(stride, "is", "stride")
    padding = sh._get_const(padding, "is", "padding")
    dilation = sh._get_const(dilation, "is", "dilation")
    activation = sh._get_const(activation, "s", "activation")
    kernel = sh._get_tensor_sizes(weight)[2:]
    inputs = [x, weight] if sh._is_none(bias) else [x, weight, bias]
    y = g.op("Conv", *inputs, kernel_shape_i=kernel, strides_i=stride, pads_i=_pads(padding),
             dilations_i=dilation, group_i=_ts_channels(weight, x))
    return _ts_activation(g, y, activation)


def _ts_squeeze_excite(g, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    pooled = g.op("Flatten", g.op("GlobalAveragePool", x), axis_i=1)
    hidden = g.op("Relu", g.op("Gemm", pooled, fc1_weight, fc1_bias, transB_i=1))
    gate = g.op("HardSigmoid", g.op("Gemm", hidden, fc2_weight, fc2_bias, transB_i=1),
                alpha_f=_HS_ALPHA, beta_f=_HS_BETA)
    axes = g.op("Constant", value_t=torch.tensor([2, 3], dtype=torch.int64))
    return g.op("Mul", x, g.op("Unsqueeze", gate, axes))


def _ts_unsqueeze23(g, t):
    return g.op("Unsqueeze", t, g.op("Constant", value_t=torch.tensor([2, 3], dtype=torch.int64)))


def _ts_pointwise_conv_bn_act(g, x, weight, bias, activation, residual, input_scale):
    from torch.onnx import symbolic_helper as sh

    activation = sh._get_const(activation, "s", "activation")
    if not sh._is_none(input_scale):
        x = g.op("Mul", x, _ts_unsqueeze23(g, input_scale))
    sizes = sh._get_tensor_sizes(weight)
    if sizes is not None and len(sizes) == 2:
        weight = _ts_unsqueeze23(g, weight)
    inputs = [x, weight] if sh._is_none(bias) else [x, weight, bias]
    y = _ts_activation(g, g.op("Conv", *inputs, kernel_shape_i=[1, 1]), activation)
    return y if sh._is_none(residual) else g.op("Add", y, residual)


def _ts_dense_conv_bn_act(g, x, weight, bias, stride, padding, dilation, activation):
    from torch.onnx import symbolic_helper as sh

    stride = sh._get_const(stride, "is", "stride")
    padding = sh._get_const(padding, "is", "padding")
    dilation = sh._get_const(dilation, "is", "dilation")
    activation = sh._get_const(activation, "s", "activation")
    kernel = sh._get_tensor_sizes(weight)[2:]
    inputs = [x, weight] if sh._is_none(bias) else [x, weight, bias]
    y = g.op("Conv", *inputs, kernel_shape_i=kernel, strides_i=stride, pads_i=_pads(padding),
             dilations_i=dilation, group_i=1)
    return _ts_activation(g, y, activation)


def _ts_hardswish(g, x):
    return g.op("HardSwish", x)


def _ts_hardsigmoid(g, x):
    return g.op("HardSigmoid", x, alpha_f=_HS_ALPHA, beta_f=_HS_BETA)


_TS_SYMBOLICS = {
    "dwconv_bn_act": _ts_dwconv_bn_act,
    "squeeze_excite": _ts_squeeze_excite,
    "hardswish": _ts_hardswish,
    "hardsigmoid": _ts_hardsigmoid,
    "pointwise_conv_bn_act": _ts_pointwise_conv_bn_act,
    "dense_conv_bn_act": _ts_dense_conv_bn_act,
}


def register_onnx_symbolics() -> None:
    """Register the TorchScript-exporter symbolics of every operator (both namespaces).

    Done when the package is imported; calling it again is harmless."""
    from torch.onnx import register_custom_op_symbolic

    for namespace in _NAMESPACES:
        for name, fn in _TS_SYMBOLICS.items():
            register_custom_op_symbolic(f"{namespace}::{name}", fn, SYMBOLIC_OPSET)


# ----------------------------------------------------------------------------------------------
# dynamo=True: onnxscript translations
# ----------------------------------------------------------------------------------------------
def _onnxscript_functions():
    # onnxscript is needed only for dynamo=True export (the exporter itself requires it).
    from onnxscript import opset18 as op

    def _activation(y, activation):
        if activation == "relu":
            return op.Relu(y)
        if activation == "hardswish":
            return op.HardSwish(y)
        if activation == "relu6":
            low, high = op.Constant(value_float=0.0), op.Constant(value_float=6.0)
            return op.Clip(y, op.CastLike(low, y), op.CastLike(high, y))
        return y

    def dwconv_bn_act(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                      activation="none"):
        channels, _, kh, kw = weight.shape
        inputs = (x, weight) if bias is None else (x, weight, bias)
        y = op.Conv(*inputs, kernel_shape=[int(kh), int(kw)], strides=list(stride),
                    pads=_pads(padding), dilations=list(dilation), group=int(channels))
        return _activation(y, activation)

    def squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        pooled = op.Flatten(op.GlobalAveragePool(x), axis=1)
        hidden = op.Relu(op.Gemm(pooled, fc1_weight, fc1_bias, transB=1))
        gate = op.HardSigmoid(op.Gemm(hidden, fc2_weight, fc2_bias, transB=1), alpha=_HS_ALPHA, beta=_HS_BETA)
        return op.Mul(x, op.Unsqueeze(gate, op.Constant(value_ints=[2, 3])))

    def pointwise_conv_bn_act(x, weight, bias=None, activation="none", residual=None, input_scale=None):
        if input_scale is not None:
            x = op.Mul(x, op.Unsqueeze(input_scale, op.Constant(value_ints=[2, 3])))
        if len(weight.shape) == 2:
            weight = op.Unsqueeze(weight, op.Constant(value_ints=[2, 3]))
        inputs = (x, weight) if bias is None else (x, weight, bias)
        y = _activation(op.Conv(*inputs, kernel_shape=[1, 1]), activation)
        return y if residual is None else op.Add(y, residual)

    def dense_conv_bn_act(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                          activation="none"):
        _, _, kh, kw = weight.shape
        inputs = (x, weight) if bias is None else (x, weight, bias)
        y = op.Conv(*inputs, kernel_shape=[int(kh), int(kw)], strides=list(stride),
                    pads=_pads(padding), dilations=list(dilation), group=1)
        return _activation(y, activation)

    def hardswish(x):
        return op.HardSwish(x)

    def hardsigmoid(x):
        return op.HardSigmoid(x, alpha=_HS_ALPHA, beta=_HS_BETA)

    return {"dwconv_bn_act": dwconv_bn_act, "squeeze_excite": squeeze_excite,
            "hardswish": hardswish, "hardsigmoid": hardsigmoid,
            "pointwise_conv_bn_act": pointwise_conv_bn_act, "dense_conv_bn_act": dense_conv_bn_act}


def onnx_translation_table() -> Dict[object, object]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: every registered
    operator of this package (``torch.ops.mnv3.*`` and, where Triton is available,
    ``torch.ops.mnv3_triton.*``) mapped to its onnxscript translation.

    Merge it with your own entries if you have any: ``{**onnx_translation_table(), **mine}``.
    Raises ImportError, saying what to install, when onnxscript is missing."""
    try:
        functions = _onnxscript_functions()
    except ImportError as exc:
        raise ImportError(f"ONNX export with dynamo=True needs onnxscript and onnx "
                          f"(pip install onnxscript onnx): {exc}") from exc
    table = {}
    for namespace in _NAMESPACES:
        ns = getattr(torch.ops, namespace)
        for name, fn in functions.items():
            try:
                overload = getattr(ns, name).default
            except (AttributeError, RuntimeError):  # namespace not registered in this process
                continue
            table[overload] = fn
    return table
