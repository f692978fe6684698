"""Public functional API: argument checks, backend choice, fake kernels, Triton autograd.

Every public function validates its arguments once (errors name the argument), picks a backend,
and calls one registered operator:

    "cpu", "cuda" -> torch.ops.mnv3.*         (csrc/, chosen by the tensor's dispatch key)
    "triton"      -> torch.ops.mnv3_triton.*  (mnv3_kernels/triton)
    "reference"   -> mnv3_kernels.reference   (the unfused PyTorch path)

Under ``torch.autocast`` the two conv-like ops, ``dwconv_bn_act`` and ``squeeze_excite``, have
Autocast kernels (registered below, as PyTorch registers its conv and linear ops): on CUDA they
cast x and the weights to the autocast dtype (float16 or bfloat16) and compute in it, as
``F.conv2d`` does; on CPU they cast to float32 and compute in float32 -- the CPU kernels are
float32 only, so the output is float32 where an autocast ``F.conv2d`` would return bfloat16 (more
precise, never silently less). The "reference" backend follows the same rule. The element-wise
ops (h-swish, h-sigmoid) have no autocast rule, like ``F.hardswish``: they run in x's dtype.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch

from . import _extension, reference
from . import triton as _triton

IntOrPair = Union[int, Sequence[int]]

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
ACTIVATIONS = reference.ACTIVATIONS
_CPU_DTYPES = (torch.float32,)
_GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
def _cuda_usable() -> bool:
    return _extension.CUDA_BUILT and torch.cuda.is_available()


# Read once, like the Triton backend and Triton itself do (set it before importing the package).
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_interpret() -> bool:
    return _TRITON_INTERPRET


def backends() -> list:
    """The backends usable on this machine, best first ("reference" is always there)."""
    found = []
    if _cuda_usable():
        found.append("cuda")
    if _triton.AVAILABLE:
        found.append("triton")
    if _extension.LOADED:
        found.append("cpu")
    found.append("reference")
    return found


def _unavailable_reason(backend: str) -> str:
    if backend == "cpu":
        return f"the compiled library is not loaded ({_extension.LOAD_ERROR})"
    if backend == "cuda":
        if not _extension.LOADED:
            return f"the compiled library is not loaded ({_extension.LOAD_ERROR})"
        if not _extension.CUDA_BUILT:
            return "mnv3_kernels was built without CUDA kernels (rebuild with a CUDA toolkit or FORCE_CUDA=1)"
        return "no CUDA device is available"
    if backend == "triton":
        return _triton.UNAVAILABLE_REASON
    return "unknown backend"


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype the conv-like ops compute in under autocast on `device_type`; None without."""
    if not torch._C._is_any_autocast_enabled() or device_type not in ("cpu", "cuda"):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.float32 if device_type == "cpu" else torch.get_autocast_dtype(device_type)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype dwconv_bn_act / squeeze_excite compute in for `x` (autocast included)."""
    return _autocast_dtype(x.device.type) or x.dtype


def _autocast_cast(tensors, dtype: Optional[torch.dtype]):
    # What autocast casts: floating tensors of the 32/16-bit kinds (float64 is left alone).
    if dtype is None:
        return tensors
    return [t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _GPU_DTYPES else t
            for t in tensors]


def reference_reason(backend: str, x: torch.Tensor, conv_like: bool = True) -> str:
    """Why `backend` serves `x` with the reference path instead of a fused kernel."""
    if backend == "reference":
        return "backend='reference' requested"
    if x.device.type == "cpu" and not _extension.LOADED:
        return "the compiled library is not loaded"
    dtype = compute_dtype(x) if conv_like else x.dtype
    return f"no fused kernel for {str(dtype).replace('torch.', '')} on {x.device.type}"


def resolve_backend(backend: str, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> str:
    """The concrete backend that serves `x` (computed in `dtype`, default x's) for the requested
    `backend`; raises if it cannot."""
    dtype = x.dtype if dtype is None else dtype
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if x.device.type == "cuda":
            if dtype in _GPU_DTYPES and _cuda_usable():
                return "cuda"
            if dtype in _GPU_DTYPES and _triton.AVAILABLE:
                return "triton"
        elif x.device.type == "cpu" and dtype in _CPU_DTYPES and _extension.LOADED:
            return "cpu"
        return "reference"
    if backend == "reference":
        return backend
    usable = _cuda_usable() if backend == "cuda" else (
        _triton.AVAILABLE if backend == "triton" else _extension.LOADED)
    if not usable:
        raise RuntimeError(f"backend {backend!r} is not available: {_unavailable_reason(backend)}")
    if backend == "cpu" and x.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got x on {x.device}")
    if backend == "cuda" and x.device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got x on {x.device}")
    if backend == "triton":
        wanted = "cpu" if _triton_interpret() else "cuda"
        if x.device.type != wanted:
            how = "with TRITON_INTERPRET=1 " if wanted == "cpu" else ""
            raise ValueError(f"backend 'triton' {how}needs {wanted.upper()} tensors, got x on {x.device}")
    dtypes = _CPU_DTYPES if backend == "cpu" else _GPU_DTYPES
    if backend == "triton" and _triton_interpret():
        dtypes = _GPU_DTYPES
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"backend {backend!r} supports x of dtype {names}; got {str(dtype).replace('torch.', '')}")
    return backend


_OPS: dict = {}  # (name, backend) -> OpOverload; the torch.ops attribute walk costs ~0.3 us


def _op(name: str, backend: str):
    overload = _OPS.get((name, backend))
    if overload is None:
        namespace = torch.ops.mnv3_triton if backend == "triton" else torch.ops.mnv3
        overload = _OPS[(name, backend)] = getattr(namespace, name).default
    return overload


# (requested backend, CPU?, CUDA?, dtype) -> concrete backend. What is usable does not change
# while the process runs, and resolving costs as much as a small kernel.
_RESOLVED: dict = {}


def _resolve_cached(backend: str, x: torch.Tensor, conv_like: bool = True) -> str:
    """resolve_backend, cached; conv-like ops resolve by their autocast compute dtype."""
    dtype = compute_dtype(x) if conv_like and torch._C._is_any_autocast_enabled() else x.dtype
    if torch.compiler.is_compiling():
        return resolve_backend(backend, x, dtype)
    # resolve_backend looks at the device only as CPU / CUDA / other; x.device costs ~0.3 us.
    key = (backend, x.is_cpu, x.is_cuda, dtype)
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _RESOLVED[key] = resolve_backend(backend, x, dtype)
    return chosen


# ----------------------------------------------------------------------------------------------
# Argument checks (shared by every backend, the reference one included)
# ----------------------------------------------------------------------------------------------
def _pair(value: IntOrPair, name: str, minimum: int) -> list:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = [value, value]
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = [int(v) for v in value]
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {tuple(pair)}")
    return pair


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_like(t: torch.Tensor, name: str, x: torch.Tensor) -> None:
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}")


def _check_floating(x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")


def _check_dwconv(x, weight, bias, stride, padding, dilation, activation):
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"weight must be (C, 1, kh, kw) for a depthwise conv, got shape {tuple(weight.shape)}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[0]} channels but x has {x.shape[1]}")
    _check_like(weight, "weight", x)
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.dim() != 1 or bias.shape[0] != x.shape[1]:
            raise ValueError(f"bias must be (C,) = ({x.shape[1]},), got shape {tuple(bias.shape)}")
        _check_like(bias, "bias", x)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    stride = _pair(stride, "stride", 1)
    padding = _pair(padding, "padding", 0)
    dilation = _pair(dilation, "dilation", 1)
    _check_kernel_fits(x, weight, padding, dilation)
    return stride, padding, dilation


def _check_kernel_fits(x, weight, padding, dilation) -> None:
    for i, dim in enumerate(("height", "width")):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        if x.shape[2 + i] + 2 * padding[i] < span:
            raise ValueError(
                f"padded input {dim} ({x.shape[2 + i] + 2 * padding[i]}) is smaller than the "
                f"dilated kernel {dim} ({span})"
            )


def _fc_2d(w: torch.Tensor, name: str) -> torch.Tensor:
    _check_tensor(w, name)
    if w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1:
        return w.reshape(w.shape[0], w.shape[1])
    if w.dim() != 2:
        raise ValueError(f"{name} must be (out, in) or (out, in, 1, 1), got shape {tuple(w.shape)}")
    return w


def _check_se(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    _check_tensor(x, "x")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    C = x.shape[1]
    w1 = _fc_2d(fc1_weight, "fc1_weight")
    w2 = _fc_2d(fc2_weight, "fc2_weight")
    R = w1.shape[0]
    if w1.shape[1] != C:
        raise ValueError(f"fc1_weight must be (R, C) with C = {C} (x's channels), got shape {tuple(fc1_weight.shape)}")
    if tuple(w2.shape) != (C, R):
        raise ValueError(f"fc2_weight must be (C, R) = ({C}, {R}), got shape {tuple(fc2_weight.shape)}")
    for b, name, n in ((fc1_bias, "fc1_bias", R), (fc2_bias, "fc2_bias", C)):
        _check_tensor(b, name)
        if b.dim() != 1 or b.shape[0] != n:
            raise ValueError(f"{name} must be ({n},), got shape {tuple(b.shape)}")
    for t, name in ((w1, "fc1_weight"), (fc1_bias, "fc1_bias"), (w2, "fc2_weight"), (fc2_bias, "fc2_bias")):
        _check_like(t, name, x)
    return w1, w2


def _check_pointwise(x, weight, bias, activation, residual, input_scale):
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not (weight.dim() == 2 or (weight.dim() == 4 and weight.shape[2] == 1 and weight.shape[3] == 1)):
        raise ValueError(f"weight must be (Cout, Cin) or (Cout, Cin, 1, 1), got shape {tuple(weight.shape)}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has {weight.shape[1]} input channels but x has {x.shape[1]}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one output channel")
    _check_like(weight, "weight", x)
    cout = weight.shape[0]
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.dim() != 1 or bias.shape[0] != cout:
            raise ValueError(f"bias must be (Cout,) = ({cout},), got shape {tuple(bias.shape)}")
        _check_like(bias, "bias", x)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual is not None:
        _check_tensor(residual, "residual")
        out_shape = (x.shape[0], cout, x.shape[2], x.shape[3])
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual must have the output's shape {out_shape}, got {tuple(residual.shape)}")
        _check_like(residual, "residual", x)
    if input_scale is not None:
        _check_tensor(input_scale, "input_scale")
        if tuple(input_scale.shape) != (x.shape[0], x.shape[1]):
            raise ValueError(f"input_scale must be (N, Cin) = ({x.shape[0]}, {x.shape[1]}), "
                             f"got shape {tuple(input_scale.shape)}")
        _check_like(input_scale, "input_scale", x)


# The ops that only some backends implement; the others run the reference path under "auto" and
# refuse an explicit request.
_OP_BACKENDS = {"pointwise_conv_bn_act": ("cpu", "reference"), "dense_conv_bn_act": ("cpu", "reference"),
                "inverted_residual": ("cpu", "reference"), "global_avg_pool": ("cpu", "reference")}


def _resolve_for(op: str, backend: str, x: torch.Tensor) -> str:
    chosen = _resolve_cached(backend, x)
    served = _OP_BACKENDS.get(op)
    if served is None or chosen in served:
        return chosen
    if backend == "auto":
        return "reference"
    raise NotImplementedError(f"{op} has no {chosen!r} kernels (backends: {served}); use backend='auto'")


# ----------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------
def dwconv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    activation: str = "hardswish",
    backend: str = "auto",
) -> torch.Tensor:
    """Depthwise conv (BN folded into `weight`/`bias`) followed by `activation`, in one pass.

    weight is (C, 1, kh, kw); stride/padding/dilation take an int or a pair as F.conv2d does;
    activation is "none", "relu", "hardswish" or "relu6". The output keeps x's memory format.
    Under autocast it computes in the autocast dtype (CUDA) or float32 (CPU); see above.
    """
    if isinstance(x, torch.Tensor):
        x, weight, bias = _autocast_cast((x, weight, bias), _autocast_dtype(x.device.type))
    stride, padding, dilation = _check_dwconv(x, weight, bias, stride, padding, dilation, activation)
    return _dwconv_bn_act_on(resolve_backend(backend, x), x, weight, bias, stride, padding, dilation,
                             activation)


def _dwconv_bn_act_on(chosen, x, weight, bias, stride, padding, dilation, activation):
    """dwconv_bn_act on a resolved backend, for arguments valid by construction (the fused
    modules: only x is left to check, which the operators do themselves)."""
    if chosen == "reference":
        with _reference_autocast(x) as cast:
            return reference.dwconv_bn_act(*cast((x, weight, bias)), stride, padding, dilation, activation)
    return _op("dwconv_bn_act", chosen)(x, weight, bias, stride, padding, dilation, activation)


def _squeeze_excite_on(chosen, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    """squeeze_excite on a resolved backend (1x1-conv or 2-D fc weights, valid by construction)."""
    w1 = fc1_weight.flatten(1) if fc1_weight.dim() == 4 else fc1_weight
    w2 = fc2_weight.flatten(1) if fc2_weight.dim() == 4 else fc2_weight
    if chosen == "reference":
        with _reference_autocast(x) as cast:
            return reference.squeeze_excite(*cast((x, w1, fc1_bias, w2, fc2_bias)))
    return _op("squeeze_excite", chosen)(x, w1, fc1_bias, w2, fc2_bias)


class _reference_autocast:
    """The reference path of a conv-like op under autocast: the same casts as the Autocast
    kernels, then plain PyTorch ops with autocast off (else F.conv2d would cast again)."""

    def __init__(self, x: torch.Tensor):
        self.dtype = _autocast_dtype(x.device.type)
        self.guard = torch.autocast(x.device.type, enabled=False) if self.dtype is not None else None

    def __enter__(self):
        if self.guard is not None:
            self.guard.__enter__()
        return lambda tensors: _autocast_cast(tensors, self.dtype)

    def __exit__(self, *exc):
        if self.guard is not None:
            self.guard.__exit__(*exc)
        return False


def squeeze_excite(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """x * hardsigmoid(fc2(relu(fc1(mean_hw(x))))); fc weights as (out, in) or (out, in, 1, 1).
    Under autocast it computes in the autocast dtype (CUDA) or float32 (CPU); see above."""
    if isinstance(x, torch.Tensor):
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias = _autocast_cast(
            (x, fc1_weight, fc1_bias, fc2_weight, fc2_bias), _autocast_dtype(x.device.type))
    w1, w2 = _check_se(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return _squeeze_excite_on(resolve_backend(backend, x), x, w1, fc1_bias, w2, fc2_bias)


def pointwise_conv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: str = "none",
    residual: Optional[torch.Tensor] = None,
    input_scale: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """1x1 conv (BN folded into `weight`/`bias`), activation, then `+ residual`, in one pass:

        y = act(conv1x1(x * input_scale[:, :, None, None], weight) + bias) + residual

    weight is (Cout, Cin) or (Cout, Cin, 1, 1); `input_scale` (N, Cin) scales x's channels per
    sample (a squeeze-excite gate, folded into the weights: no pass over x); `residual` has the
    output's shape. The output keeps x's memory format. CPU kernels (GEMM on packed weights);
    other devices run the reference path.
    """
    if isinstance(x, torch.Tensor):
        x, weight, bias, residual, input_scale = _autocast_cast(
            (x, weight, bias, residual, input_scale), _autocast_dtype(x.device.type))
    _check_pointwise(x, weight, bias, activation, residual, input_scale)
    chosen = _resolve_for("pointwise_conv_bn_act", backend, x)
    if chosen == "reference":
        return reference.pointwise_conv_bn_act(x, weight, bias, activation, residual, input_scale)
    return _op("pointwise_conv_bn_act", chosen)(x, weight, bias, activation, residual, input_scale)


def dense_conv_bn_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    activation: str = "hardswish",
    backend: str = "auto",
) -> torch.Tensor:
    """Small dense conv (groups = 1; BN folded into `weight`/`bias`) + activation in one pass, for
    a model's stem (MobileNetV3: 3 -> 16, 3x3, stride 2). weight is (Cout, C, kh, kw). Reads NCHW
    or channels_last and always returns channels_last: the model's first layer reorders once."""
    if isinstance(x, torch.Tensor):
        x, weight, bias = _autocast_cast((x, weight, bias), _autocast_dtype(x.device.type))
    _check_tensor(x, "x")
    _check_tensor(weight, "weight")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or weight.shape[0] < 1:
        raise ValueError(f"weight must be (Cout, C, kh, kw) with C = {x.shape[1]} (groups = 1), "
                         f"got shape {tuple(weight.shape)}")
    _check_like(weight, "weight", x)
    if bias is not None:
        _check_tensor(bias, "bias")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be (Cout,) = ({weight.shape[0]},), got shape {tuple(bias.shape)}")
        _check_like(bias, "bias", x)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    stride, padding, dilation = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    _check_kernel_fits(x, weight, padding, dilation)
    chosen = _resolve_for("dense_conv_bn_act", backend, x)
    if chosen == "reference":
        return reference.dense_conv_bn_act(x, weight, bias, stride, padding, dilation, activation)
    return _op("dense_conv_bn_act", chosen)(x, weight, bias, stride, padding, dilation, activation)


def _check_1x1(w, name: str, cin: int, cin_from: str, x: torch.Tensor) -> None:
    _check_tensor(w, name)
    if not (w.dim() == 2 or (w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1)) or w.shape[0] < 1:
        raise ValueError(f"{name} must be (Cout, Cin) or (Cout, Cin, 1, 1), got shape {tuple(w.shape)}")
    if w.shape[1] != cin:
        raise ValueError(f"{name} has {w.shape[1]} input channels but {cin_from} has {cin}")
    _check_like(w, name, x)


def _check_vector(t, name: str, n: int, x: torch.Tensor) -> None:
    if t is None:
        return
    _check_tensor(t, name)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be ({n},), got shape {tuple(t.shape)}")
    _check_like(t, name, x)


def _check_block(x, expand_weight, expand_bias, expand_activation, dw_weight, dw_bias, stride, padding,
                 dilation, dw_activation, se, project_weight, project_bias, residual):
    _check_tensor(x, "x")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    for name, act in (("expand_activation", expand_activation), ("dw_activation", dw_activation)):
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {act!r}")
    ce = x.shape[1]
    if expand_weight is not None:
        _check_1x1(expand_weight, "expand_weight", x.shape[1], "x", x)
        ce = expand_weight.shape[0]
        _check_vector(expand_bias, "expand_bias", ce, x)
    elif expand_bias is not None:
        raise ValueError("expand_bias given without expand_weight")
    _check_tensor(dw_weight, "dw_weight")
    if dw_weight.dim() != 4 or dw_weight.shape[1] != 1 or dw_weight.shape[0] != ce:
        raise ValueError(f"dw_weight must be ({ce}, 1, kh, kw) for {ce} expanded channels, "
                         f"got shape {tuple(dw_weight.shape)}")
    _check_like(dw_weight, "dw_weight", x)
    _check_vector(dw_bias, "dw_bias", ce, x)
    stride, padding, dilation = _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    _check_kernel_fits(x, dw_weight, padding, dilation)
    if se is not None:
        if not isinstance(se, (tuple, list)) or len(se) != 4:
            raise ValueError("se must be (fc1_weight, fc1_bias, fc2_weight, fc2_bias) or None")
        probe = x.new_empty(()).expand(x.shape[0], ce, 1, 1)  # the depthwise output's channels
        try:
            w1, w2 = _check_se(probe, *se)
        except (ValueError, TypeError) as e:
            raise type(e)(f"se: {e}".replace("x's channels", "the expanded channels")
                          .replace("but x has", "but the block's x has")) from None
        se = (w1, se[1], w2, se[3])
    _check_1x1(project_weight, "project_weight", ce, "the expansion" if expand_weight is not None else "x", x)
    cout = project_weight.shape[0]
    _check_vector(project_bias, "project_bias", cout, x)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    if residual:
        out_hw = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (dw_weight.shape[2 + i] - 1) - 1) // stride[i] + 1
                  for i in range(2)]
        if (cout, *out_hw) != tuple(x.shape[1:]):
            raise ValueError(f"residual needs the output's shape (C, H, W) = ({cout}, {out_hw[0]}, {out_hw[1]}) "
                             f"to equal x's {tuple(x.shape[1:])}")
    return stride, padding, dilation, se


def inverted_residual(
    x: torch.Tensor,
    dw_weight: torch.Tensor,
    project_weight: torch.Tensor,
    *,
    expand_weight: Optional[torch.Tensor] = None,
    expand_bias: Optional[torch.Tensor] = None,
    expand_activation: str = "none",
    dw_bias: Optional[torch.Tensor] = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    dw_activation: str = "none",
    se: Optional[Sequence[torch.Tensor]] = None,
    project_bias: Optional[torch.Tensor] = None,
    residual: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """A whole inverted-residual block in one call (BN folded into every conv):

        h = expand_activation(conv1x1(x, expand_weight) + expand_bias)   (h = x without expand)
        d = dw_activation(depthwise(h, dw_weight) + dw_bias)
        d = squeeze_excite(d, *se)                                       (when se is given)
        y = conv1x1(d, project_weight) + project_bias (+ x when residual)

    1x1 weights are (Cout, Cin) or (Cout, Cin, 1, 1); `se` is (fc1_weight, fc1_bias, fc2_weight,
    fc2_bias) as in `squeeze_excite`. The CPU kernel runs bands of output rows with the expanded
    rows in a per-thread buffer, so the expanded tensor never exists in full. Returns
    channels_last. Gradients flow through the layer-by-layer decomposition.
    """
    if isinstance(x, torch.Tensor):
        flat = (x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                *(se if isinstance(se, (tuple, list)) else ()))
        cast = _autocast_cast(flat, _autocast_dtype(x.device.type))
        x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias = cast[:7]
        if se is not None and len(cast) == 11:
            se = tuple(cast[7:])
    stride, padding, dilation, se = _check_block(
        x, expand_weight, expand_bias, expand_activation, dw_weight, dw_bias, stride, padding, dilation,
        dw_activation, se, project_weight, project_bias, residual)
    chosen = _resolve_for("inverted_residual", backend, x)
    if chosen == "reference":
        return reference.inverted_residual(x, expand_weight, expand_bias, expand_activation, dw_weight, dw_bias,
                                           stride, padding, dilation, dw_activation, se, project_weight,
                                           project_bias, residual)
    return _op("inverted_residual", chosen)(x, expand_weight, expand_bias, expand_activation, dw_weight, dw_bias,
                                            stride, padding, dilation, dw_activation,
                                            *(se if se is not None else (None,) * 4), project_weight,
                                            project_bias, residual)


def _dense_packed_trusted(x, packed, out_channels, kernel_size, stride, padding, dilation, activation):
    """The packed CPU dense conv for the fused modules (arguments valid by construction)."""
    return _op("dense_conv_bn_act_packed", "cpu")(x, packed, out_channels, kernel_size, stride, padding,
                                                  dilation, activation)


def pack_pointwise_weight(weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight (Cout, Cin[, 1, 1]) and bias packed into the CPU GEMM kernels' panels; what
    `pointwise_conv_bn_act_packed` takes. Pack once, call many times."""
    if not _extension.LOADED:
        raise RuntimeError(f"packed weights need the compiled library: {_unavailable_reason('cpu')}")
    return torch.ops.mnv3.pack_pointwise_weight.default(weight, bias)


def _pointwise_packed_trusted(x, packed, out_channels, activation, residual, input_scale):
    """The packed CPU kernel for the fused modules (packed, activation valid by construction)."""
    return _op("pointwise_conv_bn_act_packed", "cpu")(x, packed, out_channels, activation, residual,
                                                      input_scale)


def global_avg_pool(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """(N, C, 1, 1) means of x over H and W, as ``F.adaptive_avg_pool2d(x, 1)`` (what a
    classifier head pools its features with); channels_last in, channels_last out."""
    _check_tensor(x, "x")
    _check_floating(x)
    if x.dim() != 4:
        raise ValueError(f"global_avg_pool: x must be 4-D (N, C, H, W), got {x.dim()}-D")
    chosen = _resolve_for("global_avg_pool", backend, x)
    if chosen == "reference":
        return reference.global_avg_pool(x)
    return _op("global_avg_pool", chosen)(x)


def hardswish(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Single-pass piecewise h-swish: 0 for x <= -3, x for x >= 3, x(x+3)/6 between."""
    _check_tensor(x, "x")
    _check_floating(x)
    chosen = _resolve_cached(backend, x, conv_like=False)
    if chosen == "reference":
        return reference.hardswish(x)
    return _op("hardswish", chosen)(x)


def hardsigmoid(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Single-pass piecewise h-sigmoid: relu6(x + 3) / 6."""
    _check_tensor(x, "x")
    _check_floating(x)
    chosen = _resolve_cached(backend, x, conv_like=False)
    if chosen == "reference":
        return reference.hardsigmoid(x)
    return _op("hardsigmoid", chosen)(x)


def _in_place(op: str, x: torch.Tensor, backend: str) -> torch.Tensor:
    _check_tensor(x, "x")
    _check_floating(x)
    if x.requires_grad and torch.is_grad_enabled():
        # Every backend alike (aten's in-place h-swish would record a graph, ours cannot).
        raise RuntimeError(
            f"{op}: x requires grad; the in-place op records no autograd history. Use "
            f"{op[:-1]}(x), or call it under torch.no_grad()")
    chosen = _resolve_cached(backend, x, conv_like=False)
    if chosen == "reference":
        return getattr(reference, op)(x)
    _op(op, chosen)(x)
    return x


def hardswish_(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """h-swish in place, as F.hardswish(x, inplace=True): overwrites x and returns it. Saves the
    output buffer (and its trip through memory) when x is not needed afterwards."""
    return _in_place("hardswish_", x, backend)


def hardsigmoid_(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """h-sigmoid in place, as F.hardsigmoid(x, inplace=True): overwrites x and returns it."""
    return _in_place("hardsigmoid_", x, backend)


# ----------------------------------------------------------------------------------------------
# Fake kernels (shapes and strides only) so torch.compile and torch.export trace the ops
# ----------------------------------------------------------------------------------------------
def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Same rule as csrc/common/checks.cpp: channels_last in, channels_last out; else NCHW."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _dwconv_out_hw(x, weight, stride, padding, dilation):
    out = []
    for i in range(2):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        out.append((x.shape[2 + i] + 2 * padding[i] - span) // stride[i] + 1)
    return out


def _fake_dwconv_bn_act(x, weight, bias, stride, padding, dilation, activation):
    oh, ow = _dwconv_out_hw(x, weight, stride, padding, dilation)
    return torch.empty(
        (x.shape[0], x.shape[1], oh, ow), dtype=x.dtype, device=x.device,
        memory_format=output_memory_format(x),
    )


def _fake_squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def _fake_pointwise(x, weight, bias, activation, residual, input_scale):
    return torch.empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), dtype=x.dtype,
                       device=x.device, memory_format=output_memory_format(x))


def _fake_dense(x, weight, bias, stride, padding, dilation, activation):
    oh, ow = _dwconv_out_hw(x, weight, stride, padding, dilation)
    return torch.empty((x.shape[0], weight.shape[0], oh, ow), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _fake_dense_packed(x, packed, out_channels, kernel_size, stride, padding, dilation, activation):
    out = []
    for i in range(2):
        span = dilation[i] * (kernel_size[i] - 1) + 1
        out.append((x.shape[2 + i] + 2 * padding[i] - span) // stride[i] + 1)
    return torch.empty((x.shape[0], out_channels, out[0], out[1]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _fake_pointwise_packed(x, packed, out_channels, activation, residual, input_scale):
    return torch.empty((x.shape[0], out_channels, x.shape[2], x.shape[3]), dtype=x.dtype,
                       device=x.device, memory_format=output_memory_format(x))


def _fake_block_out(x, dw_weight, stride, padding, dilation, out_channels):
    out = []
    for i in range(2):
        span = dilation[i] * (dw_weight.shape[2 + i] - 1) + 1
        out.append((x.shape[2 + i] + 2 * padding[i] - span) // stride[i] + 1)
    return torch.empty((x.shape[0], out_channels, out[0], out[1]), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _fake_block(x, ew, eb, eact, dw, db, stride, padding, dilation, dact, w1, b1, w2, b2, pw, pb, residual):
    return _fake_block_out(x, dw, stride, padding, dilation, pw.shape[0])


def _fake_block_packed(x, ep, ce, eact, dw, db, stride, padding, dilation, dact, w1, b1, w2, b2, pp, cout,
                       residual):
    return _fake_block_out(x, dw, stride, padding, dilation, cout)


def _non_overlapping_and_dense(x: torch.Tensor) -> bool:
    """Whether x's elements exactly fill a block of memory (any dimension order)."""
    expected = 1
    dims = sorted((x.stride(d), x.shape[d]) for d in range(x.dim()) if x.shape[d] != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _fake_elementwise(x):
    # The kernels keep x's strides when x is non-overlapping and dense, else write contiguous.
    if x.numel() == 0 or _non_overlapping_and_dense(x):
        return torch.empty_like(x)
    return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device)


# ----------------------------------------------------------------------------------------------
# Autograd of the Triton operators: backward in PyTorch ops (the forward kernels are the fused
# part). The C++ operators have the same formulas in csrc/autograd.cpp.
# ----------------------------------------------------------------------------------------------
def _dw_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, activation = inputs
    ctx.conv_args = (list(stride), list(padding), list(dilation), activation, bias is not None)
    ctx.save_for_backward(x, weight, bias, output if activation in _BACKWARD_FROM_OUTPUT else None)


# relu and relu6 take their gradient from the output (it is <= 0, >= 6 exactly where the
# pre-activation is); hardswish from the pre-activation, recomputed.
_BACKWARD_FROM_OUTPUT = ("relu", "relu6")


def _activation_backward(grad, activation, t):
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, t, 0)
    if activation == "relu6":
        return torch.ops.aten.hardtanh_backward(grad, t, 0, 6)
    if activation == "hardswish":
        return torch.ops.aten.hardswish_backward(grad, t)
    return grad


def _dw_backward(ctx, grad):
    x, weight, bias, out = ctx.saved_tensors
    stride, padding, dilation, activation, has_bias = ctx.conv_args
    if activation in _BACKWARD_FROM_OUTPUT:
        grad = _activation_backward(grad, activation, out)
    elif activation != "none":
        pre = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])
        grad = _activation_backward(grad, activation, pre)
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [x.shape[1]] if has_bias else None, stride, padding, dilation,
        False, [0, 0], x.shape[1], [need_x, need_w, need_b and has_bias],
    )
    return gx, gw, gb if has_bias else None, None, None, None, None


def _se_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _se_backward(ctx, grad):
    x, w1, b1, w2, b2 = ctx.saved_tensors
    pooled = x.float().mean(dim=(2, 3))
    hidden_pre = pooled @ w1.float().t() + b1.float()
    hidden = torch.relu(hidden_pre)
    gate_pre = hidden @ w2.float().t() + b2.float()
    gate = torch.nn.functional.hardsigmoid(gate_pre)
    g = grad.float()
    grad_x = g * gate[:, :, None, None]
    grad_gate = (g * x.float()).sum(dim=(2, 3))
    grad_gate_pre = torch.ops.aten.hardsigmoid_backward(grad_gate, gate_pre)
    grad_w2 = grad_gate_pre.t() @ hidden
    grad_b2 = grad_gate_pre.sum(0)
    grad_hidden_pre = torch.ops.aten.threshold_backward(grad_gate_pre @ w2.float(), hidden, 0)
    grad_w1 = grad_hidden_pre.t() @ pooled
    grad_b1 = grad_hidden_pre.sum(0)
    grad_pooled = grad_hidden_pre @ w1.float()
    hw = x.shape[2] * x.shape[3]
    grad_x = grad_x + (grad_pooled / hw)[:, :, None, None]
    return (grad_x.to(x.dtype), grad_w1.to(w1.dtype), grad_b1.to(b1.dtype),
            grad_w2.to(w2.dtype), grad_b2.to(b2.dtype))


def _elementwise_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _hardswish_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.aten.hardswish_backward(grad, x)


def _hardsigmoid_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.aten.hardsigmoid_backward(grad, x)


_AUTOGRAD = {
    "dwconv_bn_act": (_dw_backward, _dw_setup_context),
    "squeeze_excite": (_se_backward, _se_setup_context),
    "hardswish": (_hardswish_backward, _elementwise_setup_context),
    "hardsigmoid": (_hardsigmoid_backward, _elementwise_setup_context),
}
_FAKES = {
    "dwconv_bn_act": _fake_dwconv_bn_act,
    "squeeze_excite": _fake_squeeze_excite,
    "hardswish": _fake_elementwise,
    "hardsigmoid": _fake_elementwise,
    "hardswish_": lambda x: None,     # writes x; no output
    "hardsigmoid_": lambda x: None,
    "pointwise_conv_bn_act": _fake_pointwise,
    "pointwise_conv_bn_act_packed": _fake_pointwise_packed,
    "dense_conv_bn_act": _fake_dense,
    "dense_conv_bn_act_packed": _fake_dense_packed,
    "squeeze_excite_gate": lambda x, w1, b1, w2, b2: x.new_empty((x.shape[0], x.shape[1])),
    "inverted_residual": _fake_block,
    "inverted_residual_packed": _fake_block_packed,
    "global_avg_pool": lambda x: x.new_empty((x.shape[0], x.shape[1], 1, 1)).contiguous(
        memory_format=output_memory_format(x)),
}


# ----------------------------------------------------------------------------------------------
# Autocast kernels of the conv-like ops (the rule is in the module docstring)
# ----------------------------------------------------------------------------------------------
_AUTOCAST_OPS = ("dwconv_bn_act", "squeeze_excite")
# CPU-only ops of the mnv3 namespace (no Triton twins).
_AUTOCAST_CPP_OPS = ("pointwise_conv_bn_act", "pointwise_conv_bn_act_packed", "dense_conv_bn_act",
                     "dense_conv_bn_act_packed", "squeeze_excite_gate", "inverted_residual",
                     "inverted_residual_packed")
_LIBRARIES: dict = {}  # namespace -> torch.library.Library; the registrations live as long as it


def _register_autocast(qualname: str, device_type: str) -> None:
    """An Autocast<device> kernel for `qualname`: cast as autocast casts conv ops, then run the
    op with autocast excluded. torch.library.register_autocast takes one fixed dtype; the CUDA
    rule needs the autocast dtype of the moment, so this mirrors it with that one change."""
    namespace, name = qualname.split("::")
    op = getattr(getattr(torch.ops, namespace), name).default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def run(*args):
        args = _autocast_cast(args, _autocast_dtype(device_type))  # before the guard turns it off
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    # The Python dispatcher (torch.compile's tracing) looks here; eager calls at the Library's.
    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key, None)
    op.py_impl(key)(run)
    library = _LIBRARIES.setdefault(namespace, torch.library.Library(namespace, "IMPL"))
    library.impl(name, lambda _keys, *args: run(*args), key_name, with_keyset=True)


if _extension.LOADED:
    # The C++ operators carry their autograd in C++ (csrc/autograd.cpp); they need fake kernels.
    for _name, _fake in _FAKES.items():
        torch.library.register_fake(f"mnv3::{_name}", _fake)
if _triton.AVAILABLE:
    # triton_op derives its fake kernel by running the Python wrapper on fake tensors.
    for _name, (_backward, _setup_context) in _AUTOGRAD.items():
        torch.library.register_autograd(f"mnv3_triton::{_name}", _backward, setup_context=_setup_context)
for _namespace, _present in (("mnv3", _extension.LOADED), ("mnv3_triton", _triton.AVAILABLE)):
    for _name in (_AUTOCAST_OPS + (_AUTOCAST_CPP_OPS if _namespace == "mnv3" else ())) if _present else ():
        for _device_type in ("cpu", "cuda"):
            _register_autocast(f"{_namespace}::{_name}", _device_type)
