"""Fused MobileNetV3 kernels for PyTorch.

    import mnv3_kernels
    model = mnv3_kernels.convert(model)   # fused depthwise conv+BN+act and squeeze-excite
    mnv3_kernels.revert(model)            # the original modules back
    mnv3_kernels.backends()               # backends usable here, best first
    mnv3_kernels.build_info()             # what the compiled library holds
    mnv3_kernels.path_stats()             # which path the fused modules ran (fused or not, why)
    mnv3_kernels.refresh(model)           # after writes through .data: drop cached folded weights
"""
from . import _extension
from . import ops
from .ops import backends
from . import modules
from .modules import path_stats, refresh
from .convert import convert, conversion_report, ConversionEntry, ConversionReport
from .revert import revert
from .onnx_export import onnx_translation_table

try:  # torch.onnx.export(dynamo=False) of converted models: our operators as standard ONNX ops
    from .onnx_export import register_onnx_symbolics as _register_onnx_symbolics
    _register_onnx_symbolics()
except Exception as _exc:  # noqa: BLE001  (a torch without the TorchScript exporter: nothing to serve)
    import warnings
    warnings.warn(f"mnv3_kernels: ONNX symbolics not registered ({type(_exc).__name__}: {_exc})")

__version__ = "0.1.0"


def build_info() -> dict:
    """Versions, whether CUDA kernels were built, and the CPU ISA in use.

    Comes from the compiled library (pybind11); when it is not loaded, says why.
    """
    import torch

    if not _extension.LOADED:
        return {"version": __version__, "compiled": "false", "load_error": _extension.LOAD_ERROR,
                "torch_version": torch.__version__}
    info = dict(_extension._C.build_info())
    info["compiled"] = "true"
    return info


__all__ = ["convert", "revert", "onnx_translation_table", "conversion_report", "ConversionEntry",
           "ConversionReport", "backends", "build_info", "path_stats", "refresh", "ops", "modules"]
