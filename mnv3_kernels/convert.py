"""Model surgery: replace the conv+BN+act and squeeze-excite parts of torchvision and timm
MobileNetV3, MobileNetV2, MNASNet and EfficientNet-Lite (and anything built from the same pieces)
with the fused modules.

    model = mnv3_kernels.convert(model)        # same object, converted in place
    print(model.mnv3_report)                   # what was replaced, what was left alone and why

Recognized structures (everything else is left untouched):

- ``nn.Sequential(conv, bn[, act])`` with children "0", "1"[, "2"] and a depthwise conv --
  torchvision's ``Conv2dNormActivation`` -> ``FusedDepthwiseConvBNAct``; with a 1x1 stride-1
  conv -> ``FusedPointwiseConvBNAct``; with a small dense conv (a stem, at most
  ``modules.DENSE_MAX_PATCH`` inputs per output) -> ``FusedConvBNAct``.
- Any other plain ``nn.Sequential``: each run of children conv -> BatchNorm2d [-> activation]
  (torchvision MobileNetV2's ``InvertedResidual.conv`` projection, MNASNet's flat ``layers``)
  -> head/tail pair (``fused_conv_bn_act_pair``), the activation's slot kept by an
  ``ActivationSlot``. An activation that cannot be fused stays where it is, after a fused
  conv + BN.
- torchvision MobileNetV3 ``InvertedResidual`` whose layers all fused -> ``FusedInvertedResidual``
  (one call for the block: the squeeze-excite gate folded into the projection, the residual
  added in its epilogue).
  MobileNetV2 and MNASNet blocks keep their own module; their layers are fused.
- timm ``DepthwiseSeparableConv`` (``conv_dw`` -> ``bn1``, ``conv_pw`` -> ``bn2``) and
  ``InvertedResidual`` (``conv_pw`` -> ``bn1``, ``conv_dw`` -> ``bn2``, ``conv_pwl`` -> ``bn3``),
  whose BNs are ``BatchNormAct2d`` -> head/tail pairs; the same for the stem (``conv_stem`` ->
  ``bn1``) of timm's ``EfficientNet``, ``EfficientNetFeatures`` and ``MobileNetV3`` and the head
  conv (``conv_head`` -> ``bn2``) of ``EfficientNet``, ``ConvBnAct`` (``conv`` -> ``bn1``) and the
  stem of ``MobileNetV3Features`` (a plain BN). Then a ``DepthwiseSeparableConv`` or
  ``InvertedResidual`` whose parts all fused, with no anti-aliasing layer (``aa`` would run
  between the depthwise conv and the projection) and no space-to-depth conv ->
  ``FusedInvertedResidual``; where it cannot run whole, its layers stay fused one by one.
  ``MobileNetV3``'s classifier head, ``conv_head`` (a 1x1 conv with a bias, no BN) ->
  ``norm_head`` (``nn.Identity``) -> ``act2``, becomes a head/tail pair whose tail replaces
  ``act2`` (960 -> 1280 + h-swish on the pooled map at batch 1: 53 vs 78 us for PyTorch's conv
  and h-swish, one thread).
- torchvision ``SqueezeExcitation`` and timm ``SqueezeExcite`` -> ``FusedSqueezeExcite``.
- ``nn.Linear`` (the classifier; timm's ``Linear`` too) -> ``FusedLinear``: the packed GEMM
  kernels, whose matrix-vector product at batch 1 splits the weights over the threads.
- torchvision ``MobileNetV3``'s ``avgpool`` -> ``FusedGlobalAvgPool`` (``ops.global_avg_pool``).
- Last, a plain ``nn.Sequential`` whose children all ended up fused as stems, 1x1 convs, blocks
  or such Sequentials (torchvision's ``features``, timm's ``blocks`` and their stages), or as
  ``FusedLinear`` with activations and dropout between them (torchvision MobileNetV3's
  ``classifier``) -> ``FusedSequential``: in eval mode without autograd its layers run as one
  C++ call.
- Then torchvision's ``MobileNetV3`` itself (not a subclass), once its features, avgpool and
  classifier are fused -> ``FusedMobileNetV3`` (``models.py``; the same object, its class
  changed, ``revert`` changes it back): in eval mode without autograd features, pool and
  classifier run as one C++ call.

The depthwise conv's BatchNorm may also be torchvision's ``FrozenBatchNorm2d`` (detection
backbones built for pretrained weights): it always folds.

A candidate that cannot be served exactly (TF-'same' ``Conv2dSame``, padding modes other than
zeros, grouped but not depthwise convs, BN without running statistics, activations other than
ReLU/ReLU6/Hardswish/Identity, gates other than hard-sigmoid, forward hooks that a fused call
would skip, ...) is left alone and listed in the report with the reason. Only module objects are
swapped: Parameters and buffers are the same objects, so ``state_dict`` keys, values and order
are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from . import modules as M
from .revert import remember_original

__all__ = ["convert", "conversion_report", "ConversionReport", "ConversionEntry"]


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
KINDS = {"conv": "dense conv+BN+act (stem)", "dwconv": "depthwise conv+BN+act",
         "pwconv": "pointwise conv+BN+act",
         "se": "squeeze-excite", "block": "inverted-residual block", "linear": "linear (classifier)",
         "sequence": "sequence of fused layers (one call)", "pool": "global average pool",
         "model": "whole model (one call)"}


@dataclass
class ConversionEntry:
    """One candidate: where it is, what it is, and whether it was fused (else why not)."""

    path: str
    kind: str            # "conv" | "dwconv" | "pwconv" | "se" | "block" | "linear" | "sequence" | "pool" | "model"
    status: str          # "fused" | "skipped" | "already fused"
    shape: str           # e.g. "C=72 k=5x5 stride=2 dilation=1 act=relu" or "C=72 squeeze=24"
    reason: str = ""

    def __str__(self) -> str:
        text = f"{self.status:<13} {self.kind:<6} {self.path or '<root>'}  {self.shape}"
        return text + (f"  -- {self.reason}" if self.reason else "")


@dataclass
class ConversionReport:
    """What ``convert`` did: one entry per candidate, fused or skipped (with the reason).

    ``str(report)`` is a readable summary; ``counts()`` gives numbers per kind and status.
    """

    backend: str = "auto"
    entries: List[ConversionEntry] = field(default_factory=list)

    def _select(self, status: str, kind: Optional[str]) -> List[ConversionEntry]:
        return [e for e in self.entries if e.status == status and (kind is None or e.kind == kind)]

    def fused(self, kind: Optional[str] = None) -> List[ConversionEntry]:
        """Entries replaced by this conversion (optionally of one kind: "dwconv" or "se")."""
        return self._select("fused", kind)

    def skipped(self, kind: Optional[str] = None) -> List[ConversionEntry]:
        """Candidates left alone, each with its reason."""
        return self._select("skipped", kind)

    def counts(self) -> Dict[str, Dict[str, int]]:
        """{kind: {status: count}} for every kind."""
        out = {k: {"fused": 0, "skipped": 0, "already fused": 0} for k in KINDS}
        for e in self.entries:
            out[e.kind][e.status] += 1
        return out

    def __str__(self) -> str:
        counts = self.counts()
        lines = [f"mnv3_kernels conversion (backend={self.backend!r})"]
        for kind, label in KINDS.items():
            c = counts[kind]
            extra = f", {c['already fused']} already fused" if c["already fused"] else ""
            lines.append(f"  {label}: {c['fused']} fused, {c['skipped']} skipped{extra}")
        lines += [f"    {e}" for e in self.entries]
        return "\n".join(lines)


def _dw_shape(conv, act_name: Optional[str]) -> str:
    k = "x".join(str(v) for v in conv.kernel_size)
    stride = conv.stride[0] if conv.stride[0] == conv.stride[1] else tuple(conv.stride)
    dilation = conv.dilation[0] if conv.dilation[0] == conv.dilation[1] else tuple(conv.dilation)
    return (f"C={conv.out_channels} k={k} stride={stride} dilation={dilation} "
            f"act={act_name if act_name else '?'}")


def _pw_shape(conv, act_name: Optional[str]) -> str:
    return f"{conv.in_channels}->{conv.out_channels} act={act_name if act_name else '?'}"


def _dense_shape(conv, act_name: Optional[str]) -> str:
    k = "x".join(str(v) for v in conv.kernel_size)
    return (f"{conv.in_channels}->{conv.out_channels} k={k} stride={tuple(conv.stride)} "
            f"act={act_name if act_name else '?'}")


def _act_label(act) -> str:
    return M.activation_name(act) or type(act).__name__


# Per kind of conv: its report shape and why it cannot be fused (None if it can).
_CONV_KINDS = {
    "dwconv": (_dw_shape, M.depthwise_unsupported_reason),
    "pwconv": (_pw_shape, M.pointwise_unsupported_reason),
    "conv": (_dense_shape, M.dense_unsupported_reason),
}


def _conv_kind(conv: nn.Conv2d) -> Optional[str]:
    """What a conv followed by a BN is fused as: "dwconv" (any grouped conv: the depthwise rules
    say why one that is not depthwise is refused), "pwconv" (1x1), "conv" (a small dense conv,
    a stem), or None (a larger dense conv: PyTorch's own is faster)."""
    if conv.groups > 1:
        return "dwconv"
    if tuple(conv.kernel_size) == (1, 1):
        return "pwconv"
    if conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= M.DENSE_MAX_PATCH:
        return "conv"
    return None


def _block_shape(layers: int, residual) -> str:
    return f"{layers} layers, residual={bool(residual)}"


def _fused_block_shape(block: M.FusedInvertedResidual) -> str:
    return _block_shape(sum(p is not None for p in block._parts), block._residual)


def _placement_reason(path: str, module: Optional[nn.Module]) -> Optional[str]:
    """Why `module` cannot be swapped out whatever it computes (None if it can): the root has no
    parent to hold a replacement, and forward hooks on it or its children would be skipped by the
    fused call (timm's feature extraction hooks, for one)."""
    if not path:
        return "the root module cannot be replaced in place"
    if module is None:
        return None
    for name, m in module.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"forward hooks on {path}.{name}" if name else f"forward hooks on {path}"
    return None


def _se_shape(fc1) -> str:
    return f"C={getattr(fc1, 'in_channels', '?')} squeeze={getattr(fc1, 'out_channels', '?')}"


# ----------------------------------------------------------------------------------------------
# Structures of the model zoos (imported lazily: neither torchvision nor timm is required)
# ----------------------------------------------------------------------------------------------
def _torchvision_se():
    try:
        from torchvision.ops.misc import SqueezeExcitation
    except Exception:  # noqa: BLE001  (missing or broken torchvision: nothing of it to convert)
        return None
    return SqueezeExcitation


def _torchvision_inverted_residual():
    try:
        from torchvision.models.mobilenetv3 import InvertedResidual
    except Exception:  # noqa: BLE001
        return None
    return InvertedResidual


def _torchvision_mobilenet_v3():
    try:
        from torchvision.models.mobilenetv3 import MobileNetV3
    except Exception:  # noqa: BLE001
        return None
    return MobileNetV3


def _torchvision_frozen_bn():
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except Exception:  # noqa: BLE001
        return None
    return FrozenBatchNorm2d


def _timm_classes():
    try:
        from timm.layers import DropPath, Linear
        from timm.layers.norm_act import BatchNormAct2d
        from timm.models._efficientnet_blocks import (
            ConvBnAct, DepthwiseSeparableConv, InvertedResidual, SqueezeExcite)
        from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
        from timm.models.mobilenetv3 import MobileNetV3, MobileNetV3Features
    except Exception:  # noqa: BLE001
        return None
    # Per class: the methods that call its (conv, BN, kind) pairs, each as x = bn(conv(x)), and
    # the pairs (kind None: by the conv). A subclass overriding one of the methods may call them
    # otherwise.
    block, model = ("forward",), ("forward", "forward_features", "forward_intermediates")
    pairs = {
        DepthwiseSeparableConv: (block, (("conv_dw", "bn1", "dwconv"), ("conv_pw", "bn2", "pwconv"))),
        InvertedResidual: (block, (("conv_pw", "bn1", "pwconv"), ("conv_dw", "bn2", "dwconv"),
                                   ("conv_pwl", "bn3", "pwconv"))),
        # Stems, and EfficientNet's head conv (MobileNetV3's comes after the pooling, without BN).
        EfficientNet: (model, (("conv_stem", "bn1", "conv"), ("conv_head", "bn2", "pwconv"))),
        EfficientNetFeatures: (model, (("conv_stem", "bn1", "conv"),)),
        MobileNetV3: (model, (("conv_stem", "bn1", "conv"),)),
        MobileNetV3Features: (("forward",), (("conv_stem", "bn1", "conv"),)),  # a plain BN, then act1
        ConvBnAct: (block, (("conv", "bn1", None),)),  # MobileNetV3's last 1x1 conv
    }
    # The blocks that run as a whole (FusedInvertedResidual) once their parts are fused.
    blocks = {DepthwiseSeparableConv: dict(dw="conv_dw", se="se", project="conv_pw"),
              InvertedResidual: dict(expand="conv_pw", dw="conv_dw", se="se", project="conv_pwl")}
    # A conv with a bias and no BN, an nn.Identity, then the activation: MobileNetV3's head conv
    # on the pooled map (forward_head).
    heads = {MobileNetV3: ((("forward", "forward_head"), "conv_head", "norm_head", "act2"),)}
    return {"bn_act": BatchNormAct2d, "pairs": pairs, "blocks": blocks, "heads": heads, "se": SqueezeExcite,
            "drop_path": DropPath, "linear": Linear}  # Linear: the classifier, F.linear outside TorchScript


def _own_methods(module, cls, names) -> bool:
    return isinstance(module, cls) and all(getattr(type(module), n, None) is getattr(cls, n, None) for n in names)


def _own_forward(module, cls) -> bool:
    # A subclass that overrides forward may call its children differently.
    return isinstance(module, cls) and type(module).forward is cls.forward


_FUSED_DW = (M.FusedDepthwiseConvBNAct, M.DepthwiseConvBNActHead)
_HEAD_KINDS = {M.PointwiseConvBNActHead: "pwconv", M.DenseConvBNActHead: "conv"}


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------
class _Converter:
    def __init__(self, model: nn.Module, backend: str):
        self.model = model
        self.backend = backend
        self.report = ConversionReport(backend=backend)
        self.seen = set()  # ids of depthwise convs already accounted for
        self.done = set()  # ids of modules already visited (as part of a block)
        self.tv_se = _torchvision_se()
        self.tv_ir = _torchvision_inverted_residual()


        self.tv_frozen_bn = _torchvision_frozen_bn()
        self.timm = _timm_classes()

    def add(self, path, kind, status, shape, reason=""):
        self.report.entries.append(ConversionEntry(path, kind, status, shape, reason))

    def replace(self, path: str, new: nn.Module) -> None:
        parent_path, _, name = path.rpartition(".")
        parent = self.model.get_submodule(parent_path)
        remember_original(new, getattr(parent, name))
        setattr(parent, name, new)

    def run(self) -> ConversionReport:
        # Snapshot first: the walk must not see the modules it creates.
        for path, module in list(self.model.named_modules(remove_duplicate=True)):
            if id(module) not in self.done:
                self.visit(path, module)
        self.leftovers()
        self.chain_sequences()
        self.global_pools()
        self.whole_models()
        return self.report

    def whole_models(self) -> None:
        """torchvision's ``MobileNetV3`` whose features, pool and classifier all fused ->
        ``FusedMobileNetV3`` (the same object, its class changed): one call for the model."""
        tv = _torchvision_mobilenet_v3()
        if tv is None:
            return
        for path, module in list(self.model.named_modules()):
            if not isinstance(module, tv):
                continue
            from .models import FusedMobileNetV3, whole_model_unsupported_reason

            shape = "features -> avgpool -> classifier"
            if type(module) is FusedMobileNetV3:
                self.add(path, "model", "already fused", shape)
                continue
            reason = whole_model_unsupported_reason(module)
            if reason is not None:
                self.add(path, "model", "skipped", shape, reason)
                continue
            module.__class__ = FusedMobileNetV3
            module.backend = "auto"  # the parts keep their own backends; this one is not used
            M.register_chain_owner(module)
            self.add(path, "model", "fused", shape)

    def global_pools(self) -> None:
        """torchvision MobileNetV3's ``avgpool`` (after the features, before the classifier) ->
        FusedGlobalAvgPool."""
        tv = _torchvision_mobilenet_v3()
        if tv is None:
            return
        for path, module in list(self.model.named_modules()):
            pool = module._modules.get("avgpool") if isinstance(module, tv) else None
            if pool is None:
                continue
            where = f"{path}.avgpool" if path else "avgpool"
            if isinstance(pool, M.FusedGlobalAvgPool):  # converting twice: only the backend changes
                pool.backend = self.backend
                self.add(where, "pool", "already fused", "global")
                continue
            reason = M.global_pool_unsupported_reason(pool) or _placement_reason(where, pool)
            if reason is not None:
                self.add(where, "pool", "skipped", "global", reason)
                continue
            self.replace(where, M.FusedGlobalAvgPool(pool, backend=self.backend))
            self.add(where, "pool", "fused", "global")

    def chain_sequences(self) -> None:
        """Plain Sequentials made only of fused stems, 1x1 convs and blocks -> FusedSequential,
        innermost first (a stage inside timm's ``blocks`` joins its parent's chain)."""
        for path, module in reversed(list(self.model.named_modules(remove_duplicate=True))):
            if type(module) is not nn.Sequential or M.chain_unsupported_reason(module) is not None:
                continue
            shape = f"{len(module)} layers"
            reason = _placement_reason(path, module)
            if reason is not None:
                self.add(path, "sequence", "skipped", shape, reason)
                continue
            self.replace(path, M.FusedSequential(module))
            self.add(path, "sequence", "fused", shape)

    def visit(self, path: str, module: nn.Module) -> None:
        if isinstance(module, _FUSED_DW):
            # Converting twice only updates the backend.
            module.backend = self.backend
            conv = module[0] if isinstance(module, nn.Sequential) else module
            self.seen.add(id(conv))
            act = module.activation if isinstance(module, nn.Sequential) else module.tail.activation
            self.add(path, "dwconv", "already fused", _dw_shape(conv, act))
        elif isinstance(module, M.FusedSqueezeExcite):
            module.backend = self.backend
            self.add(path, "se", "already fused", _se_shape(module._role("fc1")))
        elif isinstance(module, M.FusedPointwiseConvBNAct):
            module.backend = self.backend
            self.add(path, "pwconv", "already fused", _pw_shape(module[0], module.activation))
        elif type(module) in _HEAD_KINDS:
            module.backend = self.backend
            kind = _HEAD_KINDS[type(module)]
            self.add(path, kind, "already fused", _CONV_KINDS[kind][0](module, module.activation))
        elif isinstance(module, M.FusedInvertedResidual):
            self.add(path, "block", "already fused", _fused_block_shape(module))
        elif isinstance(module, M.FusedConvBNAct):
            module.backend = self.backend
            self.add(path, "conv", "already fused", f"{module[0].in_channels}->{module.out_channels}")
        elif isinstance(module, M.FusedLinear):
            module.backend = self.backend
            self.add(path, "linear", "already fused", f"{module.in_features}->{module.out_features}")
        elif isinstance(module, M.FusedSequential):
            self.add(path, "sequence", "already fused", f"{len(module)} layers")
        elif type(module) is nn.Linear or (self.timm is not None and type(module) is self.timm["linear"]):
            self.visit_linear(path, module)
        elif self.tv_ir is not None and isinstance(module, self.tv_ir):
            self.visit_tv_block(path, module)
        elif type(module).forward is nn.Sequential.forward and isinstance(module, nn.Sequential):
            self.visit_sequential(path, module)
        elif self.tv_se is not None and isinstance(module, self.tv_se):
            self.visit_se(path, module, dict(fc1="fc1", fc2="fc2", act="activation",
                                             gate="scale_activation", pool="avgpool"),
                          own_forward=_own_forward(module, self.tv_se)
                          and type(module)._scale is self.tv_se._scale)
        elif self.timm is not None and isinstance(module, self.timm["se"]):
            self.visit_se(path, module, dict(fc1="conv_reduce", fc2="conv_expand", act="act1", gate="gate"),
                          own_forward=_own_forward(module, self.timm["se"]))
        elif self.timm is not None:
            for cls, (methods, pairs) in self.timm["pairs"].items():
                if isinstance(module, cls):
                    if cls in self.timm["blocks"]:
                        self.visit_children(path, module)  # the squeeze-excite, fused before the block
                    for conv_name, bn_name, kind in pairs:
                        self.visit_timm_pair(path, module, cls, methods, conv_name, bn_name, kind)
                    for head in self.timm["heads"].get(cls, ()):
                        self.visit_timm_head(path, module, cls, *head)
                    if cls in self.timm["blocks"]:
                        self.visit_timm_block(path, module, cls)
                    break

    # -- nn.Sequential(conv, bn[, act]) ---------------------------------------------------------
    def visit_sequential(self, path: str, seq: nn.Sequential) -> None:
        children = list(seq._modules.items())
        if (len(children) not in (2, 3) or [n for n, _ in children] != ["0", "1", "2"][: len(children)]
                or not isinstance(children[0][1], nn.Conv2d)):
            self.visit_layer_runs(path, seq)
            return
        conv, bn = children[0][1], children[1][1]
        act = children[2][1] if len(children) == 3 else None
        frozen = self.tv_frozen_bn is not None and isinstance(bn, self.tv_frozen_bn)
        if (isinstance(conv, nn.Conv2d) and conv.groups == 1 and tuple(conv.kernel_size) == (1, 1)
                and isinstance(bn, nn.modules.batchnorm._BatchNorm)):
            self.visit_pointwise(path, seq, conv, bn, act)
            return
        if (isinstance(conv, nn.Conv2d) and conv.groups == 1 and isinstance(bn, nn.modules.batchnorm._BatchNorm)
                and conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= M.DENSE_MAX_PATCH):
            self.visit_dense(path, seq, conv, bn, act)
            return
        if not (isinstance(conv, nn.Conv2d) and conv.groups > 1
                and (frozen or isinstance(bn, nn.modules.batchnorm._BatchNorm))):
            return
        self.seen.add(id(conv))
        shape = _dw_shape(conv, M.activation_name(act) or type(act).__name__)
        reason = M.depthwise_unsupported_reason(conv, bn, act)
        if reason is None and frozen and type(bn).forward is not self.tv_frozen_bn.forward:
            reason = f"{type(bn).__name__} overrides FrozenBatchNorm2d's forward"
        elif reason is None and not frozen:
            reason = M.bn_forward_reason(bn)
        self.fuse_sequential(path, seq, "dwconv", shape, reason, M.FusedDepthwiseConvBNAct)

    def fuse_sequential(self, path: str, seq: nn.Sequential, kind: str, shape: str, reason: Optional[str],
                        fused_type) -> None:
        """Replace the Sequential(conv, bn[, act]) at `path` with `fused_type`, or report why not."""
        if reason is None:
            reason = _placement_reason(path, seq)
        if reason is not None:
            self.add(path, kind, "skipped", shape, reason)
            return
        fused = fused_type.from_sequential(seq, backend=self.backend)
        # Keep public attributes such a Sequential carries (torchvision: out_channels).
        for key, value in vars(seq).items():
            if not key.startswith("_") and key not in ("training",) and key not in vars(fused):
                setattr(fused, key, value)
        self.replace(path, fused)
        self.add(path, kind, "fused", shape)

    def visit_pointwise(self, path: str, seq: nn.Sequential, conv, bn, act) -> None:
        shape = _pw_shape(conv, M.activation_name(act) or type(act).__name__)
        reason = M.pointwise_unsupported_reason(conv, bn, act) or M.bn_forward_reason(bn)
        self.fuse_sequential(path, seq, "pwconv", shape, reason, M.FusedPointwiseConvBNAct)

    def visit_linear(self, path: str, linear: nn.Linear) -> None:
        shape = f"{linear.in_features}->{linear.out_features}"
        reason = _placement_reason(path, linear)
        if reason is not None:
            self.add(path, "linear", "skipped", shape, reason)
            return
        self.replace(path, M.FusedLinear(linear, backend=self.backend))
        self.add(path, "linear", "fused", shape)

    def visit_dense(self, path: str, seq: nn.Sequential, conv, bn, act) -> None:
        shape = _dense_shape(conv, _act_label(act))
        reason = M.dense_unsupported_reason(conv, bn, act) or M.bn_forward_reason(bn)
        self.fuse_sequential(path, seq, "conv", shape, reason, M.FusedConvBNAct)

    # -- conv -> BN [-> act] runs among the children of any other Sequential ---------------------
    def visit_layer_runs(self, path: str, seq: nn.Sequential) -> None:
        items = list(seq._modules.items())
        prefix = f"{path}." if path else ""
        i = 0
        while i + 1 < len(items):
            (conv_name, conv), (bn_name, bn) = items[i], items[i + 1]
            frozen = self.tv_frozen_bn is not None and isinstance(bn, self.tv_frozen_bn)
            kind = _conv_kind(conv) if isinstance(conv, nn.Conv2d) else None
            if (kind is None or isinstance(conv, M._ConvBNActHead)
                    or not (frozen or isinstance(bn, nn.modules.batchnorm._BatchNorm))):
                i += 1
                continue
            act_name, act = items[i + 2] if i + 2 < len(items) else (None, None)
            if act is None or M.activation_name(act) is None:
                act_name = act = None  # fused as conv + BN; the activation runs as it is
            if kind == "dwconv":
                self.seen.add(id(conv))
            shape_of, reason_of = _CONV_KINDS[kind]
            shape = shape_of(conv, _act_label(act))
            reason = reason_of(conv, bn, act)
            if reason is None and (type(bn).forward is not nn.BatchNorm2d.forward
                                   or not isinstance(bn, nn.BatchNorm2d)):
                reason = f"{type(bn).__name__} is not a plain nn.BatchNorm2d"
            if reason is None:
                reason = (_placement_reason(prefix + conv_name, conv) or _placement_reason(prefix + bn_name, bn)
                          or (act is not None and _placement_reason(prefix + act_name, act)) or None)
            if reason is not None:
                self.add(prefix + conv_name, kind, "skipped", shape, reason)
                i += 2
                continue
            head, tail = M.fused_conv_bn_act_pair(conv, bn, act=act, backend=self.backend)
            self.replace(prefix + conv_name, head)
            self.replace(prefix + bn_name, tail)
            if act is not None:
                self.replace(prefix + act_name, M.ActivationSlot().train(act.training))
            self.add(prefix + conv_name, kind, "fused", shape)
            i += 2 if act is None else 3

    def visit_children(self, path: str, module: nn.Module) -> None:
        """Convert a block's layers before the block itself (the block adopts them fused)."""
        for name, child in list(module._modules.items()):
            if child is not None and id(child) not in self.done:
                self.done.add(id(child))
                self.visit(f"{path}.{name}" if path else name, child)

    def fuse_block(self, path: str, block: nn.Module, reason: Optional[str], layers: int, **parts) -> None:
        """Replace `block` by a FusedInvertedResidual over its (already fused) parts, or report why not."""
        if reason is None:
            reason = _placement_reason(path, block)
        if reason is None:
            try:
                fused = M.FusedInvertedResidual(block, **parts)
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            self.add(path, "block", "skipped", _block_shape(layers, parts.get("residual")), reason)
            return
        self.replace(path, fused)
        self.add(path, "block", "fused", _fused_block_shape(fused))

    # -- torchvision InvertedResidual: its layers first, then the block as a whole --------------
    def visit_tv_block(self, path: str, block: nn.Module) -> None:
        inner = block._modules.get("block")
        if isinstance(inner, nn.Sequential):
            self.done.add(id(inner))
            self.visit_children(f"{path}.block" if path else "block", inner)
        layers = list(inner._modules.items()) if isinstance(inner, nn.Sequential) else []
        # [1x1 expand] -> depthwise -> [squeeze-excite] -> 1x1 project, each fused
        parts, i = {}, 0
        for role, kind in (("expand", M.FusedPointwiseConvBNAct), ("dw", M.FusedDepthwiseConvBNAct),
                           ("se", M.FusedSqueezeExcite), ("project", M.FusedPointwiseConvBNAct)):
            if i < len(layers) and isinstance(layers[i][1], kind):
                parts[role], i = f"block.{layers[i][0]}", i + 1
        reason = None
        if type(block).forward is not self.tv_ir.forward:
            reason = f"{type(block).__name__} overrides InvertedResidual.forward"
        elif "dw" not in parts or "project" not in parts or i != len(layers):
            kinds = ", ".join(type(m).__name__ for _, m in layers)
            reason = f"the block's layers are not all fused ({kinds})"
        self.fuse_block(path, block, reason, len(layers), residual=bool(block.use_res_connect), **parts)

    # -- timm blocks and models: each conv -> BatchNormAct2d pair --------------------------------
    def visit_timm_pair(self, path: str, block: nn.Module, cls, methods, conv_name: str, bn_name: str,
                        kind: Optional[str]) -> None:
        conv = block._modules.get(conv_name)
        bn = block._modules.get(bn_name)
        if not isinstance(conv, nn.Conv2d) or isinstance(conv, M._ConvBNActHead):
            return
        kind = kind or _conv_kind(conv)
        if kind is None:
            return  # a larger dense conv: PyTorch's own is faster
        if kind == "dwconv":
            self.seen.add(id(conv))
        conv_path = f"{path}.{conv_name}" if path else conv_name
        act = getattr(bn, "act", None)
        shape_of, reason_of = _CONV_KINDS[kind]
        shape = shape_of(conv, _act_label(act))
        reason = None
        plain_bn = type(bn) is nn.BatchNorm2d  # no activation of its own (MobileNetV3Features' stem)
        if not _own_methods(block, cls, methods):
            reason = f"{type(block).__name__} overrides a method of {cls.__name__} ({', '.join(methods)})"
        elif not (plain_bn or _own_forward(bn, self.timm["bn_act"])):
            reason = f"{bn_name} is {type(bn).__name__}, not timm's BatchNormAct2d or an nn.BatchNorm2d"
        elif not plain_bn and type(bn.drop) not in (nn.Identity, nn.Dropout, nn.Dropout2d):
            reason = f"{bn_name}.drop is {type(bn.drop).__name__} (not identity in eval mode)"
        else:
            reason = reason_of(conv, bn, act)
        if reason is None:
            reason = _placement_reason(conv_path, conv) or _placement_reason(f"{path}.{bn_name}" if path else bn_name, bn)
        if reason is not None:
            self.add(conv_path, kind, "skipped", shape, reason)
            return
        head, tail = M.fused_conv_bn_act_pair(conv, bn, act=act, drop=getattr(bn, "drop", None), backend=self.backend)
        remember_original(head, conv)
        remember_original(tail, bn)
        setattr(block, conv_name, head)
        setattr(block, bn_name, tail)
        self.add(conv_path, kind, "fused", shape)

    def visit_timm_head(self, path: str, model: nn.Module, cls, methods, conv_name: str, norm_name: str,
                        act_name: str) -> None:
        """A conv without BN, ``x = act(norm(conv(x)))`` with ``norm`` an ``nn.Identity``: a head/tail
        pair whose tail replaces the activation."""
        conv, norm, act = (model._modules.get(name) for name in (conv_name, norm_name, act_name))
        if not isinstance(conv, nn.Conv2d) or isinstance(conv, M._ConvBNActHead):
            return
        kind = _conv_kind(conv)
        if kind is None:
            return
        conv_path = f"{path}.{conv_name}" if path else conv_name
        shape_of, reason_of = _CONV_KINDS[kind]
        shape = shape_of(conv, _act_label(act))
        if not _own_methods(model, cls, methods):
            reason = f"{type(model).__name__} overrides a method of {cls.__name__} ({', '.join(methods)})"
        elif type(norm) is not nn.Identity:
            reason = f"{norm_name} ({type(norm).__name__}) runs between {conv_name} and {act_name}"
        else:
            reason = reason_of(conv, None, act)
        if reason is None:
            reason = (_placement_reason(conv_path, conv)
                      or _placement_reason(f"{path}.{act_name}" if path else act_name, act))
        if reason is not None:
            self.add(conv_path, kind, "skipped", shape, reason)
            return
        head, tail = M.fused_conv_bn_act_pair(conv, None, act=act, backend=self.backend)
        remember_original(head, conv)
        remember_original(tail, act)
        setattr(model, conv_name, head)
        setattr(model, act_name, tail)
        self.add(conv_path, kind, "fused", shape)

    def visit_timm_block(self, path: str, block: nn.Module, cls) -> None:
        parts = dict(self.timm["blocks"][cls])
        se, aa, drop_path = (block._modules.get(name) for name in ("se", "aa", "drop_path"))
        if type(se) is nn.Identity:
            parts["se"] = None
        reason = None
        if not _own_forward(block, cls):
            reason = f"{type(block).__name__} overrides {cls.__name__}.forward"
        elif getattr(block, "conv_s2d", None) is not None:
            reason = "it starts with a space-to-depth conv (conv_s2d)"
        elif type(aa) is not nn.Identity:
            reason = f"anti-aliasing layer aa ({type(aa).__name__}) runs between the depthwise conv and the projection"
        elif type(drop_path) not in (nn.Identity, self.timm["drop_path"]):
            reason = f"drop_path is {type(drop_path).__name__}, not nn.Identity or timm's DropPath"
        layers = sum(parts[role] is not None for role in parts)
        passthrough = ("drop_path",) if type(drop_path) is self.timm["drop_path"] else ()
        self.fuse_block(path, block, reason, layers, residual=bool(getattr(block, "has_skip", False)),
                        passthrough=passthrough, **parts)

    # -- squeeze-excite --------------------------------------------------------------------------
    def visit_se(self, path: str, se: nn.Module, roles: dict, own_forward: bool) -> None:
        fc1 = se._modules.get(roles["fc1"])
        shape = _se_shape(fc1)
        kids = se._modules
        reason = None
        if not own_forward:
            reason = f"{type(se).__name__} overrides its base class's forward"
        elif se._parameters or se._buffers:
            reason = "the SE module owns parameters or buffers directly"
        elif any(name not in kids for name in roles.values()):
            reason = "missing children"
        else:
            reason = M.squeeze_excite_unsupported_reason(kids[roles["fc1"]], kids[roles["fc2"]],
                                                         kids[roles["act"]], kids[roles["gate"]])
            pool = kids.get(roles.get("pool"))
            if reason is None and pool is not None and (
                type(pool) is not nn.AdaptiveAvgPool2d or pool.output_size not in (1, (1, 1))
            ):
                reason = f"pool {type(pool).__name__} is not a global average pool"
        if reason is None:
            reason = _placement_reason(path, se)
        if reason is not None:
            self.add(path, "se", "skipped", shape, reason)
            return
        self.replace(path, M.FusedSqueezeExcite.wrap(se, backend=self.backend, **roles))
        self.add(path, "se", "fused", shape)

    # -- depthwise convs in no recognized structure ----------------------------------------------
    def leftovers(self) -> None:
        for path, module in self.model.named_modules():
            if (isinstance(module, nn.Conv2d) and not isinstance(module, _FUSED_DW)
                    and module.groups > 1 and id(module) not in self.seen):
                self.seen.add(id(module))
                self.add(path, "dwconv", "skipped", _dw_shape(module, None),
                         "not part of a recognized conv -> BatchNorm structure")


def _restore_layout(output, fmt):
    if isinstance(output, torch.Tensor):
        if output.dim() == 4 and not output.is_contiguous(memory_format=fmt):
            return output.contiguous(memory_format=fmt)
        return output
    if isinstance(output, dict):
        return type(output)((k, _restore_layout(v, fmt)) for k, v in output.items())
    if isinstance(output, (list, tuple)) and not hasattr(output, "_fields"):
        return type(output)(_restore_layout(v, fmt) for v in output)
    return output


def _layout_hook(model, args, output):
    """Fused blocks run channels_last inside the model (an NCHW input is reordered once, by the
    first block); a model called with an NCHW tensor returns its 4-D outputs in NCHW, as the
    original does. 2-D outputs (classifiers) cost nothing."""
    x = args[0] if args else None
    if (isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_contiguous()
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return _restore_layout(output, torch.contiguous_format)
    return output


_layout_hook._mnv3_layout = True  # what revert() removes


def convert(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every depthwise, 1x1 and stem conv+BN(+ReLU/ReLU6/Hardswish/none), every
    hard-sigmoid squeeze-excite and every inverted-residual block (torchvision's, timm's) of
    `model` that can be served exactly with a fused module (see the module docstring).

    Returns the same model object. The ``ConversionReport`` is attached as
    ``model.mnv3_report`` (also returned by ``conversion_report(model)``). ``backend`` is stored
    in every fused module (change it later with ``module.backend = ...``); "auto" picks per call.
    Converting an already converted model only updates the modules' backend.

    Raises TypeError if `model` is not an ``nn.Module``, ValueError for an unknown backend name
    and RuntimeError for a backend this machine cannot run.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects a torch.nn.Module, got {type(model).__name__}")
    M.check_backend(backend)
    report = _Converter(model, backend).run()
    # A FusedMobileNetV3 restores the layout itself, on its layer-by-layer path only (a hook
    # would cost every call the module's slow __call__ path: 25-40 us on Small at batch 1).
    whole = getattr(type(model), "_mnv3_original_class", None) is not None
    if ((report.fused("block") or report.fused("conv")) and not whole
            and not any(h is _layout_hook for h in model._forward_hooks.values())):
        model.register_forward_hook(_layout_hook)
    model.mnv3_report = report
    return model


def conversion_report(model: nn.Module) -> ConversionReport:
    """The report of the last ``convert(model)``; for a model converted otherwise (or loaded
    without the attribute), one listing the fused modules it holds."""
    report = getattr(model, "mnv3_report", None)
    if isinstance(report, ConversionReport):
        return report
    report = ConversionReport(backend="?")
    for path, m in model.named_modules():
        if isinstance(m, M.FusedDepthwiseConvBNAct):
            report.entries.append(ConversionEntry(path, "dwconv", "fused", _dw_shape(m[0], m.activation)))
        elif isinstance(m, M.DepthwiseConvBNActHead):
            report.entries.append(ConversionEntry(path, "dwconv", "fused", _dw_shape(m, m.tail.activation)))
        elif isinstance(m, M.FusedSqueezeExcite):
            report.entries.append(ConversionEntry(path, "se", "fused", _se_shape(m._role("fc1"))))
        elif isinstance(m, M.FusedPointwiseConvBNAct):
            report.entries.append(ConversionEntry(path, "pwconv", "fused", _pw_shape(m[0], m.activation)))
        elif type(m) in _HEAD_KINDS:
            kind = _HEAD_KINDS[type(m)]
            report.entries.append(ConversionEntry(path, kind, "fused", _CONV_KINDS[kind][0](m, m.activation)))
        elif isinstance(m, M.FusedInvertedResidual):
            report.entries.append(ConversionEntry(path, "block", "fused", _fused_block_shape(m)))
        elif isinstance(m, M.FusedConvBNAct):
            report.entries.append(ConversionEntry(path, "conv", "fused", f"{m[0].in_channels}->{m.out_channels}"))
        elif isinstance(m, M.FusedLinear):
            report.entries.append(ConversionEntry(path, "linear", "fused", f"{m.in_features}->{m.out_features}"))
        elif isinstance(m, M.FusedSequential):
            report.entries.append(ConversionEntry(path, "sequence", "fused", f"{len(m)} layers"))
        elif isinstance(m, M.FusedGlobalAvgPool):
            report.entries.append(ConversionEntry(path, "pool", "fused", "global"))
    return report

