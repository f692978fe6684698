"""Loads the compiled library once and records what it holds.

The package must import without it: when mnv3_kernels._C is missing or fails to load, every op
falls back to the reference PyTorch path and a warning says why.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

_C = None
LOAD_ERROR: str | None = None

try:
    from . import _C  # noqa: F811  (loading it registers the mnv3:: operators)
except Exception as exc:  # ImportError, or an OSError from a broken build
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "mnv3_kernels: the compiled library could not be loaded "
        f"({LOAD_ERROR}); the fused 'cpu' and 'cuda' backends are unavailable and ops use the "
        "reference PyTorch path. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

LOADED = _C is not None
BUILD_INFO: dict = dict(_C.build_info()) if LOADED else {}
CUDA_BUILT = BUILD_INFO.get("cuda_built") == "true"
