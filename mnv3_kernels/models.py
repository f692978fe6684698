"""Whole-model forwards: a converted torchvision ``MobileNetV3`` run as one C++ call.

``convert`` fuses torchvision's MobileNetV3 into three chains of layers -- ``features`` (a
``FusedSequential``), ``avgpool`` (``FusedGlobalAvgPool``) and ``classifier`` (a
``FusedSequential`` of ``FusedLinear``) -- and, when the model is exactly torchvision's class,
makes it a ``FusedMobileNetV3``: the same object, state_dict, children and outputs, whose
forward runs features -> pool -> classifier as one ``LayerChain`` in eval mode without
autograd. Around the three parts the original forward spends, per call, three module calls,
their chain checks and the output-layout hook in Python, each after the features have pushed
the interpreter out of the caches (measured in one process, MobileNetV3-Large at batch 1 on 2
threads: 4.07 ms per call as one chain, 4.29 ms through torchvision's forward). Under
torch.compile (eval, no autograd) the compiled graph calls that chain as one operator
(``modules.compiled_chain_call``). Otherwise (training, autograd, export, other devices or dtypes,
a part that cannot be chained) it is torchvision's forward.

This module imports torchvision: ``convert`` loads it only for a model that is one.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torchvision.models.mobilenetv3 import MobileNetV3

from . import modules as M

__all__ = ["FusedMobileNetV3", "whole_model_unsupported_reason"]


def whole_model_unsupported_reason(model: nn.Module) -> Optional[str]:
    """Why `model` cannot become a FusedMobileNetV3 (None if it can): it must be torchvision's
    MobileNetV3 itself (a subclass may run its parts otherwise) with fused parts."""
    if type(model) not in (MobileNetV3, FusedMobileNetV3):
        return f"{type(model).__name__} is not torchvision's MobileNetV3 (a subclass may override forward)"
    for name in ("forward", "_forward_impl"):  # torchvision's forward calls _forward_impl
        if name in model.__dict__:
            return f"an instance attribute replaces {name}"
    kids = model._modules
    if not isinstance(kids.get("features"), M.FusedSequential):
        return "features is not a FusedSequential"
    if not isinstance(kids.get("avgpool"), M.FusedGlobalAvgPool):
        return "avgpool is not a FusedGlobalAvgPool"
    classifier = kids.get("classifier")
    if not (isinstance(classifier, M.FusedSequential) and isinstance(next(iter(classifier), None), M.FusedLinear)):
        return "classifier is not a FusedSequential of FusedLinear layers"
    return None


class FusedMobileNetV3(M.FusedModule, MobileNetV3):
    """torchvision's ``MobileNetV3`` whose forward runs features, pool and classifier as one
    ``LayerChain`` (see the module docstring); made by ``convert`` by changing the class of the
    model object (``revert`` changes it back). The chain watches what its parts' own checks
    read (as ``FusedSequential``) and this model's children and training flag."""

    _mnv3_original_class = MobileNetV3  # what revert() makes it again

    def _chain_parts(self, chain, x: torch.Tensor) -> Optional[str]:
        # This model's own state (training flag, children, _forward_impl) is checked by
        # cached_chain and, through a weak reference, by the chain (watch_owner): a chain in this
        # model's cache holding its __dict__ would be a reference cycle the garbage collector
        # cannot see through.
        why = whole_model_unsupported_reason(self)
        if why is not None:
            return why
        kids = self.__dict__["_modules"]
        why = kids["features"]._chain_into(chain, x) or kids["avgpool"]._chain_into(chain, x)
        if why is not None:
            return why
        # The classifier's layers check (N, features) inputs; only the rank and type matter.
        return kids["classifier"]._chain_into(chain, x.new_empty((0, 1)))

    def _layer_by_layer(self, x: torch.Tensor):
        # torchvision's forward; 4-D outputs (a replaced classifier) in x's layout, as convert's
        # layout hook gives other converted models (this class needs no hook).
        from .convert import _layout_hook

        return _layout_hook(self, (x,), MobileNetV3.forward(self, x))

    def __setstate__(self, state):
        super().__setstate__(state)
        M.register_chain_owner(self)

    def _chain(self, x: torch.Tensor):
        """The LayerChain serving x, or why none can."""
        return M.cached_chain(self, x, (4,), self._chain_parts, flat_out=True, owner_keys=("_forward_impl",))

    @staticmethod
    def _run_chain(chain, x: torch.Tensor) -> torch.Tensor:
        y = chain(x)
        return y.view(y.shape[0], y.shape[1])

    def _chain_size_steps(self):
        """How the chain changes its input's size (see modules.compiled_chain_call), or None."""
        if whole_model_unsupported_reason(self) is not None:
            return None
        parts = [M.chain_size_steps(self._modules[k]) for k in ("features", "avgpool", "classifier")]
        if any(p is None for p in parts):
            return None
        return parts[0] + parts[1] + (("flatten",),) + parts[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = M.served_by_chain(self, x)  # the chain watches _forward_impl's absence too
        if y is not None:
            return y
        if torch.compiler.is_compiling():
            y = M.compiled_chain_call(self, x, (4,))
            if y is not None:
                return y
        chain = self._chain(x)
        if isinstance(chain, str):
            self._count("layer by layer", chain)
            return self._layer_by_layer(x)
        self._count("fused", "cpu")
        return self._run_chain(chain, x)
