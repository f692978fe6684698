"""Triton backend: registers torch.ops.mnv3_triton.* when Triton can run here.

Importing this package never requires Triton. AVAILABLE says whether the ops are registered;
UNAVAILABLE_REASON says why not. Triton runs on CUDA tensors, or on CPU tensors when
TRITON_INTERPRET=1 is set (that is how machines without a GPU test it). The variable is read
once, at import: set it before importing mnv3_kernels.

Besides the four public ops (same schemas as csrc/ops.cpp), the package offers the SE fusion
pieces: dwconv_bn_act_pool (depthwise output plus its channel sums, taken in the conv's
epilogue) and squeeze_excite_from_sums (SE without its own pooling pass).
"""
import os

AVAILABLE = False
UNAVAILABLE_REASON = ""

try:
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    UNAVAILABLE_REASON = f"Triton is not installed ({exc})"
else:
    import torch

    if os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.cuda.is_available():
        try:
            from . import _ops
            _ops.register()
        except Exception as exc:  # pragma: no cover - an incompatible triton/torch pair
            UNAVAILABLE_REASON = f"registering the Triton ops failed: {type(exc).__name__}: {exc}"
        else:
            AVAILABLE = True
    else:
        UNAVAILABLE_REASON = "no CUDA device is available (set TRITON_INTERPRET=1 to run Triton on CPU tensors)"


def dwconv_bn_act_pool(x, weight, bias=None, stride=1, padding=0, dilation=1, activation="hardswish"):
    """(out, channel_sums): the fused depthwise conv + BN + activation and, from its epilogue,
    the fp32 sums of the activated output over H*W, shape (N, C) — SE's pooling for free."""
    _require()
    return torch.ops.mnv3_triton.dwconv_bn_act_pool(
        x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), activation)


def squeeze_excite_from_sums(x, channel_sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
    """Squeeze-excite of x given channel_sums = x.sum((2, 3)) in fp32 (from dwconv_bn_act_pool)."""
    _require()
    return torch.ops.mnv3_triton.squeeze_excite_from_sums(x, channel_sums, fc1_weight, fc1_bias, fc2_weight, fc2_bias)


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _require():
    if not AVAILABLE:
        raise RuntimeError(f"the Triton backend is not available: {UNAVAILABLE_REASON}")


__all__ = ["AVAILABLE", "UNAVAILABLE_REASON", "dwconv_bn_act_pool", "squeeze_excite_from_sums"]
