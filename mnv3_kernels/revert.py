"""Undo ``convert``: put the original modules back, in place.

    mnv3_kernels.revert(model)     # same object; original module types and structure back

``convert`` keeps, on each module it creates, a reference to the module it replaced (outside the
module tree: not a child, not in the state_dict). The fused modules hold the very Parameter,
buffer and child objects of the originals, so reverting is putting each original back into its
slot after handing it whatever the fused module holds now (a tensor replaced by ``.to()``, a
child swapped, the train/eval flag). The state_dict is identical before and after, and the
Parameters are the same objects (an optimizer built on the converted model keeps working).
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["revert", "remember_original"]

_ORIGINAL = "_mnv3_original"


def remember_original(new: nn.Module, original: nn.Module) -> None:
    """Record on `new` the module it replaces (kept out of the module tree and state_dict)."""
    new.__dict__[_ORIGINAL] = original


def _restore(fused: nn.Module, original: nn.Module) -> nn.Module:
    # Hand back what the fused module holds under the names the original had.
    for attr in ("_parameters", "_buffers", "_modules"):
        mine, theirs = getattr(fused, attr), getattr(original, attr)
        for name in theirs:
            if name in mine:
                theirs[name] = mine[name]
    original.train(fused.training)
    return original


def revert(model: nn.Module) -> nn.Module:
    """Replace, in place, every module that ``convert`` created with the original module it
    replaced (same type, same children, same Parameter and buffer objects); returns `model`.

    Fused modules built by hand (not by ``convert``) have no original and stay. The
    ``mnv3_report`` attribute is removed. Raises TypeError if `model` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"revert() expects a torch.nn.Module, got {type(model).__name__}")
    slots = [(parent, name, child) for parent in model.modules() for name, child in parent._modules.items()
             if child is not None and _ORIGINAL in child.__dict__]
    # Innermost first: a fused block adopts its layers into its own module dict, so its fused
    # layers go back into that dict before the block hands its children to the original.
    for parent, name, fused in reversed(slots):
        parent._modules[name] = _restore(fused, fused.__dict__[_ORIGINAL])
    for m in model.modules():  # a whole model run as one call (models.py): its class back
        original = getattr(type(m), "_mnv3_original_class", None)
        if original is not None:
            for key in ("_mnv3_cache", "_backend"):
                m.__dict__.pop(key, None)
            m.__class__ = original
    for key, hook in list(model._forward_hooks.items()):
        if getattr(hook, "_mnv3_layout", False):  # convert's output-layout hook
            del model._forward_hooks[key]
    model.__dict__.pop("mnv3_report", None)
    return model
