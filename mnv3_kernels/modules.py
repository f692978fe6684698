"""Drop-in fused modules.

The building blocks, all generic (built from plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
activation modules) and all ``state_dict``-preserving: they adopt the original Parameter and
buffer objects under the original names, so a converted model has the same keys and values,
``load_state_dict`` keeps working, and an optimizer built before the conversion still updates
the tensors the fused path reads.

``FusedDepthwiseConvBNAct``
    An ``nn.Sequential`` of (depthwise conv, BatchNorm, optional activation) -- a drop-in for
    ``nn.Sequential(conv, bn, act)`` and for torchvision's ``Conv2dNormActivation``. Children
    keep the names "0", "1", "2".

``DepthwiseConvBNActHead`` / ``PointwiseConvBNActHead`` / ``DenseConvBNActHead`` + ``BatchNormActTail``
    For blocks that hold the conv and the BN as *siblings* and call them one after the other
    (``x = self.conv_dw(x); x = self.bn(x)``, or a flat ``nn.Sequential(conv, bn, act, ...)``):
    the head replaces the conv, the tail replaces the BN (and an ``ActivationSlot`` the
    activation of a flat Sequential). ``fused_conv_bn_act_pair`` builds both. When the BN is in
    eval mode with running statistics, the head computes conv+BN+activation in one fused call
    and the tail passes its input through; otherwise the head is a plain conv and the tail is
    BN (+ dropout) + activation, exactly as the original. Both decide from the BN's state
    alone, so they agree. A conv with no BN pairs with its activation module instead
    (``ActivationTail``; the state that decides: its training flag).

``FusedSqueezeExcite``
    ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1-conv FC layers, as one fused call.

``FusedInvertedResidual``
    A whole inverted-residual block whose layers are fused modules (Sequential or head/tail
    forms), run as one fused call in eval mode on the CPU.

``FusedSequential``
    An ``nn.Sequential`` of such layers (a feature extractor: stem, blocks, head conv; or a
    classifier of ``FusedLinear`` layers with activations and dropout between them) that, in
    eval mode without autograd, runs all of them as one C++ call (a ``LayerChain``, checked per
    call against everything the layers' own checks read). ``models.FusedMobileNetV3`` does the
    same for a whole torchvision MobileNetV3 (features, pool, classifier).

``FusedLinear`` / ``FusedGlobalAvgPool``
    ``nn.Linear`` and ``nn.AdaptiveAvgPool2d(1)`` on the CPU kernels.

``Hardswish`` / ``Hardsigmoid``
    Drop-ins for ``nn.Hardswish`` / ``nn.Hardsigmoid`` on the single-pass kernels, in place when
    ``inplace=True`` (as the torch modules).

Fusion rule (depthwise): BN folds into the conv when the BN is in eval mode and has running
statistics (``w' = w*g/sqrt(var+eps)``, ``b' = beta + (b - mean)*g/sqrt(var+eps)``). In
training mode the original modules run unfused, so outputs, gradients and running-statistic
updates are exactly those of the original model.

Folded weights are cached; the cache key holds each source tensor together with its
``data_ptr`` and ``_version`` counter. Seen (the fold is recomputed on the next call): in-place
ops on the parameters and buffers (``p.mul_()``, ``p.copy_()`` under ``torch.no_grad()``),
optimizer steps, ``load_state_dict``, ``.to()`` / ``.half()`` / moving devices, and replacing a
Parameter or buffer. *Not* seen: writes through ``.data`` (``p.data.mul_()``,
``p.data.copy_()``, ``p.data[...] = ...``), which bump no version counter and keep the storage
-- call ``mnv3_kernels.refresh(model)`` after them. (No cheap check exists: ``p.data`` is a new
tensor with its own version counter on every access, and a content check -- one sum per source
tensor, which can still miss a write -- measured 14 us per module against 1 us for the
version/pointer check and 29-44 us for the fold itself, 1 thread.) The fold is computed afresh (and not cached) while gradients flow to the
parameters, and under ``torch.compile``, where it becomes part of the traced graph -- except in
a chain's owner (``FusedSequential``, ``FusedMobileNetV3``) in eval mode without autograd, which a
compiled graph calls as one operator that runs its cached chain (``compiled_chain_call``).

Autocast: under ``torch.autocast`` an eval-mode module still runs its fused op, which casts like
PyTorch's conv ops on CUDA (inputs and folded weights to the autocast dtype) and computes in
float32 on CPU, whose kernels are float32 only (see ``mnv3_kernels.ops``).

Which path ran: every call of a fused module is counted by (module class, path, detail) --
``"fused"`` with the backend, ``"reference"`` (the folded math in plain PyTorch ops) with why,
or ``"unfused"`` (the original modules) with why -- and ``mnv3_kernels.path_stats()`` returns
the counts. Calls traced by ``torch.compile`` are not counted.

New fused modules derive from ``FusedModule``: it holds the backend, the derived-data cache that
``refresh`` drops and the path counting.
"""
from __future__ import annotations

import weakref
from collections import Counter, OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _nn_module
from torch.nn.modules.batchnorm import _BatchNorm

from . import _extension, ops
from .reference import fold_bn

__all__ = [
    "FusedModule",
    "FusedLinear",
    "refresh",
    "path_stats",
    "FusedDepthwiseConvBNAct",
    "DepthwiseConvBNActHead",
    "PointwiseConvBNActHead",
    "DenseConvBNActHead",
    "BatchNormActTail",
    "ActivationTail",
    "ActivationSlot",
    "FusedSqueezeExcite",
    "FusedPointwiseConvBNAct",
    "FusedConvBNAct",
    "FusedInvertedResidual",
    "FusedSequential",
    "FusedGlobalAvgPool",
    "Hardswish",
    "Hardsigmoid",
    "fused_conv_bn_act_pair",
    "head_class",
    "check_backend",
    "activation_name",
    "depthwise_unsupported_reason",
    "is_frozen_batch_norm",
    "squeeze_excite_unsupported_reason",
    "pointwise_unsupported_reason",
]

_ACTIVATION_TYPES = ((nn.ReLU, "relu"), (nn.Hardswish, "hardswish"), (nn.ReLU6, "relu6"),
                     (nn.Identity, "none"))
# What a refused activation is told it is not.
_ACTIVATIONS_TEXT = "ReLU, ReLU6, Hardtanh(0, 6), Hardswish or Identity"


# ----------------------------------------------------------------------------------------------
# Checks shared with convert.py
# ----------------------------------------------------------------------------------------------
def check_backend(backend) -> str:
    """Validate a backend name without a tensor at hand.

    ValueError for an unknown name (listing the valid ones); RuntimeError for an explicit
    backend that this machine cannot run. "auto" and "reference" are always accepted.
    """
    if not isinstance(backend, str) or backend not in ops.BACKENDS:
        raise ValueError(f"backend must be one of {ops.BACKENDS}, got {backend!r}")
    if backend not in ("auto", "reference") and backend not in ops.backends():
        raise RuntimeError(
            f"backend {backend!r} is not available: {ops._unavailable_reason(backend)} "
            f"(available: {ops.backends()})"
        )
    return backend


def activation_name(act: Optional[nn.Module]) -> Optional[str]:
    """The fused-kernel name of an activation module ("none", "relu", "hardswish", "relu6"), or
    None.

    Exact types only: a subclass may compute something else. ``nn.Hardtanh(0, 6)`` is "relu6":
    ``F.relu6`` is that very function (``nn.ReLU6`` is a ``Hardtanh(0, 6)``).
    """
    if act is None:
        return "none"
    for cls, name in _ACTIVATION_TYPES:
        if type(act) is cls:
            return name
    if type(act) is nn.Hardtanh and act.min_val == 0.0 and act.max_val == 6.0:
        return "relu6"
    return None


def _describe(act: nn.Module) -> str:
    """An activation module as a refusal names it (a Hardtanh with its bounds)."""
    if isinstance(act, nn.Hardtanh) and type(act) is not nn.ReLU6:
        return f"{type(act).__name__}({act.min_val:g}, {act.max_val:g})"
    return type(act).__name__


def _plain_conv2d(conv) -> bool:
    # A subclass that overrides forward (e.g. run-time 'same' padding) computes something else.
    return (
        isinstance(conv, nn.Conv2d)
        and type(conv).forward is nn.Conv2d.forward
        and type(conv)._conv_forward is nn.Conv2d._conv_forward
    )


def _static_padding(conv: nn.Conv2d) -> Optional[Tuple[int, int]]:
    """Symmetric zero padding equivalent to conv.padding, or None if there is none."""
    pad = conv.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        if pad == "same" and all(s == 1 for s in conv.stride):
            spans = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            if all(s % 2 == 0 for s in spans):
                return (spans[0] // 2, spans[1] // 2)
        return None
    return (int(pad[0]), int(pad[1]))


_FROZEN_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batch_norm(bn) -> bool:
    """A batch norm with fixed statistics and affine transform, held as buffers ``weight``,
    ``bias``, ``running_mean``, ``running_var`` plus a float ``eps`` (torchvision's
    ``FrozenBatchNorm2d``, which detection backbones use). It computes
    ``(x - mean) / sqrt(var + eps) * weight + bias`` in every mode, so it always folds.
    The caller vouches that the module computes exactly that (convert() checks the type)."""
    return (isinstance(bn, nn.Module) and not isinstance(bn, _BatchNorm) and not bn._parameters
            and all(isinstance(bn._buffers.get(n), torch.Tensor) and bn._buffers[n].dim() == 1
                    for n in _FROZEN_BN_TENSORS)
            and isinstance(getattr(bn, "eps", None), float))


def depthwise_unsupported_reason(conv, bn, act=None) -> Optional[str]:
    """Why (conv -> bn -> act) cannot be served exactly by the fused depthwise op; None if it can.

    `bn` must be an ``nn.BatchNorm2d`` (its normalization is taken to be standard BN) or a frozen
    batch norm (``is_frozen_batch_norm``); `act` is None, ``nn.Identity``, ``nn.ReLU``,
    ``nn.ReLU6`` (or ``nn.Hardtanh(0, 6)``) or ``nn.Hardswish``.
    """
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if not _plain_conv2d(conv):
        return f"{type(conv).__name__} overrides nn.Conv2d's forward (e.g. padding computed at run time)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only zero padding is fused)"
    if _static_padding(conv) is None:
        return f"padding={conv.padding!r} is not a symmetric static padding"
    if not (conv.groups == conv.in_channels == conv.out_channels):
        return (f"not depthwise: groups={conv.groups}, in_channels={conv.in_channels}, "
                f"out_channels={conv.out_channels}")
    return _norm_act_reason(conv, bn, act, frozen_ok=True)


def bn_forward_reason(bn) -> Optional[str]:
    """Why a BatchNorm2d subclass cannot be folded like BatchNorm2d (it overrides forward)."""
    if type(bn).forward is not nn.BatchNorm2d.forward:
        return f"{type(bn).__name__} overrides BatchNorm2d's forward"
    return None


def _norm_act_reason(conv, bn, act, frozen_ok: bool) -> Optional[str]:
    """The BN and activation rules every fused conv shares. `bn` None: no normalization (the
    conv's own weight and bias, then the activation)."""
    if bn is None:
        pass
    elif is_frozen_batch_norm(bn):
        if not frozen_ok:
            return f"{type(bn).__name__} is folded into depthwise convs only"
        if any(bn._buffers[n].numel() != conv.out_channels for n in _FROZEN_BN_TENSORS):
            return f"{type(bn).__name__} does not have {conv.out_channels} features (conv's channels)"
    elif not isinstance(bn, nn.BatchNorm2d):
        return f"{type(bn).__name__} is not an nn.BatchNorm2d"
    elif bn.num_features != conv.out_channels:
        return f"BatchNorm has {bn.num_features} features, conv has {conv.out_channels} channels"
    elif bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    if activation_name(act) is None:
        return f"activation {_describe(act)} is not {_ACTIVATIONS_TEXT}"
    return None


def pointwise_unsupported_reason(conv, bn, act=None) -> Optional[str]:
    """Why (1x1 conv -> bn -> act) cannot be served exactly by the fused pointwise op; None if it
    can. Same rules as ``depthwise_unsupported_reason`` for the BN and the activation."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if not _plain_conv2d(conv):
        return f"{type(conv).__name__} overrides nn.Conv2d's forward (e.g. padding computed at run time)"
    if tuple(conv.kernel_size) != (1, 1) or conv.groups != 1:
        return f"not a pointwise conv: kernel {tuple(conv.kernel_size)}, groups={conv.groups}"
    if tuple(conv.stride) != (1, 1):
        return f"stride {tuple(conv.stride)} (only stride 1 is fused)"
    if _static_padding(conv) != (0, 0):
        return f"padding={conv.padding!r} (only no padding is fused)"
    return _norm_act_reason(conv, bn, act, frozen_ok=False)


def _plain_fc(fc, name: str) -> Optional[str]:
    if not _plain_conv2d(fc):
        return f"{name} ({type(fc).__name__}) is not a plain nn.Conv2d"
    if tuple(fc.kernel_size) != (1, 1) or tuple(fc.stride) != (1, 1) or fc.groups != 1:
        return f"{name} is not a 1x1, stride-1, ungrouped conv"
    if _static_padding(fc) != (0, 0):
        return f"{name} has padding {fc.padding!r}"
    return None


def squeeze_excite_unsupported_reason(fc1, fc2, act, gate) -> Optional[str]:
    """Why a squeeze-excite (fc1 -> act -> fc2 -> gate) cannot be fused exactly; None if it can.

    fc1/fc2 are 1x1 ``nn.Conv2d``; act must be ``nn.ReLU`` and gate ``nn.Hardsigmoid``.
    """
    for fc, name in ((fc1, "fc1"), (fc2, "fc2")):
        reason = _plain_fc(fc, name)
        if reason:
            return reason
    if fc2.in_channels != fc1.out_channels or fc2.out_channels != fc1.in_channels:
        return (f"fc shapes do not chain: fc1 {fc1.in_channels}->{fc1.out_channels}, "
                f"fc2 {fc2.in_channels}->{fc2.out_channels}")
    if type(act) is not nn.ReLU:
        return f"inner activation {type(act).__name__} is not ReLU"
    if type(gate) is not nn.Hardsigmoid:
        return f"gate {type(gate).__name__} is not Hardsigmoid"
    return None


def _bn_fusable(bn: _BatchNorm) -> bool:
    """Eval-mode BN with running statistics: the only state in which it folds into the conv.
    A frozen batch norm always folds (it has no training mode)."""
    if not isinstance(bn, _BatchNorm):
        return is_frozen_batch_norm(bn)
    return not bn.training and bn.running_mean is not None and bn.running_var is not None


def _conv_geometry(conv: nn.Conv2d):
    return list(conv.stride), list(_static_padding(conv)), list(conv.dilation)


# ----------------------------------------------------------------------------------------------
# What every fused module shares: backend, derived-data cache, path counting
# ----------------------------------------------------------------------------------------------
# (module class, path, detail) -> calls; see path_stats().
_PATHS: Counter = Counter()
# refresh() calls so far: every layer chain watches the value (a new int object per call).
_REFRESHES = {"count": 0}


def path_stats(reset: bool = False) -> dict:
    """Calls of the fused modules so far, as {(module class, path, detail): count}.

    path is ``"fused"`` (one fused kernel; detail: the backend), ``"reference"`` (the module's
    folded math in plain PyTorch ops; detail: why no kernel served it) or ``"unfused"`` (the
    original modules; detail: why); a ``FusedInvertedResidual`` counts ``"fused"`` (the whole
    block as one fused sequence) or ``"layer by layer"`` (its layers each on their own path; detail:
    why). ``reset=True`` clears the counts after reading them.
    Calls traced by ``torch.compile`` are not counted.
    """
    if _extension.LOADED:  # the chains' fast path counts its calls in C++
        for label, calls in _extension._C._chain_calls().items():
            _PATHS[(label, "fused", "cpu")] += calls
    stats = dict(_PATHS)
    if reset:
        _PATHS.clear()
    return stats


def refresh(model: nn.Module) -> nn.Module:
    """Drop every cached folded weight in `model` (`model` itself included if it is fused).

    Needed only after writes the caches cannot see -- through ``.data`` (``p.data.mul_()``,
    ``p.data.copy_()``); in-place ops, optimizer steps, ``load_state_dict`` and ``.to()`` are
    seen (see the module docstring). Returns `model`.
    """
    for m in model.modules():
        if isinstance(m, FusedModule):
            m.refresh()
    return model


def _unfused_reason(x: torch.Tensor, weight: torch.Tensor) -> Optional[str]:
    """Why the fused op cannot take `x` with these weights (None if it can): the original
    modules then run and PyTorch handles the case (unbatched input, mixed devices or dtypes)."""
    if x.dim() != 4:
        return f"{x.dim()}-D input"
    if x.device != weight.device:
        return f"input on {x.device}, weights on {weight.device}"
    if x.dtype != weight.dtype and not (
        # Under autocast the op's Autocast kernel casts both to its compute dtype.
        torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(x.device.type)
        and x.is_floating_point()
    ):
        return f"input {x.dtype}, weights {weight.dtype}".replace("torch.", "")
    return None


def _stamp(sources) -> Optional[tuple]:
    """What identifies the current contents of each source tensor: the object itself (its id;
    the caches keep the sources alive, so no other tensor can take the id meanwhile), its version
    counter (bumped by in-place updates, load_state_dict and optimizers) and its storage address
    (changed by ``.data =`` and ``.to()``). None when some tensor has no version counter
    (inference tensors): then nothing is cached. One C++ call when the library is loaded."""
    if _extension.LOADED:
        return _extension._C._source_stamp(sources)
    try:
        return tuple(None if t is None else (id(t), t._version, t.data_ptr()) for t in sources)
    except RuntimeError:
        return None


class FusedModule:
    """Mixin of every fused module: a validated ``backend`` attribute, a cache of derived data
    (folded or packed weights) that ``refresh()`` drops and that is never pickled or copied,
    and the path counting behind ``path_stats()``."""

    @property
    def backend(self) -> str:
        return self.__dict__["_backend"]

    @backend.setter
    def backend(self, value: str) -> None:
        self.__dict__["_backend"] = check_backend(value)

    def refresh(self) -> None:
        """Drop the cached derived data (recomputed on the next call)."""
        cache = self.__dict__.get("_mnv3_cache")
        if cache is not None:
            cache.clear()  # in place: a compiled graph's guards on this module's __dict__ still hold
        _REFRESHES["count"] += 1  # a chain holding this layer rebuilds

    def _cache(self) -> dict:
        return self.__dict__.setdefault("_mnv3_cache", {})

    def __getstate__(self):
        # The cache is derived data holding tensor references: never pickle or deep-copy it.
        state = self.__dict__.copy()
        state.pop("_mnv3_cache", None)
        return state

    def _count(self, path: str, detail: str) -> None:
        if not torch.compiler.is_compiling():
            _PATHS[(type(self).__name__, path, detail)] += 1

    def _run_backend(self, x: torch.Tensor, conv_like: bool = True, op: Optional[str] = None) -> str:
        """The backend serving this call (counted as the fused or the reference path); conv-like
        ops are resolved by their autocast compute dtype (see mnv3_kernels.ops). `op`: an op that
        only some backends implement (ops._OP_BACKENDS)."""
        chosen = ops._resolve_cached(self.backend, x, conv_like)
        served = ops._OP_BACKENDS.get(op) if op else None
        if served is not None and chosen not in served:
            # A model converted for another backend (convert(model, backend="cuda")) keeps its
            # layers that have no such kernels on the reference path, which is what eager ran.
            self._count("reference", f"{op} has no {chosen!r} kernels")
            return "reference"
        if chosen == "reference":
            self._count("reference", ops.reference_reason(self.backend, x, conv_like))
        else:
            self._count("fused", chosen)
        return chosen


class _FoldCacheMixin(FusedModule):
    """Folds an eval BN into a depthwise conv and caches the result (see the module docstring)."""

    def _folded(self, conv_weight, conv_bias, bn: Optional[_BatchNorm]):
        """The conv's weight and bias with `bn` folded in; `bn` None: the conv's own (cached
        under the same rule, so that the packing derived from them is too)."""
        if bn is None:
            sources = (conv_weight, conv_bias)
        else:
            sources = (conv_weight, conv_bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)
        ):
            return (conv_weight, conv_bias) if bn is None else fold_bn(*sources, bn.eps)
        stamp = _stamp(sources)
        context = (None if bn is None else bn.eps, torch.is_inference_mode_enabled())
        cache = self._cache()
        cached = cache.get("fold")
        # cached[0] keeps the sources alive: their ids in the stamp stay theirs.
        if cached is not None and stamp is not None and cached[1] == stamp and cached[2] == context:
            return cached[3], cached[4]
        with torch.no_grad():
            if bn is None:
                weight, bias = conv_weight.detach(), None if conv_bias is None else conv_bias.detach()
            else:
                weight, bias = fold_bn(*sources, bn.eps)
        if stamp is not None:
            cache["fold"] = (sources, stamp, context, weight, bias)
        return weight, bias

    def clear_fold_cache(self) -> None:
        """Drop the cached folded weights (same as ``refresh()``)."""
        self.refresh()


# ----------------------------------------------------------------------------------------------
# Depthwise conv + BN + activation as one Sequential
# ----------------------------------------------------------------------------------------------
class _ConvBNActSequential:
    """What the fused ``nn.Sequential(conv, bn[, act])`` modules share: adopting the original
    modules as children "0", "1"[, "2"], building from such a Sequential, and why a call cannot
    take the fused path."""

    def _adopt(self, conv, bn, act, backend: str, reason: Optional[str], what: str) -> None:
        if reason is not None:
            raise ValueError(f"cannot fuse this {what}: {reason}")
        nn.Sequential.__init__(self, *([conv, bn] if act is None else [conv, bn, act]))
        self.activation = activation_name(act)
        self.out_channels = conv.out_channels
        self.backend = backend

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, *, backend: str = "auto"):
        """Replace an ``nn.Sequential(conv, bn[, act])`` (children "0", "1"[, "2"])."""
        names = list(seq._modules)
        if names not in (["0", "1"], ["0", "1", "2"]):
            raise ValueError(f"expected a Sequential with children '0', '1'[, '2'], got {names}")
        fused = cls(*seq, backend=backend)
        fused.train(seq.training)
        return fused

    def _conv_and_bn(self):
        return self._modules["0"], self._modules["1"]  # read directly: Sequential indexing walks the children

    def _unfused_why(self, x: torch.Tensor) -> Optional[str]:
        """Why this call runs the original modules (None: it takes the fused path)."""
        if not _bn_fusable(self[1]):
            return "BatchNorm in training mode"
        return _unfused_reason(x, self[0].weight)

    def _chain_why(self, x: torch.Tensor) -> Optional[str]:
        """Why this layer cannot be a step of a LayerChain on x (None: it can)."""
        why = self._unfused_why(x)
        if why is None and ops._resolve_cached(self.backend, x) != "cpu":
            why = f"backend {self.backend!r} does not run the CPU kernels on this input"
        if why is None and not _untracked(x, *_params(self[0], self[1])):
            why = "autograd records the call"
        return why


class FusedDepthwiseConvBNAct(_ConvBNActSequential, _FoldCacheMixin, nn.Sequential):
    """Depthwise conv -> BatchNorm -> activation, fused in eval mode.

    A drop-in for ``nn.Sequential(conv, bn, act)`` (and torchvision's ``Conv2dNormActivation``):
    it *is* that Sequential -- children "0" (conv), "1" (bn) and, if given, "2" (act) are the
    original module objects -- so ``state_dict`` keys and values are unchanged and indexing
    (``m[0]``) still works.

    - eval (``bn.training`` False, running stats present): one call to
      ``ops.dwconv_bn_act`` with the BN folded into the conv (cached, see module docstring).
    - otherwise (training): the original conv -> bn -> act, exactly.

    Build it with ``FusedDepthwiseConvBNAct(conv, bn, act)``,
    ``FusedDepthwiseConvBNAct.from_modules(conv, bn, act)`` or
    ``FusedDepthwiseConvBNAct.from_sequential(seq)``. ``conv`` must be a plain depthwise
    ``nn.Conv2d`` with zero padding, ``bn`` an ``nn.BatchNorm2d`` with running statistics and
    ``act`` None, ``nn.Identity``, ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardswish``
    (``depthwise_unsupported_reason`` says why a combination is refused).
    ``backend`` is any name of ``ops.BACKENDS`` and may be changed later (``m.backend = ...``).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 *, backend: str = "auto"):
        reason = depthwise_unsupported_reason(conv, bn, act)
        if reason is None and isinstance(bn, _BatchNorm):
            reason = bn_forward_reason(bn)
        self._adopt(conv, bn, act, backend, reason, "depthwise conv + BN + activation")

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                     *, backend: str = "auto") -> "FusedDepthwiseConvBNAct":
        """Same as the constructor: adopt `conv`, `bn` and `act` (shared, not copied)."""
        return cls(conv, bn, act, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self[0], self[1]
        why = self._unfused_why(x)
        if why is not None:
            self._count("unfused", why)
            return super().forward(x)
        weight, bias = self._folded(conv.weight, conv.bias, bn)
        stride, padding, dilation = _conv_geometry(conv)
        return ops._dwconv_bn_act_on(self._run_backend(x), x, weight, bias, stride, padding, dilation,
                                     self.activation)

    def extra_repr(self) -> str:
        conv = self[0]
        return (f"C={conv.out_channels}, k={tuple(conv.kernel_size)}, stride={tuple(conv.stride)}, "
                f"dilation={tuple(conv.dilation)}, activation={self.activation}, backend={self.backend!r}")


# ----------------------------------------------------------------------------------------------
# Depthwise conv + BN + activation split over two sibling modules
# ----------------------------------------------------------------------------------------------
class BatchNormActTail(nn.BatchNorm2d):
    """The BN (+ dropout) + activation half of a head/tail pair (see ``fused_conv_bn_act_pair``).

    An ``nn.BatchNorm2d`` that adopts the original BN's Parameters and buffers under the same
    names (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so
    the state_dict is unchanged; ``drop`` and ``act`` are registered as children when given.

    When the BN is fusable (eval mode, running statistics) the head has already applied it and
    the tail returns its input. Otherwise it computes ``act(drop(batch_norm(x)))`` with
    ``nn.BatchNorm2d.forward`` -- the original BN semantics, running-stat updates included.
    The caller vouches that the original module computed exactly that.
    """

    def __init__(self, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 drop: Optional[nn.Module] = None):
        if not isinstance(bn, nn.BatchNorm2d):
            raise ValueError(f"bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        super().__init__(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats, device="meta")
        # Adopt the original tensors (same objects, same order as nn.BatchNorm2d registers them).
        for name in ("weight", "bias"):
            self._parameters[name] = bn._parameters.get(name)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self._buffers[name] = bn._buffers.get(name)
        self._non_persistent_buffers_set = set(bn._non_persistent_buffers_set)
        if drop is not None:
            self.drop = drop
        if act is not None:
            self.act = act
        self.activation = activation_name(act)
        if self.activation is None:
            raise ValueError(f"activation {_describe(act)} is not {_ACTIVATIONS_TEXT}")
        self.train(bn.training)

    def apply_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """BN (+ dropout) + activation, as the original module computes it."""
        x = super().forward(x)
        if "drop" in self._modules:
            x = self.drop(x)
        if "act" in self._modules:
            x = self.act(x)
        return x

    def fusable(self) -> bool:
        """Whether the head applies BN + activation (then this tail passes its input through)."""
        return _bn_fusable(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bn_fusable(self):
            return x  # the head already applied BN + activation
        return self.apply_unfused(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}, fused_into_head={_bn_fusable(self)}"


class ActivationTail(nn.Module):
    """The activation half of a head/tail pair whose conv has no BN (timm's ``conv_head`` ->
    ``act2``): it replaces the activation module and holds it as child ``act``. In eval mode the
    head has applied the activation and the tail returns its input; in training mode it is the
    activation."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.activation = activation_name(act)
        if act is None or self.activation is None:
            raise ValueError(f"activation {_describe(act)} is not {_ACTIVATIONS_TEXT}")
        self.act = act
        self.train(act.training)

    def fusable(self) -> bool:
        """Whether the head applies the activation (then this tail passes its input through)."""
        return not self.training

    def apply_unfused(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if not self.training else self.act(x)

    def extra_repr(self) -> str:
        return f"activation={self.activation}, fused_into_head={not self.training}"


class ActivationSlot(nn.Module):
    """Stands where an activation module was, in an ``nn.Sequential(..., conv, bn, act, ...)``,
    after the ``BatchNormActTail`` that replaced the BN took the activation over (the head
    applies it fused; the tail applies it unfused): passes its input through. Keeping the slot
    keeps the names, hence the state_dict keys, of the children after it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "applied by the preceding BatchNormActTail"


class _ConvBNActHead(_FoldCacheMixin, nn.Conv2d):
    """The conv half of a head/tail pair (see ``fused_conv_bn_act_pair``).

    An ``nn.Conv2d`` owning the original conv's ``weight``/``bias`` Parameters (same objects,
    same names). It keeps a reference to its ``BatchNormActTail`` that is *not* registered as a
    child (the tail is registered where the original BN was), so nothing is duplicated in the
    state_dict. When the tail's BN is fusable it returns conv+BN+activation in one fused call
    (the tail then passes through); otherwise it is a plain conv. Subclasses give the rule of
    what they fuse (``_unsupported_reason``) and the fused call (``_fused``).
    """

    _what = "conv + BN + activation"

    @staticmethod
    def _unsupported_reason(conv, bn, act) -> Optional[str]:
        raise NotImplementedError

    def __init__(self, conv: nn.Conv2d, tail, *, backend: str = "auto"):
        bn = tail if isinstance(tail, BatchNormActTail) else None  # an ActivationTail: no BN
        reason = self._unsupported_reason(conv, bn, tail._modules.get("act"))
        if reason is not None:
            raise ValueError(f"cannot fuse this {self._what}: {reason}")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        self._parameters["weight"] = conv._parameters["weight"]
        self._parameters["bias"] = conv._parameters.get("bias")
        self.__dict__["_tail"] = tail
        self.__dict__["_bn"] = bn
        self.backend = backend
        self.train(conv.training)

    @property
    def tail(self):
        """The ``BatchNormActTail`` or ``ActivationTail`` this head fuses (not a registered child)."""
        return self.__dict__["_tail"]

    @property
    def activation(self) -> str:
        return self.__dict__["_tail"].activation

    def _conv_and_bn(self):
        return self, self.__dict__["_bn"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tail = self.__dict__["_tail"]
        if not tail.fusable():
            self._count("unfused", "training mode" if self.__dict__["_bn"] is None else "BatchNorm in training mode")
            return self._conv_forward(x, self.weight, self.bias)
        why = _unfused_reason(x, self.weight)
        if why is not None:
            self._count("unfused", why)
            # The tail passes through whenever the BN is fusable, so the head does all of it.
            return tail.apply_unfused(self._conv_forward(x, self.weight, self.bias))
        return self._fused(x, tail)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, k={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, dilation={tuple(self.dilation)}, padding={self.padding}, "
                f"activation={self.activation}, backend={self.backend!r}")


class DepthwiseConvBNActHead(_ConvBNActHead):
    """Head of a depthwise conv + BN + activation pair: ``ops.dwconv_bn_act`` when fused."""

    _what = "depthwise conv + BN + activation"
    _unsupported_reason = staticmethod(depthwise_unsupported_reason)

    def _fused(self, x: torch.Tensor, tail) -> torch.Tensor:
        weight, bias = self._folded(self.weight, self.bias, self.__dict__["_bn"])
        stride, padding, dilation = _conv_geometry(self)
        return ops._dwconv_bn_act_on(self._run_backend(x), x, weight, bias, stride, padding, dilation,
                                     tail.activation)

    def extra_repr(self) -> str:
        return (f"C={self.out_channels}, k={tuple(self.kernel_size)}, stride={tuple(self.stride)}, "
                f"dilation={tuple(self.dilation)}, padding={self.padding}, "
                f"activation={self.tail.activation}, backend={self.backend!r}")


def fused_conv_bn_act_pair(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], act: Optional[nn.Module] = None,
                           drop: Optional[nn.Module] = None, *, backend: str = "auto"):
    """Build (head, tail) replacing sibling modules ``conv`` and ``bn`` of a block.

    Use only when the block's forward calls them adjacently, ``x = bn(conv(x))``, where ``bn``
    computes ``act(drop(batch_norm(x)))``; set ``block.<conv name> = head`` and
    ``block.<bn name> = tail``. `drop` must be identity in eval mode (e.g. ``nn.Identity``,
    ``nn.Dropout``). Parameters and buffers are shared with the originals.

    The head fuses what the conv is: a depthwise conv (``DepthwiseConvBNActHead``), a 1x1 conv
    (``PointwiseConvBNActHead``) or a small dense conv (``DenseConvBNActHead``). An `act` that is
    a sibling of its own (``nn.Sequential(conv, bn, act, ...)``) moves into the tail: put an
    ``ActivationSlot`` in its place.

    `bn` None: a conv followed directly by the activation module `act`, ``x = act(conv(x))``; the
    tail is an ``ActivationTail`` and replaces `act` (``block.<act name> = tail``).

    Note: forward hooks on the head see conv+BN+act output in eval mode.
    """
    if bn is None:
        if drop is not None:
            raise ValueError("drop goes with a BN (bn is None)")
        tail = ActivationTail(act)
    else:
        tail = BatchNormActTail(bn, act=act, drop=drop)
    head = head_class(conv)(conv, tail, backend=backend)
    return head, tail


def head_class(conv: nn.Module) -> type:
    """The head (``_ConvBNActHead`` subclass) that fuses `conv` with its BN: depthwise for a
    grouped conv (it refuses those that are not depthwise), pointwise for a 1x1 conv, dense
    otherwise."""
    if getattr(conv, "groups", 1) > 1:
        return DepthwiseConvBNActHead
    if tuple(getattr(conv, "kernel_size", ())) == (1, 1):
        return PointwiseConvBNActHead
    return DenseConvBNActHead


# ----------------------------------------------------------------------------------------------
# Squeeze-excite
# ----------------------------------------------------------------------------------------------
class FusedSqueezeExcite(FusedModule, nn.Module):
    """Squeeze-excite ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` as one fused op.

    fc1/fc2 are 1x1 ``nn.Conv2d`` with (or without) bias, the inner activation ``nn.ReLU`` and
    the gate ``nn.Hardsigmoid``. The modules are adopted as children (shared, not copied):

    - ``FusedSqueezeExcite(fc1, fc2, act=None, gate=None)`` names them "fc1", "fc2",
      "activation", "scale_activation" (torchvision's names; act/gate default to fresh
      ``nn.ReLU()``/``nn.Hardsigmoid()``);
    - ``FusedSqueezeExcite.wrap(se, fc1=..., fc2=..., act=..., gate=..., pool=None)`` adopts
      *every* child of an existing SE module under its own name, in order, given which child
      plays which role -- so its state_dict is unchanged.

    Eval mode always runs the fused op (it has autograd). Training mode runs the original
    modules unfused -- bit-for-bit the original -- unless ``train_fused`` is True, in which
    case it runs the fused op too (gradients from its autograd formula).
    """

    def __init__(self, fc1: nn.Conv2d, fc2: nn.Conv2d, act: Optional[nn.Module] = None,
                 gate: Optional[nn.Module] = None, *, backend: str = "auto", train_fused: bool = False):
        super().__init__()
        act = nn.ReLU() if act is None else act
        gate = nn.Hardsigmoid() if gate is None else gate
        self._setup([("fc1", fc1), ("fc2", fc2), ("activation", act), ("scale_activation", gate)],
                    {"fc1": "fc1", "fc2": "fc2", "act": "activation", "gate": "scale_activation",
                     "pool": None}, backend, train_fused)

    @classmethod
    def from_modules(cls, fc1, fc2, act=None, gate=None, *, backend: str = "auto",
                     train_fused: bool = False) -> "FusedSqueezeExcite":
        """Same as the constructor."""
        return cls(fc1, fc2, act, gate, backend=backend, train_fused=train_fused)

    @classmethod
    def wrap(cls, se: nn.Module, *, fc1: str, fc2: str, act: str, gate: str, pool: Optional[str] = None,
             backend: str = "auto", train_fused: bool = False) -> "FusedSqueezeExcite":
        """Replace an SE module whose children named `fc1`, `act`, `fc2`, `gate` (and optionally
        `pool`, a global average pool) compute ``x * gate(fc2(act(fc1(pool(x)))))``."""
        if se._parameters or se._buffers:
            raise ValueError("cannot wrap an SE module that owns parameters or buffers directly")
        roles = {"fc1": fc1, "fc2": fc2, "act": act, "gate": gate, "pool": pool}
        for role, name in roles.items():
            if name is not None and name not in se._modules:
                raise ValueError(f"{type(se).__name__} has no child {name!r} (role {role})")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(list(se._modules.items()), roles, backend, train_fused)
        self.train(se.training)
        return self

    def _setup(self, children, roles, backend, train_fused):
        for name, module in children:
            self.add_module(name, module)
        self._roles = dict(roles)
        m = self._modules
        reason = squeeze_excite_unsupported_reason(m[roles["fc1"]], m[roles["fc2"]], m[roles["act"]],
                                                   m[roles["gate"]])
        if reason is None and roles["pool"] is not None:
            pool = m[roles["pool"]]
            if type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1)):
                reason = f"pool {pool!r} is not a global average pool"
        if reason is not None:
            raise ValueError(f"cannot fuse this squeeze-excite: {reason}")
        self.backend = backend
        self.train_fused = bool(train_fused)

    def _role(self, role: str) -> nn.Module:
        return self._modules[self._roles[role]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self._role("fc1"), self._role("fc2")
        why = "training mode" if self.training and not self.train_fused else _unfused_reason(x, fc1.weight)
        if why is not None:
            self._count("unfused", why)
            pool = self._roles["pool"]
            s = self._modules[pool](x) if pool is not None else x.mean((2, 3), keepdim=True)
            s = self._role("gate")(fc2(self._role("act")(fc1(s))))
            return x * s
        b1 = fc1.bias if fc1.bias is not None else fc1.weight.new_zeros(fc1.out_channels)
        b2 = fc2.bias if fc2.bias is not None else fc2.weight.new_zeros(fc2.out_channels)
        return ops._squeeze_excite_on(self._run_backend(x), x, fc1.weight, b1, fc2.weight, b2)

    def extra_repr(self) -> str:
        fc1 = self._role("fc1")
        return f"C={fc1.in_channels}, squeeze={fc1.out_channels}, backend={self.backend!r}"


class FusedLinear(FusedModule, nn.Linear):
    """``nn.Linear`` on the packed CPU GEMM kernels in inference (the classifier of MobileNetV3:
    960 -> 1280 -> 1000 at batch 1 is a matrix-vector product, which the kernels split over the
    weight panels, one part per thread). Holds the original's Parameter objects, so the
    state_dict is unchanged. Anywhere else (autograd, other devices or dtypes, inputs other than
    (N, in_features)) it is ``F.linear``, exactly the original."""

    def __init__(self, linear: nn.Linear, *, backend: str = "auto"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_parameter("weight", linear.weight)
        self.register_parameter("bias", linear.bias)  # None without a bias, as nn.Linear
        self.backend = backend
        self.train(linear.training)

    def _why_unfused(self, x: torch.Tensor) -> Optional[str]:
        w = self._parameters["weight"]
        if torch.is_autocast_enabled("cpu"):  # nn.Linear then computes in the autocast dtype
            return "autocast"
        if not (x.is_cpu and x.dtype == torch.float32 and x.dim() == 2 and w.dtype == torch.float32 and w.is_cpu):
            return f"{x.dim()}-D {str(x.dtype).replace('torch.', '')} input on {x.device.type}"
        if self.__dict__["_backend"] not in ("auto", "cpu") or not _extension.LOADED:
            return "backend is not the CPU kernels"
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return "traced (torch.compile, torch.export or ONNX export)"
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return "autograd records the call"
        return None

    def _packed(self) -> torch.Tensor:
        sources = (self._parameters["weight"], self._parameters["bias"])
        stamp = _stamp(sources)
        cache = self._cache()
        cached = cache.get("pack")
        if cached is not None and stamp is not None and cached[1] == stamp:
            return cached[2]
        with torch.no_grad():
            packed = ops.pack_pointwise_weight(*sources)
        if stamp is not None:
            cache["pack"] = (sources, stamp, packed)
        return packed

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """Add this layer to a LayerChain over (N, features) inputs (see FusedSequential)."""
        why = self._why_unfused(x)
        if why is None:
            chain.add_pointwise(self._packed(), self.out_features, "none")
            chain.watch_value(self.__dict__, "_backend")
            why = _watch_hooks(chain, self) or _watch_params(chain, self)
        return why

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        why = self._why_unfused(x)
        if why is not None:
            self._count("reference", why)
            return F.linear(x, self.weight, self.bias)
        self._count("fused", "cpu")
        n = x.shape[0]
        # (N, K) as (N, K, 1, 1): one pixel per sample, the layout the kernels read as rows of K.
        y = _OPS["pointwise_packed"](x.reshape(n, self.in_features, 1, 1), self._packed(), self.out_features,
                                     "none", None, None)
        return y.view(n, self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"


class _HardActivation(FusedModule, nn.Module):
    _out_of_place = _in_place = None

    def __init__(self, inplace: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.inplace = bool(inplace)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The in-place kernels record no autograd history; where a gradient is tracked the
        # out-of-place op (which has autograd) gives the same values and gradients.
        chosen = self._run_backend(x, conv_like=False)
        if self.inplace and not (x.requires_grad and torch.is_grad_enabled()):
            return type(self)._in_place(x, backend=chosen)
        return type(self)._out_of_place(x, backend=chosen)

    def extra_repr(self) -> str:
        return f"inplace={self.inplace}, backend={self.backend!r}"


class Hardswish(_HardActivation):
    """Drop-in for ``nn.Hardswish(inplace)``: the single-pass piecewise kernel."""

    _out_of_place, _in_place = staticmethod(ops.hardswish), staticmethod(ops.hardswish_)


class Hardsigmoid(_HardActivation):
    """Drop-in for ``nn.Hardsigmoid(inplace)``: the single-pass piecewise kernel."""

    _out_of_place, _in_place = staticmethod(ops.hardsigmoid), staticmethod(ops.hardsigmoid_)


# ----------------------------------------------------------------------------------------------
# Pointwise (1x1) conv + BN + activation, and whole inverted-residual blocks
# ----------------------------------------------------------------------------------------------
def _untracked(*tensors) -> bool:
    """No autograd graph would be recorded for these tensors (what the packed kernels need)."""
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in tensors)


def _params(conv, bn) -> tuple:
    """The trainable tensors of a conv and its BN (None: no BN)."""
    return (conv.weight, conv.bias) if bn is None else (conv.weight, conv.bias, bn.weight, bn.bias)


class _PackCacheMixin(_FoldCacheMixin):
    """The folded weights of a fused conv + BN (a Sequential(conv, bn[, act]) or a head) packed
    into the CPU GEMM kernels' panels, cached with the fold (so refreshed on the same changes,
    and by refresh())."""

    def _packed(self):
        conv, bn = self._conv_and_bn()
        weight, bias = self._folded(conv.weight, conv.bias, bn)
        cache = self._cache()
        cached = cache.get("pack")
        if cached is not None and cached[0] is weight and cached[1] is bias:
            return cached[2]
        packed = ops.pack_pointwise_weight(weight.reshape(weight.shape[0], -1), bias)
        fold = cache.get("fold")
        if fold is not None and fold[3] is weight:  # the fold is cached: so is its packing
            cache["pack"] = (weight, bias, packed)
        return packed


class FusedPointwiseConvBNAct(_ConvBNActSequential, _PackCacheMixin, nn.Sequential):
    """1x1 conv -> BatchNorm -> activation, fused in eval mode: a drop-in for
    ``nn.Sequential(conv, bn, act)`` / torchvision's ``Conv2dNormActivation`` with a 1x1,
    stride-1, ungrouped conv. Children "0", "1"[, "2"] are the original modules.

    - eval (BN with running statistics): one GEMM call with the BN folded into the weights and
      the activation applied before the store. On the CPU, with no gradient to record, the
      folded weights are packed once into the kernel's panels and cached with the fold
      (refreshed on the same changes, see the module docstring).
    - otherwise (training): the original conv -> bn -> act, exactly.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 *, backend: str = "auto"):
        reason = pointwise_unsupported_reason(conv, bn, act)
        if reason is None:
            reason = bn_forward_reason(bn)
        self._adopt(conv, bn, act, backend, reason, "pointwise conv + BN + activation")

    def fusable(self) -> bool:
        """Whether the BN folds (eval mode with running statistics)."""
        return _bn_fusable(self[1])

    def fused_forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                      input_scale: Optional[torch.Tensor] = None, chosen: Optional[str] = None) -> torch.Tensor:
        """``act(conv_bn(x * input_scale)) + residual`` with the BN folded (call when ``fusable()``);
        `chosen`: the backend, when the caller has resolved it already."""
        conv = self[0]
        if chosen is None:
            chosen = ops._resolve_cached(self.backend, x)
            if chosen not in ops._OP_BACKENDS["pointwise_conv_bn_act"]:
                chosen = "reference"
        if (chosen == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and _untracked(x, residual, input_scale, conv.weight, conv.bias, self[1].weight, self[1].bias)):
            return ops._pointwise_packed_trusted(x, self._packed(), self.out_channels, self.activation,
                                                 residual, input_scale)
        weight, bias = self._folded(conv.weight, conv.bias, self[1])
        return ops.pointwise_conv_bn_act(x, weight, bias, self.activation, residual, input_scale,
                                         backend=chosen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        why = self._unfused_why(x)
        if why is not None:
            self._count("unfused", why)
            return super().forward(x)
        return self.fused_forward(x, chosen=self._run_backend(x, op="pointwise_conv_bn_act"))

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """Add this layer to a LayerChain (see FusedSequential); else why it cannot be."""
        why = self._chain_why(x)
        if why is None:
            chain.add_pointwise(self._packed(), self.out_channels, self.activation)
            why = _watch_layer(chain, self, *self._conv_and_bn())
        return why

    def extra_repr(self) -> str:
        conv = self[0]
        return (f"{conv.in_channels}->{conv.out_channels}, activation={self.activation}, "
                f"backend={self.backend!r}")


# Dense convs fused up to this many multiply-adds per output element (C * kh * kw): stems. Larger
# dense convs stay with PyTorch (oneDNN's direct convolutions beat a patch-gathering GEMM there).
DENSE_MAX_PATCH = 64


def dense_unsupported_reason(conv, bn, act=None) -> Optional[str]:
    """Why (small dense conv -> bn -> act) cannot be served by the fused dense op; None if it can."""
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if not _plain_conv2d(conv):
        return f"{type(conv).__name__} overrides nn.Conv2d's forward (e.g. padding computed at run time)"
    if conv.groups != 1:
        return f"groups={conv.groups} (the dense op serves groups = 1)"
    if conv.padding_mode != "zeros" or _static_padding(conv) is None:
        return f"padding {conv.padding!r} / mode {conv.padding_mode!r} (only static zero padding is fused)"
    patch = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if patch > DENSE_MAX_PATCH:
        return f"patch of {patch} inputs per output (the dense op serves stems, up to {DENSE_MAX_PATCH})"
    return _norm_act_reason(conv, bn, act, frozen_ok=False)


class FusedConvBNAct(_ConvBNActSequential, _PackCacheMixin, nn.Sequential):
    """Small dense conv (a stem: MobileNetV3's 3 -> 16, 3x3, stride 2) -> BatchNorm ->
    activation, fused in eval mode. Children "0", "1"[, "2"] are the original modules.

    Eval mode returns channels_last whatever the input's layout: the first layer of a converted
    model reorders the input once (the model restores the layout of its own outputs). Training
    mode runs the original modules, exactly.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 *, backend: str = "auto"):
        reason = dense_unsupported_reason(conv, bn, act)
        if reason is None:
            reason = bn_forward_reason(bn)
        self._adopt(conv, bn, act, backend, reason, "conv + BN + activation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self[0], self[1]
        why = self._unfused_why(x)
        if why is not None:
            self._count("unfused", why)
            return super().forward(x)
        stride, padding, dilation = _conv_geometry(conv)
        chosen = self._run_backend(x, op="dense_conv_bn_act")
        if (chosen == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and _untracked(x, conv.weight, conv.bias, bn.weight, bn.bias)):
            return ops._dense_packed_trusted(x, self._packed(), self.out_channels, list(conv.kernel_size),
                                             stride, padding, dilation, self.activation)
        weight, bias = self._folded(conv.weight, conv.bias, bn)
        return ops.dense_conv_bn_act(x, weight, bias, stride, padding, dilation, self.activation,
                                     backend=chosen)

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """Add this layer to a LayerChain (see FusedSequential); else why it cannot be."""
        why = self._chain_why(x)
        if why is None:
            conv = self[0]
            chain.add_dense(self._packed(), self.out_channels, list(conv.kernel_size), *_conv_geometry(conv),
                            self.activation)
            why = _watch_layer(chain, self, conv, self[1])
        return why

    def extra_repr(self) -> str:
        conv = self[0]
        return (f"{conv.in_channels}->{conv.out_channels}, k={tuple(conv.kernel_size)}, "
                f"stride={tuple(conv.stride)}, activation={self.activation}, backend={self.backend!r}")


class PointwiseConvBNActHead(_PackCacheMixin, _ConvBNActHead):
    """Head of a 1x1 conv + BN + activation pair: the pointwise GEMM (on weights packed once, on
    the CPU without a gradient to record) when fused."""

    _what = "pointwise conv + BN + activation"
    _unsupported_reason = staticmethod(pointwise_unsupported_reason)

    def _fused(self, x: torch.Tensor, tail) -> torch.Tensor:
        chosen = self._run_backend(x, op="pointwise_conv_bn_act")
        bn = self.__dict__["_bn"]
        if (chosen == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and _untracked(x, *_params(self, bn))):
            return ops._pointwise_packed_trusted(x, self._packed(), self.out_channels, tail.activation,
                                                 None, None)
        weight, bias = self._folded(self.weight, self.bias, bn)
        return ops.pointwise_conv_bn_act(x, weight, bias, tail.activation, backend=chosen)


class DenseConvBNActHead(_PackCacheMixin, _ConvBNActHead):
    """Head of a small dense conv (a stem) + BN + activation pair: ``ops.dense_conv_bn_act``
    when fused, which returns channels_last (as ``FusedConvBNAct``)."""

    _what = "conv + BN + activation"
    _unsupported_reason = staticmethod(dense_unsupported_reason)

    def _fused(self, x: torch.Tensor, tail) -> torch.Tensor:
        stride, padding, dilation = _conv_geometry(self)
        chosen = self._run_backend(x, op="dense_conv_bn_act")
        bn = self.__dict__["_bn"]
        if (chosen == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing()
                and _untracked(x, *_params(self, bn))):
            return ops._dense_packed_trusted(x, self._packed(), self.out_channels, list(self.kernel_size),
                                             stride, padding, dilation, tail.activation)
        weight, bias = self._folded(self.weight, self.bias, bn)
        return ops.dense_conv_bn_act(x, weight, bias, stride, padding, dilation, tail.activation,
                                     backend=chosen)


def _gate_args(se: "FusedSqueezeExcite"):
    fc1, fc2 = se._role("fc1"), se._role("fc2")
    b1 = fc1.bias if fc1.bias is not None else fc1.weight.new_zeros(fc1.out_channels)
    b2 = fc2.bias if fc2.bias is not None else fc2.weight.new_zeros(fc2.out_channels)
    return fc1.weight.flatten(1), b1, fc2.weight.flatten(1), b2




class _LazyOps(dict):
    """The CPU operators a fused block calls, looked up once (an attribute walk through
    torch.ops costs about as much as a small kernel)."""

    _NAMES = {"pointwise_packed": "pointwise_conv_bn_act_packed", "dwconv": "dwconv_bn_act",
              "gate": "squeeze_excite_gate", "block": "inverted_residual_packed",
              "pool": "global_avg_pool"}

    def __missing__(self, key):
        op = self[key] = getattr(torch.ops.mnv3, self._NAMES[key]).default
        return op


_OPS = _LazyOps()


# Which fused modules may play each part of a block.
_BLOCK_PARTS = {
    "expand": (FusedPointwiseConvBNAct, PointwiseConvBNActHead),
    "dw": (FusedDepthwiseConvBNAct, DepthwiseConvBNActHead),
    "se": (FusedSqueezeExcite,),
    "project": (FusedPointwiseConvBNAct, PointwiseConvBNActHead),
}


class FusedInvertedResidual(FusedModule, nn.Module):
    """A whole MobileNetV3 inverted-residual block -- [1x1 expand] -> depthwise -> [squeeze-excite]
    -> 1x1 project [+ input] -- as one fused call (``mnv3::inverted_residual_packed``).

    ``FusedInvertedResidual(block, dw=..., project=..., expand=None, se=None, residual=...,
    passthrough=())`` adopts every child of `block` under its own name, in order, and its public
    attributes, so the state_dict is unchanged. The parts are given as paths inside `block` to
    layers that are fused already: a ``FusedPointwiseConvBNAct`` or ``PointwiseConvBNActHead``
    (expand, project), a ``FusedDepthwiseConvBNAct`` or ``DepthwiseConvBNActHead`` (dw), a
    ``FusedSqueezeExcite`` (se). torchvision's ``InvertedResidual``: ``dw="block.1"``, ...;
    timm's ``InvertedResidual``: ``expand="conv_pw", dw="conv_dw", se="se", project="conv_pwl"``.
    `residual`: whether the block adds its input. `passthrough`: children the block's forward
    calls that are the identity in eval mode (timm's ``drop_path``); the fused path requires them
    in eval mode. The caller vouches that `block`'s forward computes exactly that sequence.

    In eval mode on the CPU, with no gradient to record:

    - the block runs channels_last (an NCHW input is reordered once; later blocks get
      channels_last already and return it);
    - squeeze-excite computes only its gate, which the projection folds into its weights per
      sample (``input_scale``): the SE scale pass disappears;
    - the residual is added in the projection's epilogue.

    Anywhere else (training, autograd, other devices or dtypes) it runs the original block's own
    forward on the adopted children, each fused where it can, exactly as the original block.
    """

    def __init__(self, block: nn.Module, *, dw: str, project: str, expand: Optional[str] = None,
                 se: Optional[str] = None, residual: bool, passthrough: Tuple[str, ...] = ()):
        super().__init__()
        parts, reason = [], None
        for role, path in (("expand", expand), ("dw", dw), ("se", se), ("project", project)):
            part = None if path is None else _submodule(block, path)
            if path is not None and not isinstance(part, _BLOCK_PARTS[role]):
                kinds = " or ".join(t.__name__ for t in _BLOCK_PARTS[role])
                reason = reason or f"its {role} layer {path!r} is {type(part).__name__}, not {kinds}"
            elif role != "se" and part is not None and part._conv_and_bn()[1] is None:
                reason = reason or f"its {role} layer {path!r} has no BatchNorm"
            parts.append(part)
        if reason is None and parts[3].activation != "none":
            reason = f"the projection has activation {parts[3].activation}"
        if reason is None and any(t is not None for t in (*block._parameters.values(), *block._buffers.values())):
            reason = "the block owns parameters or buffers directly"
        if reason is not None:
            raise ValueError(f"cannot fuse this inverted-residual block: {reason}")
        for name, child in block._modules.items():
            self._modules[name] = child
        for key, value in vars(block).items():  # public attributes (torchvision's out_channels, timm's has_skip)
            if not key.startswith("_") and key != "training":
                setattr(self, key, value)
        # Modules holding the parts: a layer swapped in any of them after conversion is seen per call.
        holders = {id(self): self}
        for path in (expand, dw, se, project):
            if path is not None and "." in path:
                holder = self.get_submodule(path.rpartition(".")[0])
                holders[id(holder)] = holder
        self.__dict__.update(
            _parts=tuple(parts),
            _children=tuple((h._modules, tuple(h._modules.values())) for h in holders.values()),
            _passthrough=tuple(self.get_submodule(name) for name in passthrough),
            _original_type=type(block),  # whose forward runs layer by layer
            _residual=bool(residual),
        )
        self.backend = "auto"  # the layers keep their own backends; this one is not used
        self.train(block.training)

    def _why_layer_by_layer(self, x: torch.Tensor, conv_bns: Optional[tuple] = None) -> Optional[str]:
        """None when the whole block can run as one fused sequence on x, else why not. Runs on
        every call: module dicts are read directly (nn.Module.__getattr__ costs ~0.3 us a name).
        `conv_bns`: what _conv_bns() returns, when the caller has it already."""
        expand, dw, se, project = self.__dict__["_parts"]
        if self.training:
            return "training mode"
        if not (x.is_cpu and x.dtype == torch.float32 and x.dim() == 4):
            return f"{x.dim()}-D {str(x.dtype).replace('torch.', '')} input on {x.device.type}"
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return "traced (torch.compile, torch.export or ONNX export)"
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return "autograd records the call"
        for modules, known in self.__dict__["_children"]:
            if len(modules) != len(known) or any(a is not b for a, b in zip(modules.values(), known)):
                return "the block's layers were replaced after conversion"
        for _, bn in conv_bns or self._conv_bns():
            if bn.training or bn._buffers.get("running_mean") is None or bn._buffers.get("running_var") is None:
                return "BatchNorm in training mode"
        for m in (expand, dw, project):
            # On a float32 CPU tensor, "auto" and "cpu" both mean the CPU kernels.
            if m is not None and m.__dict__["_backend"] not in ("auto", "cpu"):
                return "a layer's backend is not the CPU kernels"
        if not _extension.LOADED:
            return "the compiled library is not loaded"
        if se is not None and se.training and not se.train_fused:
            return "squeeze-excite in training mode"
        if any(m.training for m in self.__dict__["_passthrough"]):
            return "a layer in training mode"
        return None

    def refresh(self) -> None:
        """Drop the cached plan and its layers' folded and packed weights."""
        super().refresh()
        for part in self.__dict__["_parts"]:
            if part is not None:
                part.refresh()

    def _conv_bns(self) -> tuple:
        """(conv, bn) of each conv part present: expand, dw, project."""
        expand, dw, _, project = self.__dict__["_parts"]
        return tuple(m._conv_and_bn() for m in (expand, dw, project) if m is not None)

    def _sources(self, conv_bns: Optional[tuple] = None) -> tuple:
        """Every tensor the block's folded and packed weights derive from, read straight from the
        modules' dicts (cheaper than attribute access, which walks nn.Module.__getattr__)."""
        se = self.__dict__["_parts"][2]
        out = []
        for conv, bn in conv_bns or self._conv_bns():
            cp, bp, bb = conv._parameters, bn._parameters, bn._buffers
            out += (cp["weight"], cp.get("bias"), bp.get("weight"), bp.get("bias"), bb["running_mean"],
                    bb["running_var"])
        if se is not None:
            for role in ("fc1", "fc2"):
                fp = se._modules[se._roles[role]]._parameters
                out += (fp["weight"], fp.get("bias"))
        return tuple(out)  # absent biases stay as None: the stamp takes them

    def _plan(self, conv_bns: Optional[tuple] = None):
        """The block's fused calls with their folded/packed weights, rebuilt when any source
        tensor changed (same rule as the layers' own caches: version counter and storage address
        of every source, the objects themselves, and the BN eps)."""
        expand, dw, se, project = self.__dict__["_parts"]
        conv_bns = conv_bns or self._conv_bns()
        sources = self._sources(conv_bns)
        stamp = _stamp(sources)
        if stamp is not None:
            stamp = (stamp, tuple(bn.eps for _, bn in conv_bns), torch.is_inference_mode_enabled())
        cache = self._cache()
        cached = cache.get("plan")
        # cached[0] keeps the sources alive: their ids in the stamp stay theirs.
        if cached is not None and stamp is not None and cached[1] == stamp:
            return cached[2]
        conv, bn = dw._conv_and_bn()
        dw_weight, dw_bias = dw._folded(conv.weight, conv.bias, bn)
        # The arguments of mnv3::inverted_residual_packed after x.
        plan = (
            None if expand is None else expand._packed(),
            conv.in_channels if expand is None else expand.out_channels,
            "none" if expand is None else expand.activation,
            dw_weight, dw_bias, *_conv_geometry(conv), dw.activation,
            *((None,) * 4 if se is None else _gate_args(se)),
            project._packed(), project.out_channels, self.__dict__["_residual"],
        )
        if stamp is not None:
            cache["plan"] = (sources, stamp, plan)
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv_bns = self._conv_bns()
        why = self._why_layer_by_layer(x, conv_bns)
        if why is not None:
            self._count("layer by layer", why)
            return self.__dict__["_original_type"].forward(self, x)
        self._count("fused", "cpu")
        # One call for the whole block (csrc/cpu/inverted_residual.cpp): channels_last out.
        return _OPS["block"](x, *self._plan(conv_bns))

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """Add this block to a LayerChain (see FusedSequential); else why it cannot be. The chain
        watches what _why_layer_by_layer and _plan read, so it is rebuilt whenever they could
        change their answer."""
        conv_bns = self._conv_bns()
        why = self._why_layer_by_layer(x, conv_bns)
        if why is not None:
            return why
        chain.add_block(*self._plan(conv_bns))
        d = self.__dict__
        expand, dw, se, project = d["_parts"]
        why = _watch_hooks(chain, self)
        chain.watch_value(d, "training")
        for modules, _ in d["_children"]:
            chain.watch_members(modules)
        for part in (expand, dw, project):
            if part is not None:
                chain.watch_value(part.__dict__, "_backend")
        for conv, bn in conv_bns:
            why = why or _watch_conv_bn(chain, conv, bn)
        if se is not None:
            chain.watch_value(se.__dict__, "training")
            chain.watch_members(se._modules)
            for role in ("fc1", "fc2"):
                why = why or _watch_params(chain, se._modules[se._roles[role]])
        for m in d["_passthrough"]:
            chain.watch_value(m.__dict__, "training")
        return why

    def extra_repr(self) -> str:
        expand, dw, se, project = self.__dict__["_parts"]
        parts = ["expand"] * (expand is not None) + ["depthwise"] + ["se"] * (se is not None) + ["project"]
        return " -> ".join(parts) + (" + input" if self.__dict__["_residual"] else "")


# ----------------------------------------------------------------------------------------------
# Global average pool
# ----------------------------------------------------------------------------------------------
def global_pool_unsupported_reason(pool: nn.Module) -> Optional[str]:
    """Why `pool` is not an ``nn.AdaptiveAvgPool2d`` to a 1x1 map (None if it is one)."""
    if type(pool) is not nn.AdaptiveAvgPool2d:
        return f"{type(pool).__name__} is not an nn.AdaptiveAvgPool2d"
    size = pool.output_size
    if size not in (1, (1, 1), [1, 1]):
        return f"output_size={size!r} (only a global pool, output_size=1, is fused)"
    return None


class FusedGlobalAvgPool(FusedModule, nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` on the fused kernel (``ops.global_avg_pool``): on the CPU in
    float32 the per-(n, c) means are taken by all threads (PyTorch's pools a 1-sample
    channels_last map on one). No parameters; anywhere else (other devices or dtypes, tracing)
    it is the original pool."""

    def __init__(self, pool: nn.AdaptiveAvgPool2d, *, backend: str = "auto"):
        reason = global_pool_unsupported_reason(pool)
        if reason is not None:
            raise ValueError(f"cannot fuse this pool: {reason}")
        nn.AdaptiveAvgPool2d.__init__(self, pool.output_size)
        self.backend = backend
        self.train(pool.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return F.adaptive_avg_pool2d(x, self.output_size)
        if x.dim() != 4:
            self._count("unfused", f"{x.dim()}-D input")
            return F.adaptive_avg_pool2d(x, self.output_size)
        chosen = self._run_backend(x, conv_like=False, op="global_avg_pool")
        if chosen == "reference":
            return F.adaptive_avg_pool2d(x, self.output_size)
        return _OPS["pool"](x)

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """Add this pool to a LayerChain after a model's features (see FusedMobileNetV3)."""
        d = self.__dict__
        chain.watch_value(d, "_backend")
        chain.watch_value(d, "output_size")
        if d["_backend"] not in ("auto", "cpu"):
            return f"backend {d['_backend']!r} is not the CPU kernels"
        if self.output_size not in (1, (1, 1), [1, 1]):
            return f"output_size={self.output_size!r} is not a global pool"
        chain.add_pool()
        return _watch_hooks(chain, self)


# ----------------------------------------------------------------------------------------------
# A chain's owner as one operator under torch.compile
# ----------------------------------------------------------------------------------------------
# Traced layer by layer, a converted model folds every BatchNorm and packs every 1x1 weight
# inside the compiled graph, on every call (MobileNetV3-Large at batch 1, 2 threads: 5.6 ms,
# against 2.2 ms for the same model in eager mode). Under torch.compile -- not torch.export or
# ONNX export, whose programs must stand on their own -- a chain owner (FusedSequential,
# FusedMobileNetV3) in eval mode without autograd is instead one call of mnv3::chain_owner_call:
# when the compiled code reaches it, the owner's cached LayerChain runs, checked as in eager mode.
# The op takes every parameter and buffer of the owner, so the graph depends on them, and runs the
# chain only while the chain's weights derive from exactly those tensors (else, as under
# torch.func.functional_call with other tensors, the owner's eager forward on the given ones).

# id(owner) -> owner (weakly): the compiled graph names its owner by id; registered when a chain
# owner is made (construction, unpickling, copying, convert's class change).
_CHAIN_OWNERS: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


def register_chain_owner(owner: nn.Module) -> None:
    _CHAIN_OWNERS[id(owner)] = owner
    # The cache exists before torch.compile traces the owner: the first compiled call, which fills
    # it, then changes no key of the owner's __dict__ (on which the graph has guards).
    owner._cache()


def _owner_of(token: int) -> nn.Module:
    owner = _CHAIN_OWNERS.get(token)
    if owner is None:
        raise RuntimeError("mnv3::chain_owner_call: the module this compiled code was traced from no longer "
                           "exists; compile the model again")
    return owner


def _conv_step(out_channels: int, conv: nn.Conv2d) -> Optional[tuple]:
    pad = _static_padding(conv)
    if pad is None:
        return None
    return (("conv", out_channels, tuple(conv.kernel_size), tuple(conv.stride), tuple(pad), tuple(conv.dilation)),)


def chain_size_steps(m: nn.Module) -> Optional[tuple]:
    """How a chain built from `m` changes its input's size, as constants (apply_size_steps), or
    None for a layer it does not know. Mirrors the chain's steps; the operator checks the real
    output against the result."""
    if isinstance(m, FusedSequential):
        steps = ()
        for child in m._modules.values():
            more = chain_size_steps(child)
            if more is None:
                return None
            steps += more
        return steps
    if _chain_activation(m) is not None or type(m) is nn.Dropout:
        return ()
    if isinstance(m, FusedLinear):
        return (("linear", m.out_features),)
    if isinstance(m, FusedGlobalAvgPool):
        return (("pool",),)
    if isinstance(m, FusedPointwiseConvBNAct):
        return (("conv", m.out_channels, (1, 1), (1, 1), (0, 0), (1, 1)),)
    if isinstance(m, FusedConvBNAct):
        conv = m._conv_and_bn()[0]
        return _conv_step(conv.out_channels, conv)
    if isinstance(m, FusedInvertedResidual):
        _, dw, _, project = m.__dict__["_parts"]
        return _conv_step(project.out_channels, dw._conv_and_bn()[0])
    return None


def apply_size_steps(steps: tuple, size: list) -> Optional[list]:
    """The size after `steps` (chain_size_steps) from an input of `size` (ints, or the symbolic
    sizes of a trace), or None where a step does not take that rank."""
    size = list(size)
    for step in steps:
        kind = step[0]
        if kind == "linear" and len(size) == 2:
            size = [size[0], step[1]]
        elif kind == "flatten" and len(size) == 4:
            size = [size[0], size[1] * size[2] * size[3]]
        elif kind == "pool" and len(size) == 4:
            size = [size[0], size[1], 1, 1]
        elif kind == "conv" and len(size) == 4:
            _, out, k, s, p, d = step
            size = [size[0], out] + [(size[2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in (0, 1)]
        else:
            return None
    return size


def _owner_named_tensors(owner: nn.Module) -> list:
    """(name, tensor) of every parameter, then every buffer: the op's `sources`, in order."""
    return list(owner.named_parameters()) + list(owner.named_buffers())


def _owner_tensors(owner: nn.Module) -> list:
    return [t for _, t in _owner_named_tensors(owner)]


@torch.compiler.assume_constant_result
def _traced_size_steps(owner: int) -> Optional[tuple]:
    """The registered owner's chain_size_steps, evaluated when torch.compile traces the call (a
    constant of the graph: no guard on every layer it reads)."""
    module = _CHAIN_OWNERS.get(owner)
    return None if module is None else module._chain_size_steps()


def _output_strides(size) -> Tuple[int, ...]:
    """The strides of mnv3::chain_owner_call's output: channels_last if 4-D, else (2-D) contiguous."""
    if len(size) == 4:
        n, c, h, w = size
        return (h * w * c, 1, w * c, c)
    return (size[1], 1)


def compiled_chain_call(owner: nn.Module, x: torch.Tensor, dims: tuple) -> Optional[torch.Tensor]:
    """Under torch.compile: owner's forward on x as one mnv3::chain_owner_call (see above), or None
    where the call is traced as it is (export, autograd, training mode, autocast, hooks on the
    owner or global ones, another device, dtype or rank, a layer whose output size is not known).
    The op's checks when it runs are the eager ones: a layer set to training mode or given hooks
    after compiling runs in the owner's eager forward, as it would without torch.compile."""
    if (not _extension.LOADED or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or _global_forward_hooks()
            or owner.training or owner._forward_hooks or owner._forward_pre_hooks
            or not (x.is_cpu and x.dtype == torch.float32 and x.dim() in dims)):
        return None
    steps = _traced_size_steps(id(owner))
    size = None if steps is None else apply_size_steps(steps, x.shape)
    if size is None:
        return None
    return torch.ops.mnv3.chain_owner_call.default(x, _owner_tensors(owner), id(owner), size)


def _chain_owner_call(x: torch.Tensor, sources, owner: int, size) -> torch.Tensor:
    module = _owner_of(owner)
    cache = module.__dict__.get("_mnv3_cache")
    cached = cache.get("chain") if cache is not None else None
    # The eager fast path (LayerChain.run_checked), while the chain computes from `sources`.
    y = cached[1].run_checked(x) if cached is not None and cached[1].reads_only(sources) else None
    if y is None:
        chain = module._chain(x)
        if not isinstance(chain, str) and chain.reads_only(sources):
            module._count("fused", "cpu")
            y = module._run_chain(chain, x)
        else:
            named = _owner_named_tensors(module)
            if len(named) != len(sources):
                raise RuntimeError("mnv3::chain_owner_call: the module's parameters and buffers changed "
                                   "since it was compiled; compile it again")
            if all(t is s for (_, t), s in zip(named, sources)):
                # No chain now (a layer set to training mode, another backend, hooks...): the
                # eager forward, which says why in path_stats().
                y = type(module).forward(module, x)
            else:
                module._count("layer by layer", "called with other tensors than the module's own")
                y = torch.func.functional_call(module, {n: s for (n, _), s in zip(named, sources)}, (x,))
    if list(y.shape) != list(size):
        raise RuntimeError(f"mnv3::chain_owner_call: the output is {tuple(y.shape)} but {tuple(size)} was "
                           "traced (a layer changed since the model was compiled: compile it again)")
    if y.stride() == _output_strides(size):
        return y
    return _fake_chain_owner_call(x, sources, owner, size).copy_(y)


def _fake_chain_owner_call(x: torch.Tensor, sources, owner: int, size) -> torch.Tensor:
    return torch.empty_strided(size, _output_strides(size), dtype=x.dtype, device=x.device)


if _extension.LOADED:
    _CHAIN_LIBRARY = torch.library.Library("mnv3", "FRAGMENT")
    _CHAIN_LIBRARY.define("chain_owner_call(Tensor x, Tensor[] sources, int owner, SymInt[] size) -> Tensor")
    _CHAIN_LIBRARY.impl("chain_owner_call", _chain_owner_call, "CPU")
    torch.library.register_fake("mnv3::chain_owner_call", _fake_chain_owner_call)


# ----------------------------------------------------------------------------------------------
# A Sequential of fused layers as one call
# ----------------------------------------------------------------------------------------------
def _watch_hooks(chain, module: nn.Module) -> Optional[str]:
    """The chain skips the layer's __call__: it must have no forward hooks, now or later."""
    d = module.__dict__
    chain.watch_members(d["_forward_hooks"])
    chain.watch_members(d["_forward_pre_hooks"])
    chain.watch_value(d, "forward")  # an instance attribute replacing forward
    if d["_forward_hooks"] or d["_forward_pre_hooks"] or "forward" in d:
        return "a layer has forward hooks or a replaced forward"
    return None


def _watch_params(chain, module: nn.Module, buffers: bool = False) -> Optional[str]:
    """Watch a module's parameters (and buffers): the same tensors, unchanged contents."""
    dicts = (module._parameters, module._buffers) if buffers else (module._parameters,)
    for d in dicts:
        chain.watch_members(d)
        for t in d.values():
            if t is not None and not chain.watch_tensor(t):
                return "a parameter is an inference tensor (nothing derived from it is cached)"
    return None


def _watch_conv_bn(chain, conv: nn.Module, bn: nn.Module) -> Optional[str]:
    chain.watch_value(bn.__dict__, "training")
    chain.watch_value(bn.__dict__, "eps")
    return _watch_params(chain, conv) or _watch_params(chain, bn, buffers=True)


def _watch_layer(chain, layer: nn.Module, conv: nn.Module, bn: nn.Module) -> Optional[str]:
    """What a fused conv + BN + act Sequential's step depends on."""
    d = layer.__dict__
    chain.watch_value(d, "training")
    chain.watch_value(d, "_backend")
    chain.watch_members(d["_modules"])
    return _watch_hooks(chain, layer) or _watch_conv_bn(chain, conv, bn)


def served_by_chain(owner: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The fast path of a module that runs a cached LayerChain: its output for x, or None (the
    module then takes its checked path, ``cached_chain``). The chain itself checks x, the
    autograd, inference and tracing state, the owner and everything its layers' checks read
    (``LayerChain.run_checked``); only ``torch.compile``'s tracing must be seen from Python."""
    if torch.compiler.is_compiling():
        return None
    cache = owner.__dict__.get("_mnv3_cache")
    cached = cache.get("chain") if cache is not None else None
    return cached[1].run_checked(x) if cached is not None else None


def cached_chain(owner: nn.Module, x: torch.Tensor, dims: tuple, build, flat_out: bool = False,
                 owner_keys: tuple = ()):
    """The LayerChain `owner` (a FusedModule) runs on x, or why none can: cached in owner's
    cache and rebuilt with ``build(chain, x)`` (None, or why it cannot) whenever the chain's
    checks (``valid()``), owner's children or any ``refresh()`` say it may be stale. The chain
    serves ``served_by_chain`` too; flat_out: its (N, C, 1, 1) output comes back as (N, C);
    owner_keys: more entries of owner's __dict__ that the fast path must find unchanged."""
    d = owner.__dict__
    if d["training"]:
        return "training mode"
    if not (x.is_cpu and x.dtype == torch.float32 and x.dim() in dims):
        return f"{x.dim()}-D {str(x.dtype).replace('torch.', '')} input on {x.device.type}"
    if torch.is_grad_enabled():
        return "autograd is enabled (torch.no_grad() or torch.inference_mode() runs one chain)"
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return "traced (torch.compile, torch.export or ONNX export)"
    if _global_forward_hooks():
        return "global forward hooks"
    key = (_REFRESHES["count"], torch.is_inference_mode_enabled(), x.dim(), tuple(d["_modules"].values()))
    cache = owner._cache()
    cached = cache.get("chain")
    if cached is not None and cached[0] == key and cached[1].valid():
        return cached[1]
    cache.pop("chain", None)
    if not _extension.LOADED:
        return "the compiled library is not loaded"
    chain = _extension._C.LayerChain()
    why = build(chain, x)
    if why is not None:
        return why
    # What the checks above read, for run_checked (the rest it checks itself).
    chain.watch_value(_REFRESHES, "count")
    chain.watch_members(_nn_module._global_forward_hooks)
    chain.watch_members(_nn_module._global_forward_pre_hooks)
    chain.watch_members(d["_modules"])
    chain.watch_owner(owner, ["training", "_modules", *owner_keys])
    chain.serve(x.dim(), flat_out, torch.is_inference_mode_enabled(), type(owner).__name__)
    cache["chain"] = (key, chain)
    return chain


class FusedSequential(FusedModule, nn.Sequential):
    """An ``nn.Sequential`` of fused layers (a model's feature extractor: stem, inverted-residual
    blocks, head conv) that runs them in one call from Python.

    ``FusedSequential(seq)`` adopts `seq`'s children under their names (the state_dict is
    unchanged). Its children are ``FusedConvBNAct``, ``FusedPointwiseConvBNAct``,
    ``FusedInvertedResidual`` or ``FusedSequential`` (``CHAINABLE``) on 4-D inputs, or
    ``FusedLinear`` on (N, features) (a classifier: Linear -> Hardswish -> Dropout -> Linear);
    after the first, activation modules (applied in the previous 1x1 step's epilogue) and
    ``nn.Dropout`` (the identity in eval mode) too.

    In eval mode on a float32 CPU tensor, with no gradient to record (``torch.no_grad()`` or
    ``torch.inference_mode()``), the children's fused calls are collected once into a
    ``LayerChain`` (csrc/python/layer_chain.cpp) that runs them back to back in C++: no Python,
    no dispatcher and no idle OpenMP workers between the layers. The chain records what the
    children's own checks read -- training flags, which layers and parameters the modules hold,
    each weight's version counter and storage, BN eps, backends, forward hooks -- and is rebuilt
    when any of it changes (or after ``refresh()`` of any fused layer). A torch.compile graph
    calls it as one operator that runs the chain (``compiled_chain_call``). Otherwise (training,
    autograd, export, another device or dtype, a child that cannot be chained) it is an
    ``nn.Sequential``: each child runs on its own path.
    """

    def __init__(self, seq):
        nn.Sequential.__init__(self)
        if isinstance(seq, OrderedDict):  # what nn.Sequential's slicing passes its own class
            seq = nn.Sequential(seq)
        if not isinstance(seq, nn.Sequential):
            raise TypeError(f"FusedSequential: seq must be an nn.Sequential, got {type(seq).__name__}")
        reason = chain_unsupported_reason(seq)
        if reason is not None:
            raise ValueError(f"FusedSequential: {reason}")
        for name, child in seq._modules.items():
            self._modules[name] = child
        self.backend = "auto"  # the layers keep their own backends; this one is not used
        self.training = seq.training  # the container's flag: the children keep their own
        register_chain_owner(self)

    def __setstate__(self, state):
        super().__setstate__(state)
        register_chain_owner(self)

    def __getitem__(self, idx):
        """A slice is a FusedSequential where its layers can be one (an nn.Sequential of the same
        children where they cannot: one starting with an activation, say), in this one's mode."""
        if not isinstance(idx, slice):
            return nn.Sequential.__getitem__(self, idx)
        part = nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        part.training = self.training  # this container's flag only: the children are shared
        return FusedSequential(part) if chain_unsupported_reason(part) is None else part

    def _chain(self, x: torch.Tensor):
        """The LayerChain serving x, or why none can."""
        return cached_chain(self, x, (2, 4), self._chain_children)

    def _chain_children(self, chain, x: torch.Tensor) -> Optional[str]:
        for i, (name, child) in enumerate(self.__dict__["_modules"].items()):
            if isinstance(child, CHAINABLE):
                why = child._chain_into(chain, x)
            elif i and type(child) is nn.Dropout:
                chain.watch_value(child.__dict__, "training")
                why = "training mode" if child.training else _watch_hooks(chain, child)
            elif i and _chain_activation(child) is not None:
                why = _watch_hooks(chain, child)
                for key in ("min_val", "max_val"):  # a Hardtanh's bounds name its activation
                    chain.watch_value(child.__dict__, key)
                if why is None:
                    try:
                        chain.merge_activation(_chain_activation(child))
                    except ValueError:
                        why = "an activation that no 1x1 layer right before it can apply"
            else:
                why = "not a fused layer"
            if why is not None:
                return f"layer {name}: {why}"
        return None

    def _chain_into(self, chain, x: torch.Tensor) -> Optional[str]:
        """As a child of another FusedSequential: its layers join the parent's chain."""
        d = self.__dict__
        chain.watch_value(d, "training")
        chain.watch_members(d["_modules"])
        chain.watch_value(d, "_modules")
        if d["training"]:
            return "training mode"
        return _watch_hooks(chain, self) or self._chain_children(chain, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = served_by_chain(self, x)
        if y is not None:
            return y
        if torch.compiler.is_compiling():
            y = compiled_chain_call(self, x, (2, 4))
            if y is not None:
                return y
        chain = self._chain(x)
        if isinstance(chain, str):
            self._count("layer by layer", chain)
            return nn.Sequential.forward(self, x)
        self._count("fused", "cpu")
        return self._run_chain(chain, x)

    def _chain_size_steps(self) -> Optional[tuple]:
        return chain_size_steps(self)

    @staticmethod
    def _run_chain(chain, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (N, K) as (N, K, 1, 1): one pixel per sample, what the 1x1 kernels read
            n = x.shape[0]
            y = chain(x.reshape(n, x.shape[1], 1, 1))
            return y.view(n, y.shape[1])
        return chain(x)


def _chain_activation(m: nn.Module) -> Optional[str]:
    """The epilogue name of an activation module a chain can merge (None: it cannot)."""
    if type(m) is Hardswish:
        return "hardswish"
    name = activation_name(m)
    return name if name not in (None, "none") else None


def chain_unsupported_reason(seq: nn.Sequential) -> Optional[str]:
    """Why `seq` cannot be a FusedSequential (None if it can): its first child must be one of
    CHAINABLE, every layer on the same kind of input (feature maps or (N, features)), and the
    others chainable layers, activations or dropout."""
    children = list(seq._modules.items())
    if not children or not isinstance(children[0][1], CHAINABLE):
        first = type(children[0][1]).__name__ if children else "nothing"
        return f"the first child must be one of {', '.join(t.__name__ for t in CHAINABLE)}, got {first}"
    layers = [m for _, m in children if isinstance(m, CHAINABLE)]
    if any(isinstance(m, FusedLinear) for m in layers) and not all(isinstance(m, FusedLinear) for m in layers):
        return "it mixes FusedLinear with layers on feature maps"
    for name, m in children[1:]:
        if not (isinstance(m, CHAINABLE) or type(m) is nn.Dropout or _chain_activation(m) is not None):
            return f"child {name} ({type(m).__name__}) is not a fused layer, an activation or nn.Dropout"
    return None


def _global_forward_hooks() -> bool:
    return bool(_nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks)


CHAINABLE = (FusedConvBNAct, FusedPointwiseConvBNAct, FusedInvertedResidual, FusedSequential, FusedLinear)


def _submodule(module: nn.Module, path: str) -> Optional[nn.Module]:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None
