"""Drop-in fused modules.

Three building blocks, all generic (built from plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
activation modules) and all ``state_dict``-preserving: they adopt the original Parameter and
buffer objects under the original names, so a converted model has the same keys and values,
``load_state_dict`` keeps working, and an optimizer built before the conversion still updates
the tensors the fused path reads.

``FusedDepthwiseConvBNAct``
    An ``nn.Sequential`` of (depthwise conv, BatchNorm, optional activation) -- a drop-in for
    ``nn.Sequential(conv, bn, act)`` and for torchvision's ``Conv2dNormActivation``. Children
    keep the names "0", "1", "2".

``DepthwiseConvBNActHead`` + ``BatchNormActTail``
    For blocks that hold the conv and the BN as *siblings* and call them one after the other
    (``x = self.conv_dw(x); x = self.bn(x)``): the head replaces the conv, the tail replaces
    the BN. ``fused_conv_bn_act_pair`` builds both. When the BN is in eval mode with running
    statistics, the head computes conv+BN+activation in one fused call and the tail passes its
    input through; otherwise the head is a plain conv and the tail is BN (+ dropout) +
    activation, exactly as the original. Both decide from the BN's state alone, so they agree.

``FusedSqueezeExcite``
    ``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1-conv FC layers, as one fused call.

``Hardswish`` / ``Hardsigmoid``
    Drop-ins for ``nn.Hardswish`` / ``nn.Hardsigmoid`` on the single-pass kernels, in place when
    ``inplace=True`` (as the torch modules).

Fusion rule (depthwise): BN folds into the conv when the BN is in eval mode and has running
statistics (``w' = w*g/sqrt(var+eps)``, ``b' = beta + (b - mean)*g/sqrt(var+eps)``). In
training mode the original modules run unfused, so outputs, gradients and running-statistic
updates are exactly those of the original model.

Folded weights are cached; the cache key holds each source tensor together with its
``data_ptr`` and ``_version`` counter, so any change -- in-place updates, ``load_state_dict``,
``.to()``, replacing a tensor -- recomputes the fold on the next call. The fold is computed
afresh (and not cached) while gradients flow to the parameters, and under ``torch.compile``,
where it becomes part of the traced graph.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import ops
from .reference import fold_bn

__all__ = [
    "FusedDepthwiseConvBNAct",
    "DepthwiseConvBNActHead",
    "BatchNormActTail",
    "FusedSqueezeExcite",
    "Hardswish",
    "Hardsigmoid",
    "fused_conv_bn_act_pair",
    "check_backend",
    "activation_name",
    "depthwise_unsupported_reason",
    "is_frozen_batch_norm",
    "squeeze_excite_unsupported_reason",
]

_ACTIVATION_TYPES = ((nn.ReLU, "relu"), (nn.Hardswish, "hardswish"), (nn.Identity, "none"))


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
    """The fused-kernel name of an activation module ("none", "relu", "hardswish"), or None.

    Exact types only: a subclass may compute something else.
    """
    if act is None:
        return "none"
    for cls, name in _ACTIVATION_TYPES:
        if type(act) is cls:
            return name
    return None


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
    batch norm (``is_frozen_batch_norm``); `act` is None, ``nn.Identity``, ``nn.ReLU`` or
    ``nn.Hardswish``.
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
    if is_frozen_batch_norm(bn):
        if any(bn._buffers[n].numel() != conv.out_channels for n in _FROZEN_BN_TENSORS):
            return f"{type(bn).__name__} does not have {conv.out_channels} features (conv's channels)"
    elif not isinstance(bn, nn.BatchNorm2d):
        return f"{type(bn).__name__} is not an nn.BatchNorm2d"
    elif bn.num_features != conv.out_channels:
        return f"BatchNorm has {bn.num_features} features, conv has {conv.out_channels} channels"
    elif bn.running_mean is None or bn.running_var is None:
        return "BatchNorm has no running statistics (track_running_stats=False)"
    if activation_name(act) is None:
        return f"activation {type(act).__name__} is not ReLU, Hardswish or Identity"
    return None


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
# Folded-weight cache
# ----------------------------------------------------------------------------------------------
def _stamp(sources) -> Optional[tuple]:
    """What identifies the current contents of each source tensor: its version counter (bumped
    by in-place updates, load_state_dict and optimizers) and its storage address (changed by
    ``.data =`` and ``.to()``). None when some tensor has no version counter (inference tensors):
    then nothing is cached."""
    try:
        return tuple(None if t is None else (t._version, t.data_ptr()) for t in sources)
    except RuntimeError:
        return None


class _FoldCacheMixin:
    """Folds an eval BN into a depthwise conv and caches the result (see the module docstring)."""

    def _folded(self, conv_weight, conv_bias, bn: _BatchNorm):
        sources = (conv_weight, conv_bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)
        ):
            return fold_bn(*sources, bn.eps)
        stamp = _stamp(sources)
        context = (bn.eps, torch.is_inference_mode_enabled())
        cached = self.__dict__.get("_fold_cache")
        # `is` on the tensors themselves: an equal stamp alone could belong to a new tensor.
        if (cached is not None and stamp is not None and cached[1] == stamp and cached[2] == context
                and all(a is b for a, b in zip(cached[0], sources))):
            return cached[3], cached[4]
        with torch.no_grad():
            weight, bias = fold_bn(*sources, bn.eps)
        if stamp is not None:
            self.__dict__["_fold_cache"] = (sources, stamp, context, weight, bias)
        return weight, bias

    def clear_fold_cache(self) -> None:
        """Drop the cached folded weights (they are recomputed on the next eval call)."""
        self.__dict__.pop("_fold_cache", None)

    def __getstate__(self):
        # The cache is derived data holding tensor references: never pickle or deep-copy it.
        state = self.__dict__.copy()
        state.pop("_fold_cache", None)
        return state


class _BackendMixin:
    """A per-module `backend` attribute, validated on assignment."""

    @property
    def backend(self) -> str:
        return self.__dict__["_backend"]

    @backend.setter
    def backend(self, value: str) -> None:
        self.__dict__["_backend"] = check_backend(value)


def _matches(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # The fused op wants x and the weights alike; anything else (autocast, mixed devices) runs
    # the unfused path, which PyTorch handles.
    return x.dim() == 4 and x.dtype == weight.dtype and x.device == weight.device


# ----------------------------------------------------------------------------------------------
# Depthwise conv + BN + activation as one Sequential
# ----------------------------------------------------------------------------------------------
class FusedDepthwiseConvBNAct(_FoldCacheMixin, _BackendMixin, nn.Sequential):
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
    ``act`` None, ``nn.Identity``, ``nn.ReLU`` or ``nn.Hardswish``
    (``depthwise_unsupported_reason`` says why a combination is refused).
    ``backend`` is any name of ``ops.BACKENDS`` and may be changed later (``m.backend = ...``).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                 *, backend: str = "auto"):
        reason = depthwise_unsupported_reason(conv, bn, act)
        if reason is None and isinstance(bn, _BatchNorm) and type(bn).forward is not nn.BatchNorm2d.forward:
            reason = f"{type(bn).__name__} overrides BatchNorm2d's forward"
        if reason is not None:
            raise ValueError(f"cannot fuse this depthwise conv + BN + activation: {reason}")
        super().__init__(*([conv, bn] if act is None else [conv, bn, act]))
        self.activation = activation_name(act)
        self.out_channels = conv.out_channels
        self.backend = backend

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                     *, backend: str = "auto") -> "FusedDepthwiseConvBNAct":
        """Same as the constructor: adopt `conv`, `bn` and `act` (shared, not copied)."""
        return cls(conv, bn, act, backend=backend)

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, *, backend: str = "auto") -> "FusedDepthwiseConvBNAct":
        """Replace an ``nn.Sequential(conv, bn[, act])`` (children "0", "1"[, "2"])."""
        names = list(seq._modules)
        if names not in (["0", "1"], ["0", "1", "2"]):
            raise ValueError(f"expected a Sequential with children '0', '1'[, '2'], got {names}")
        fused = cls(*seq, backend=backend)
        fused.train(seq.training)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self[0], self[1]
        if not _bn_fusable(bn) or not _matches(x, conv.weight):
            return super().forward(x)
        weight, bias = self._folded(conv.weight, conv.bias, bn)
        stride, padding, dilation = _conv_geometry(conv)
        return ops._dwconv_bn_act_trusted(x, weight, bias, stride, padding, dilation, self.activation,
                                          self.backend)

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
            raise ValueError(f"activation {type(act).__name__} is not ReLU, Hardswish or Identity")
        self.train(bn.training)

    def apply_unfused(self, x: torch.Tensor) -> torch.Tensor:
        """BN (+ dropout) + activation, as the original module computes it."""
        x = super().forward(x)
        if "drop" in self._modules:
            x = self.drop(x)
        if "act" in self._modules:
            x = self.act(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bn_fusable(self):
            return x  # the head already applied BN + activation
        return self.apply_unfused(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}, fused_into_head={_bn_fusable(self)}"


class DepthwiseConvBNActHead(_FoldCacheMixin, _BackendMixin, nn.Conv2d):
    """The conv half of a head/tail pair (see ``fused_conv_bn_act_pair``).

    An ``nn.Conv2d`` owning the original conv's ``weight``/``bias`` Parameters (same objects,
    same names). It keeps a reference to its ``BatchNormActTail`` that is *not* registered as a
    child (the tail is registered where the original BN was), so nothing is duplicated in the
    state_dict. When the tail's BN is fusable it returns conv+BN+activation in one fused call
    (the tail then passes through); otherwise it is a plain conv.
    """

    def __init__(self, conv: nn.Conv2d, tail: BatchNormActTail, *, backend: str = "auto"):
        reason = depthwise_unsupported_reason(conv, tail, tail._modules.get("act"))
        if reason is not None:
            raise ValueError(f"cannot fuse this depthwise conv + BN + activation: {reason}")
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                         conv.padding_mode, device="meta")
        self._parameters["weight"] = conv._parameters["weight"]
        self._parameters["bias"] = conv._parameters.get("bias")
        self.__dict__["_tail"] = tail
        self.backend = backend
        self.train(conv.training)

    @property
    def tail(self) -> BatchNormActTail:
        """The BN + activation module this head fuses (not a registered child)."""
        return self.__dict__["_tail"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tail = self.__dict__["_tail"]
        if not _bn_fusable(tail):
            return self._conv_forward(x, self.weight, self.bias)
        if not _matches(x, self.weight):
            # The tail passes through whenever the BN is fusable, so the head does all of it.
            return tail.apply_unfused(self._conv_forward(x, self.weight, self.bias))
        weight, bias = self._folded(self.weight, self.bias, tail)
        stride, padding, dilation = _conv_geometry(self)
        return ops._dwconv_bn_act_trusted(x, weight, bias, stride, padding, dilation, tail.activation,
                                          self.backend)

    def extra_repr(self) -> str:
        return (f"C={self.out_channels}, k={tuple(self.kernel_size)}, stride={tuple(self.stride)}, "
                f"dilation={tuple(self.dilation)}, padding={self.padding}, "
                f"activation={self.tail.activation}, backend={self.backend!r}")


def fused_conv_bn_act_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None,
                           drop: Optional[nn.Module] = None, *, backend: str = "auto"):
    """Build (head, tail) replacing sibling modules ``conv`` and ``bn`` of a block.

    Use only when the block's forward calls them adjacently, ``x = bn(conv(x))``, where ``bn``
    computes ``act(drop(batch_norm(x)))``; set ``block.<conv name> = head`` and
    ``block.<bn name> = tail``. `drop` must be identity in eval mode (e.g. ``nn.Identity``,
    ``nn.Dropout``). Parameters and buffers are shared with the originals.

    Note: forward hooks on the head see conv+BN+act output in eval mode.
    """
    tail = BatchNormActTail(bn, act=act, drop=drop)
    head = DepthwiseConvBNActHead(conv, tail, backend=backend)
    return head, tail


# ----------------------------------------------------------------------------------------------
# Squeeze-excite
# ----------------------------------------------------------------------------------------------
class FusedSqueezeExcite(_BackendMixin, nn.Module):
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
        if (self.training and not self.train_fused) or not _matches(x, fc1.weight):
            pool = self._roles["pool"]
            s = self._modules[pool](x) if pool is not None else x.mean((2, 3), keepdim=True)
            s = self._role("gate")(fc2(self._role("act")(fc1(s))))
            return x * s
        b1 = fc1.bias if fc1.bias is not None else fc1.weight.new_zeros(fc1.out_channels)
        b2 = fc2.bias if fc2.bias is not None else fc2.weight.new_zeros(fc2.out_channels)
        return ops._squeeze_excite_trusted(x, fc1.weight, b1, fc2.weight, b2, self.backend)

    def extra_repr(self) -> str:
        fc1 = self._role("fc1")
        return f"C={fc1.in_channels}, squeeze={fc1.out_channels}, backend={self.backend!r}"


class _HardActivation(_BackendMixin, nn.Module):
    _out_of_place = _in_place = None

    def __init__(self, inplace: bool = False, *, backend: str = "auto"):
        super().__init__()
        self.inplace = bool(inplace)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The in-place kernels record no autograd history; where a gradient is tracked the
        # out-of-place op (which has autograd) gives the same values and gradients.
        if self.inplace and not (x.requires_grad and torch.is_grad_enabled()):
            return type(self)._in_place(x, backend=self.backend)
        return type(self)._out_of_place(x, backend=self.backend)

    def extra_repr(self) -> str:
        return f"inplace={self.inplace}, backend={self.backend!r}"


class Hardswish(_HardActivation):
    """Drop-in for ``nn.Hardswish(inplace)``: the single-pass piecewise kernel."""

    _out_of_place, _in_place = staticmethod(ops.hardswish), staticmethod(ops.hardswish_)


class Hardsigmoid(_HardActivation):
    """Drop-in for ``nn.Hardsigmoid(inplace)``: the single-pass piecewise kernel."""

    _out_of_place, _in_place = staticmethod(ops.hardsigmoid), staticmethod(ops.hardsigmoid_)
