"""Loads the compiled library once and records what it holds.

The package must import without it: when mnv3_kernels._C is missing or fails to load, every op
falls back to the reference PyTorch path and a warning says why -- unless MNV3_REQUIRE_COMPILED=1
(CI sets it), under which the import fails instead, so nothing passes on the reference path
unnoticed.
"""
from __future__ import annotations

import os
import warnings

import torch  # noqa: F401  (loads libtorch, which _C links against)

REQUIRE_COMPILED = os.environ.get("MNV3_REQUIRE_COMPILED", "0") == "1"
CPU_ISAS = ("avx512", "avx2", "portable")  # the names csrc/cpu/isa.cpp accepts in MNV3_CPU_ISA

_C = None
LOAD_ERROR: str | None = None

try:
    from . import _C  # noqa: F811  (loading it registers the mnv3:: operators)
except Exception as exc:  # ImportError, or an OSError from a broken build
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    if REQUIRE_COMPILED:
        raise ImportError(
            f"mnv3_kernels: MNV3_REQUIRE_COMPILED=1 but the compiled library could not be loaded "
            f"({LOAD_ERROR}). Rebuild with `pip install --no-build-isolation -e .`."
        ) from exc
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

_isa_wish = os.environ.get("MNV3_CPU_ISA", "")
if LOADED and _isa_wish and _isa_wish not in CPU_ISAS:
    # The library ignores it and uses the best ISA this CPU has.
    warnings.warn(
        f"mnv3_kernels: MNV3_CPU_ISA={_isa_wish!r} is not one of {CPU_ISAS}; using "
        f"{BUILD_INFO.get('cpu_isa')!r}, the best this CPU supports.",
        RuntimeWarning,
        stacklevel=2,
    )
