"""The runtimes a CPU user could deploy MobileNetV3 with instead: ONNX Runtime and OpenVINO.

Each runs the *original* model, exported once with ``torch.onnx.export`` (TorchScript exporter,
opset 17, fixed input shape), with the same thread count as torch and each runtime's default
optimizations (OpenVINO held to float32, as every provider). A runner takes and returns torch tensors (numpy views, no copies), so the timing
harness treats it like any other provider.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable, Dict, Optional

import torch

PEERS = ("onnxruntime", "openvino")


def unavailable_reason(peer: str) -> Optional[str]:
    """None if the peer runtime imports here, else why not."""
    try:
        if peer == "onnxruntime":
            import onnxruntime  # noqa: F401
        elif peer == "openvino":
            import openvino  # noqa: F401
        else:
            return f"unknown peer {peer!r}"
    except Exception as exc:  # noqa: BLE001  (missing or broken install)
        return f"{peer} is not installed ({type(exc).__name__}: {exc})"
    return None


def export_onnx(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The model as ONNX bytes, traced at x's shape."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return buf.getvalue()


def _onnxruntime(onnx: bytes, threads: int) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run


def _openvino(onnx: bytes, threads: int) -> Callable:
    import openvino as ov

    core = ov.Core()
    # f32 precision: on CPUs with AVX512-BF16 OpenVINO otherwise computes in bfloat16 (measured
    # here: 1.8e-4 relative error, outside the 1e-4 bar every provider is held to).
    compiled = core.compile_model(core.read_model(onnx, b""), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer({0: x.numpy()})[0].copy())

    return run


_BUILDERS: Dict[str, Callable] = {"onnxruntime": _onnxruntime, "openvino": _openvino}


def runner(peer: str, model: torch.nn.Module, x: torch.Tensor, threads: Optional[int] = None) -> Callable:
    """A callable running `model` (exported at x's shape, NCHW) in the peer runtime."""
    reason = unavailable_reason(peer)
    if reason is not None:
        raise RuntimeError(reason)
    if x.device.type != "cpu":
        raise ValueError(f"{peer} runs on the CPU here, got x on {x.device}")
    model = model.eval()
    onnx = export_onnx(model, x.contiguous())
    return _BUILDERS[peer](onnx, threads or torch.get_num_threads())
