"""Python wrappers of the Triton kernels, registered as torch.ops.mnv3_triton.*.

The wrappers only allocate outputs with torch.empty* and compute grids from shapes, so they
also run on FakeTensors: that is how triton_op derives the fake kernels torch.compile uses.

Registration: on a GPU through torch.library.triton_op (torch.compile sees the kernels and can
optimize them). Under TRITON_INTERPRET=1 the kernels are plain Python functions that cannot
run on fake or functional tensors, so there the same wrappers are registered with
torch.library.custom_op (opaque to the compiler), with a fake kernel that skips the launches.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import List, Optional, Tuple

import torch
import triton
from torch.library import wrap_triton

from . import kernels as K

NAMESPACE = "mnv3_triton"
SCHEMAS = {
    # Same schemas as csrc/ops.cpp (namespace mnv3).
    "dwconv_bn_act": "(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
                     "int[2] dilation, str activation) -> Tensor",
    "squeeze_excite": "(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, "
                      "Tensor fc2_bias) -> Tensor",
    "hardswish": "(Tensor x) -> Tensor",
    "hardsigmoid": "(Tensor x) -> Tensor",
    "hardswish_": "(Tensor(a!) x) -> ()",
    "hardsigmoid_": "(Tensor(a!) x) -> ()",
    # Triton-only: the depthwise output plus its per-channel sums over H*W (fp32, (N, C)).
    "dwconv_bn_act_pool": "(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
                          "int[2] dilation, str activation) -> (Tensor, Tensor)",
    # Triton-only: squeeze-excite given the channel sums of x (skips the pooling pass).
    "squeeze_excite_from_sums": "(Tensor x, Tensor channel_sums, Tensor fc1_weight, Tensor fc1_bias, "
                                "Tensor fc2_weight, Tensor fc2_bias) -> Tensor",
}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1

# True while a fake kernel runs under the interpreter: shapes only, no launches.
_SKIP_LAUNCH = False


# ----------------------------------------------------------------------------------------------
# Checks (errors name the argument, as mnv3_kernels.ops does)
# ----------------------------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_x(x: torch.Tensor, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    wanted = "cpu" if K.INTERPRET else "cuda"
    if x.device.type != wanted:
        how = " with TRITON_INTERPRET=1" if K.INTERPRET else ""
        raise ValueError(f"{op}: the Triton backend{how} needs {wanted.upper()} tensors, got x on {x.device}")
    if x.dtype not in _DTYPES:
        names = ", ".join(_dtype_name(d) for d in _DTYPES)
        raise TypeError(f"{op}: x must have dtype {names}; got {_dtype_name(x.dtype)}")


def _check_like(t: torch.Tensor, name: str, x: torch.Tensor, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if t.dtype != x.dtype:
        raise TypeError(f"{op}: {name} has dtype {_dtype_name(t.dtype)} but x has dtype {_dtype_name(x.dtype)}")


def _pair(value, name: str, minimum: int, op: str) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{op}: {name} must have 2 elements, got {value!r}")
    a, b = (int(v) for v in value)
    if a < minimum or b < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {(a, b)}")
    return a, b


def _check_dwconv(x, weight, bias, stride, padding, dilation, activation, op):
    _check_x(x, op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    _check_like(weight, "weight", x, op)
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"{op}: weight must be (C, 1, kh, kw) for a depthwise conv, got shape {tuple(weight.shape)}")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: weight has {weight.shape[0]} channels but x has {x.shape[1]}")
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"{op}: weight must have a non-empty kernel, got shape {tuple(weight.shape)}")
    if bias is not None:
        _check_like(bias, "bias", x, op)
        if bias.dim() != 1 or bias.shape[0] != x.shape[1]:
            raise ValueError(f"{op}: bias must be (C,) = ({x.shape[1]},), got shape {tuple(bias.shape)}")
    if not isinstance(activation, str) or activation not in K.ACT_CODES:
        raise ValueError(f"{op}: activation must be one of {tuple(K.ACT_CODES)}, got {activation!r}")
    stride = _pair(stride, "stride", 1, op)
    padding = _pair(padding, "padding", 0, op)
    dilation = _pair(dilation, "dilation", 1, op)
    out_hw = []
    for i, dim in enumerate(("height", "width")):
        span = dilation[i] * (weight.shape[2 + i] - 1) + 1
        padded = x.shape[2 + i] + 2 * padding[i]
        if padded < span:
            raise ValueError(f"{op}: padded input {dim} ({padded}) is smaller than the dilated kernel {dim} ({span})")
        out_hw.append((padded - span) // stride[i] + 1)
    return stride, padding, dilation, out_hw


def _fc_strides(w: torch.Tensor, name: str, shape: Tuple[int, int], op: str) -> Tuple[int, int]:
    """Strides of an (out, in) or (out, in, 1, 1) weight, checked against the expected shape."""
    ok_4d = w.dim() == 4 and w.shape[2] == 1 and w.shape[3] == 1
    if not (w.dim() == 2 or ok_4d) or (w.shape[0], w.shape[1]) != shape:
        raise ValueError(f"{op}: {name} must be {shape} (or {shape + (1, 1)}), got shape {tuple(w.shape)}")
    return w.stride(0), w.stride(1)


def _check_se_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op):
    C = x.shape[1]
    for t, name in ((fc1_weight, "fc1_weight"), (fc1_bias, "fc1_bias"),
                    (fc2_weight, "fc2_weight"), (fc2_bias, "fc2_bias")):
        _check_like(t, name, x, op)
    if fc1_weight.dim() not in (2, 4) or fc1_weight.shape[0] < 1:
        raise ValueError(f"{op}: fc1_weight must be (R, C) with R >= 1, got shape {tuple(fc1_weight.shape)}")
    R = fc1_weight.shape[0]
    s1 = _fc_strides(fc1_weight, "fc1_weight", (R, C), op)
    s2 = _fc_strides(fc2_weight, "fc2_weight", (C, R), op)
    for b, name, n in ((fc1_bias, "fc1_bias", R), (fc2_bias, "fc2_bias", C)):
        if b.dim() != 1 or b.shape[0] != n:
            raise ValueError(f"{op}: {name} must be ({n},), got shape {tuple(b.shape)}")
    return R, s1, s2


# ----------------------------------------------------------------------------------------------
# Layout helpers
# ----------------------------------------------------------------------------------------------
def _output_memory_format(x: torch.Tensor) -> torch.memory_format:
    # The rule of mnv3_kernels.ops.output_memory_format (not imported: ops imports this package).
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _span(t: torch.Tensor) -> int:
    """Largest element offset inside one sample (dims 1..3); decides int32 vs int64 indexing."""
    return sum((t.shape[d] - 1) * abs(t.stride(d)) for d in range(1, t.dim()) if t.shape[d] > 0)


def _pixel_strides(out: torch.Tensor) -> Tuple[int, int, int]:
    """(n, c, pixel) strides of a dense NCHW or NHWC output, whose pixels are flat (h*W + w)."""
    return out.stride(0), out.stride(1), out.stride(3)


def _device_guard(device: torch.device):
    """Triton launches on the current CUDA device and its current stream: make that the tensors'
    device (the CUDA backend's CUDAGuard), so cuda:1 inputs work whatever device is current."""
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()  # already current (the usual case): nothing to switch


def _launch(device: torch.device, kernel, grid, *args, **kwargs) -> None:
    if _SKIP_LAUNCH:
        return
    with _device_guard(device):
        wrap_triton(kernel)[grid](*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# Implementations
# ----------------------------------------------------------------------------------------------
def _dwconv(x, weight, bias, stride, padding, dilation, activation, pool: bool, op: str):
    stride, padding, dilation, (OH, OW) = _check_dwconv(x, weight, bias, stride, padding, dilation, activation, op)
    N, C, H, W = x.shape
    # Values that become constexprs (or size them) must be concrete ints/bools even when the
    # wrapper runs on symbolic shapes; int()/bool() specializes on them.
    KH, KW = int(weight.shape[2]), int(weight.shape[3])
    fmt = _output_memory_format(x)
    channels_last = bool(fmt == torch.channels_last)
    out = torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device, memory_format=fmt)
    OHW = OH * OW
    block_p = K.POOL_BLOCK_P_NHWC if channels_last else K.POOL_BLOCK_P_NCHW
    rows = triton.cdiv(OHW, block_p)
    # Every (sample, pixel block, channel) row is written by exactly one program.
    sums = torch.empty((N, rows, C), dtype=torch.float32, device=x.device) if pool else None
    if out.numel() == 0:
        return (out, sums.sum(1)) if pool else out

    static = KH == KW and KH in (3, 5) and stride[0] == stride[1] and stride[0] in (1, 2)
    idx64 = bool(K.FORCE_IDX64 or max(_span(x), _span(out)) > _INT32_LIMIT)
    son, soc, sop = _pixel_strides(out)
    if pool:
        kernel = K.dwconv_pool_nhwc if channels_last else K.dwconv_pool_nchw
    else:
        kernel = K.dwconv_nhwc if channels_last else K.dwconv_nchw

    def grid(meta):
        return (N * triton.cdiv(OHW, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]))

    b = bias if bias is not None else weight  # never read when HAS_BIAS is False
    _launch(
        x.device, kernel, grid,
        x, weight, b, out, sums if pool else out,
        C, H, W, OW, OHW, rows, K.tune_bucket(N), K.tune_bucket(OHW),
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        weight.stride(0), weight.stride(2), weight.stride(3), b.stride(0),
        son, soc, sop,
        padding[0], padding[1], dilation[0], dilation[1],
        KH, KW, stride[0], stride[1],
        KH=KH if static else 1, KW=KW if static else 1,
        SH=stride[0] if static else 1, SW=stride[1] if static else 1,
        STATIC=static, HAS_BIAS=bias is not None, ACT=K.ACT_CODES[activation],
        CHANNELS_LAST=channels_last, IDX64=idx64, POOL=pool,
    )
    if pool:
        return out, sums.sum(1)
    return out


def _se_gate(x, sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op):
    """The (N, C) fp32 gate from per-channel partial sums laid out (N, split, C)."""
    N, C, H, W = x.shape
    R, (s1r, s1c), (s2c, s2r) = _check_se_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op)
    R, split = int(R), int(sums.shape[1])
    gate = torch.empty((N, C), dtype=torch.float32, device=x.device)
    if K.INTERPRET:
        # One program per sample, whole matrices per step: the interpreter pays per op.
        block_r = min(triton.next_power_of_2(R), 256)
        block_co = block_k = min(triton.next_power_of_2(int(C)), 1024)
    else:
        # Keep the [BLOCK_R x BLOCK_K] weight tile at 4K fp32 (32 registers/thread, 4 warps).
        block_r = min(triton.next_power_of_2(R), 128)
        block_k = max(16, min(128, 4096 // block_r))
        block_co = 64
    _launch(
        x.device, K.se_gate, (N, triton.cdiv(C, block_co)),
        sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias, gate,
        C, R, split, 1.0 / (H * W),
        s1r, s1c, fc1_bias.stride(0), s2c, s2r, fc2_bias.stride(0),
        # At least 2 partial-sum rows (masked past split): no size-1 tile dimension, as elsewhere.
        BLOCK_S=max(2, triton.next_power_of_2(split)), BLOCK_K=block_k, BLOCK_R=block_r, BLOCK_CO=block_co,
        num_warps=4,
    )
    return gate


def _se_scale(x, gate):
    N, C, H, W = x.shape
    fmt = _output_memory_format(x)
    channels_last = bool(fmt == torch.channels_last)
    out = torch.empty((N, C, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
    HW = H * W
    son, soc, sop = _pixel_strides(out)
    x_flat = bool(x.stride(2) == W * x.stride(3) or H == 1)
    kernel = K.se_scale_nhwc if channels_last else K.se_scale_nchw

    def grid(meta):
        return (N * triton.cdiv(HW, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]))

    _launch(
        x.device, kernel, grid,
        x, gate, out, C, HW, W, K.tune_bucket(N), K.tune_bucket(HW),
        x.stride(0), x.stride(1), x.stride(2), x.stride(3), son, soc, sop,
        X_FLAT=x_flat, CHANNELS_LAST=channels_last,
        IDX64=bool(K.FORCE_IDX64 or max(_span(x), _span(out)) > _INT32_LIMIT),
    )
    return out


def _empty_se_out(x):
    return torch.empty(tuple(x.shape), dtype=x.dtype, device=x.device, memory_format=_output_memory_format(x))


def _squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    op = "squeeze_excite"
    _check_x(x, op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    _check_se_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op)
    if x.numel() == 0:
        return _empty_se_out(x)
    N, C, H, W = x.shape
    HW = H * W
    # Enough pixel splits to spread a big plane over the SMs, few enough to keep the MLP's
    # reduction over splits one small tile.
    split = max(1, min(64, triton.cdiv(int(HW), 512)))
    chunk = triton.cdiv(HW, split)
    channels_last = bool(_output_memory_format(x) == torch.channels_last)
    if K.INTERPRET:
        block_p, block_c, warps = 128, 128, 4  # few, large programs: the interpreter pays per program
    elif channels_last:
        block_p, block_c, warps = 32, 64, 4
    else:
        block_p, block_c, warps = 256, 4, 4
    parts = torch.empty((N, split, C), dtype=torch.float32, device=x.device)
    _launch(
        x.device, K.se_sum, (N * split, triton.cdiv(C, block_c)),
        x, parts, C, HW, W, chunk, split,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        X_FLAT=bool(x.stride(2) == W * x.stride(3) or H == 1), CHANNELS_LAST=channels_last,
        IDX64=bool(K.FORCE_IDX64 or _span(x) > _INT32_LIMIT), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )
    gate = _se_gate(x, parts, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op)
    return _se_scale(x, gate)


def _squeeze_excite_from_sums(x, channel_sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    op = "squeeze_excite_from_sums"
    _check_x(x, op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not isinstance(channel_sums, torch.Tensor) or channel_sums.device != x.device:
        raise ValueError(f"{op}: channel_sums must be a tensor on {x.device}")
    if channel_sums.dtype != torch.float32 or tuple(channel_sums.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(f"{op}: channel_sums must be float32 of shape (N, C) = {tuple(x.shape[:2])}, "
                         f"got {_dtype_name(channel_sums.dtype)} {tuple(channel_sums.shape)}")
    _check_se_params(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op)
    if x.numel() == 0:
        return _empty_se_out(x)
    sums = channel_sums.contiguous().view(x.shape[0], 1, x.shape[1])
    gate = _se_gate(x, sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias, op)
    return _se_scale(x, gate)


def _elementwise(x, act: int, op: str):
    _check_x(x, op)
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    src = x
    if out.stride() != x.stride():
        # empty_like keeps the strides of a dense input; any other input is gathered once into
        # the output's layout so the kernel walks one flat buffer.
        src = torch.empty_like(x)
        src.copy_(x)
    n = x.numel()
    _launch(x.device, K.elementwise, lambda meta: (triton.cdiv(n, meta["BLOCK"]),), src, out, n, K.tune_bucket(n),
            ACT=act)
    return out


def _elementwise_inplace(x, act: int, op: str) -> None:
    _check_x(x, op)
    if x.numel() == 0:
        return
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        # One flat buffer, read and written by the same program at the same offsets; a kernel
        # that is not autotuned (see kernels.elementwise_inplace).
        n = x.numel()
        meta = K.ELEMENTWISE_INPLACE_META
        _launch(x.device, K.elementwise_inplace, (triton.cdiv(n, meta["BLOCK"]),), x, x, n, K.tune_bucket(n),
                ACT=act, **meta)
    elif not _SKIP_LAUNCH:
        # Any other view: computed packed, then written back (copy_ refuses overlapping views).
        x.copy_(_elementwise(x, act, op))


# ----------------------------------------------------------------------------------------------
# Operator entry points (annotations matter: older torch infers the schema from them)
# ----------------------------------------------------------------------------------------------
def dwconv_bn_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                  padding: List[int], dilation: List[int], activation: str) -> torch.Tensor:
    return _dwconv(x, weight, bias, stride, padding, dilation, activation, False, "dwconv_bn_act")


def dwconv_bn_act_pool(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                       padding: List[int], dilation: List[int], activation: str) -> Tuple[torch.Tensor, torch.Tensor]:
    return _dwconv(x, weight, bias, stride, padding, dilation, activation, True, "dwconv_bn_act_pool")


def squeeze_excite(x: torch.Tensor, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
                   fc2_weight: torch.Tensor, fc2_bias: torch.Tensor) -> torch.Tensor:
    return _squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias)


def squeeze_excite_from_sums(x: torch.Tensor, channel_sums: torch.Tensor, fc1_weight: torch.Tensor,
                             fc1_bias: torch.Tensor, fc2_weight: torch.Tensor,
                             fc2_bias: torch.Tensor) -> torch.Tensor:
    return _squeeze_excite_from_sums(x, channel_sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias)


def hardswish(x: torch.Tensor) -> torch.Tensor:
    return _elementwise(x, K.ACT_HARDSWISH, "hardswish")


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return _elementwise(x, K.ACT_HARDSIGMOID, "hardsigmoid")


def hardswish_(x: torch.Tensor) -> None:
    _elementwise_inplace(x, K.ACT_HARDSWISH, "hardswish_")


def hardsigmoid_(x: torch.Tensor) -> None:
    _elementwise_inplace(x, K.ACT_HARDSIGMOID, "hardsigmoid_")


_IMPLS = {
    "dwconv_bn_act": dwconv_bn_act,
    "squeeze_excite": squeeze_excite,
    "hardswish": hardswish,
    "hardsigmoid": hardsigmoid,
    "hardswish_": hardswish_,
    "hardsigmoid_": hardsigmoid_,
    "dwconv_bn_act_pool": dwconv_bn_act_pool,
    "squeeze_excite_from_sums": squeeze_excite_from_sums,
}
_MUTATES = {"hardswish_": ("x",), "hardsigmoid_": ("x",)}  # the arguments an op writes


def _fake_of(fn):
    def fake(*args, **kwargs):
        global _SKIP_LAUNCH
        prev, _SKIP_LAUNCH = _SKIP_LAUNCH, True
        try:
            return fn(*args, **kwargs)
        finally:
            _SKIP_LAUNCH = prev
    return fake


def register() -> None:
    """Register every op in the mnv3_triton namespace (called once, at package import)."""
    for name, fn in _IMPLS.items():
        qualname = f"{NAMESPACE}::{name}"
        mutates = _MUTATES.get(name, ())
        if K.INTERPRET:
            op = torch.library.custom_op(qualname, fn, mutates_args=mutates, schema=SCHEMAS[name])
            op.register_fake(_fake_of(fn))
        elif "schema" in inspect.signature(torch.library.triton_op).parameters:
            torch.library.triton_op(qualname, fn, mutates_args=mutates, schema=SCHEMAS[name])
        else:
            torch.library.triton_op(qualname, fn, mutates_args=mutates)
