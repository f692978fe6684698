"""What the suites, the runner and the example share: case selection, input and module builders,
providers, correctness checks and the metadata every result carries.

Selection is driven by two environment variables, so the same suites serve CI, a quick local
run and the full matrix:

    MNV3_BENCH_MODE    ci (default) | quick | full
    MNV3_BENCH_DEVICE  cpu | cuda     (default: cuda when a CUDA device is present, else cpu)
"""
from __future__ import annotations

import copy
import functools
import os
import platform
import random
import statistics
import time
import zlib
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import mnv3_kernels
from mnv3_kernels import ops, reference
from mnv3_kernels.layers import DW_LAYERS, SE_LAYERS, DwLayer, SeLayer

MODES = ("ci", "quick", "full")

# glibc returns MB-sized freed blocks to the kernel unless told otherwise; the next op then
# page-faults its output in again, which dominates small CPU ops (measured: eager depthwise
# convs 5-8x slower without these settings, depending on the process's history).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

# Correctness bar for every timed provider: max |out - ref| <= RTOL * max |ref| and elementwise
# allclose(rtol=RTOL, atol=RTOL * max |ref|) against a float64 evaluation of the same math.
RTOL = 1e-4


def mode() -> str:
    value = os.environ.get("MNV3_BENCH_MODE", "ci").strip().lower()
    if value not in MODES:
        raise ValueError(f"MNV3_BENCH_MODE must be one of {MODES}, got {value!r}")
    return value


def device() -> str:
    value = os.environ.get("MNV3_BENCH_DEVICE", "").strip().lower()
    if not value:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value not in ("cpu", "cuda"):
        raise ValueError(f"MNV3_BENCH_DEVICE must be cpu or cuda, got {value!r}")
    return value


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(str(p) for p in parts).encode())


# ----------------------------------------------------------------------------------------------
# Environment, recorded in every result
# ----------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def malloc_env_state() -> str:
    """'set' when every MALLOC_ENV variable has the recommended value in this process."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return "set"
    present = {k: os.environ.get(k) for k in MALLOC_ENV if os.environ.get(k) is not None}
    return f"not set ({present})" if present else "not set"


@functools.lru_cache(maxsize=None)
def _static_env(dev: str) -> tuple:
    import torchvision

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # Triton is optional
        triton_version = "absent"
    info = mnv3_kernels.build_info()
    if dev == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = _cpu_name()
    return tuple(sorted({
        "device": dev,
        "device_name": name,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "triton": triton_version,
        "mnv3_kernels": mnv3_kernels.__version__,
        "cpu_isa": info.get("cpu_isa", "n/a"),
        "mnv3_compiled": info.get("compiled", "false"),
        "backends": ",".join(mnv3_kernels.backends()),
    }.items()))


def env_info(dev: str) -> dict:
    out = dict(_static_env(dev))
    out.update({
        "threads": torch.get_num_threads(),
        "malloc_env": malloc_env_state(),
        "mode": mode(),
        "tf32": bool(dev == "cuda" and torch.backends.cudnn.allow_tf32),
    })
    return out


def configure_torch(dev: str) -> None:
    """Settings every provider shares: exact fp32 on GPU, room for one compiled graph per case."""
    if dev == "cuda":
        # TF32 would make eager fp32 convs/matmuls approximate; every provider computes true fp32.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    import torch._dynamo

    # Each case compiles its own module; the default limit (8 per code object) would make
    # Dynamo fall back to eager silently after a few cases.
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)


# ----------------------------------------------------------------------------------------------
# Case selection
# ----------------------------------------------------------------------------------------------
LAYOUTS = ("nchw", "channels_last")

_QUICK_DW = (
    "large-c16-k3-s1-112", "large-c64-k3-s2-112", "large-c72-k5-s2-56+se",
    "large-c120-k5-s1-28+se", "large-c184-k3-s1-14", "large-c672-k5-s2-14+se",
    "large-c960-k5-s1-7+se", "small-c96-k5-s2-28+se",
)
_CI_DW = ("large-c72-k5-s2-56+se", "large-c960-k5-s1-7+se")
# torch.compile costs tens of seconds per graph on 2 cores: quick mode compiles a subset.
_QUICK_DW_COMPILE = ("large-c16-k3-s1-112", "large-c184-k3-s1-14", "large-c960-k5-s1-7+se")

_QUICK_SE = ("se-c72-r24-28", "se-c480-r120-14", "se-c960-r240-7", "se-c16-r8-56")
_CI_SE = ("se-c960-r240-7",)
_QUICK_SE_COMPILE = ("se-c72-r24-28", "se-c960-r240-7")


def batches(kind: str = "layer") -> List[int]:
    m, dev = mode(), device()
    if m == "ci":
        return [1]
    if kind == "model":
        if dev == "cuda":
            return [1, 8, 64] if m == "full" else [1, 64]
        return [1, 8]
    if dev == "cuda":
        return [1, 8, 64, 256] if m == "full" else [1, 64]
    return [1, 8]


def dw_layers() -> List[DwLayer]:
    m = mode()
    if m == "full":
        return list(DW_LAYERS)
    names = _QUICK_DW if m == "quick" else _CI_DW
    return [layer for layer in DW_LAYERS if layer.name in names]


def se_layers() -> List[SeLayer]:
    m = mode()
    if m == "full":
        return list(SE_LAYERS)
    names = _QUICK_SE if m == "quick" else _CI_SE
    return [se for se in SE_LAYERS if se.name in names]


def act_shapes() -> List[tuple]:
    """(C, H) of the activation tensors: the depthwise outputs of the layer table."""
    seen = {}
    for layer in DW_LAYERS:
        seen.setdefault((layer.channels, layer.out_size), None)
    shapes = sorted(seen, key=lambda s: -s[0] * s[1] * s[1])
    m = mode()
    if m == "full":
        return shapes
    if m == "quick":
        return [(16, 112), (72, 56), (240, 14), (960, 7)]
    return [(72, 56)]


def compile_selected(kind: str, name: str, batch: int, layout: str) -> bool:
    """Whether torch.compile providers run for this case in the current mode."""
    m = mode()
    if m == "full":
        return True
    if m == "ci":
        return False
    if kind == "dw":
        return name in _QUICK_DW_COMPILE and batch == 1
    if kind == "se":
        return name in _QUICK_SE_COMPILE and batch == 1 and layout == "nchw"
    if kind == "model":
        return name == "large" and batch == 1
    return False


def fused_backends(dev: str) -> List[str]:
    """The fused backends that belong to a device's provider list (available or not)."""
    return ["cpu"] if dev == "cpu" else ["cuda", "triton"]


def fused_skip_reason(backend: str, dev: str) -> Optional[str]:
    """Why a fused backend cannot be benchmarked here, or None."""
    if backend == "triton" and dev != "cuda":
        return "Triton is benchmarked on CUDA only (never through the interpreter)"
    if backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "TRITON_INTERPRET=1 is set; benchmarks never time the Triton interpreter"
    if backend not in mnv3_kernels.backends():
        return f"backend {backend!r} unavailable: {ops._unavailable_reason(backend)}"
    return None


def skip_unless_fused(backend: str, dev: str) -> None:
    """pytest.skip with the reason when a fused backend cannot be benchmarked here."""
    import pytest

    reason = fused_skip_reason(backend, dev)
    if reason:
        pytest.skip(reason)


# ----------------------------------------------------------------------------------------------
# Inputs and layouts
# ----------------------------------------------------------------------------------------------
def memory_format(layout: str) -> torch.memory_format:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def make_input(shape, layout: str, dev: str, seed: int, dtype=torch.float32) -> torch.Tensor:
    """The same tensor for every provider of a case (same seed, same values, same layout)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float32)
    return x.to(device=dev, dtype=dtype).contiguous(memory_format=memory_format(layout))


def to_layout(module: nn.Module, layout: str) -> nn.Module:
    return module.to(memory_format=memory_format(layout))


def randomize_bn_(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics, so folding is actually exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features

                def u(lo, hi):
                    return torch.rand(n, generator=gen) * (hi - lo) + lo

                if m.weight is not None:
                    m.weight.copy_(u(0.5, 1.5))
                    m.bias.copy_(u(-0.5, 0.5))
                m.running_mean.copy_(u(-0.5, 0.5))
                m.running_var.copy_(u(0.5, 2.0))
    return model


def freeze_(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    scale = ref.abs().max().clamp_min(1e-30)
    return float((out.double() - ref).abs().max() / scale)


def check_close(out: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL) -> float:
    """Raise (failing the benchmark) unless `out` matches the float64 reference."""
    assert tuple(out.shape) == tuple(ref.shape), f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values in the output"
    ref = ref.double()
    scale = float(ref.abs().max().clamp_min(1e-30))
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{what}: {m}")
    return max_rel_err(out, ref)


# ----------------------------------------------------------------------------------------------
# Depthwise conv + BN + activation
# ----------------------------------------------------------------------------------------------
def dw_flops_bytes(layer: DwLayer, n: int, elem: int = 4) -> tuple:
    c, h, ho = layer.channels, layer.size, layer.out_size
    flops = 2 * n * c * ho * ho * layer.kernel ** 2
    nbytes = elem * (n * c * h * h + n * c * ho * ho)
    return flops, nbytes


def make_dw_block(layer: DwLayer) -> nn.Module:
    """The block exactly as torchvision's MobileNetV3 builds it: conv (no bias) -> BN -> act."""
    from torchvision.ops.misc import Conv2dNormActivation

    torch.manual_seed(seed_of("dw", layer.name))
    act = nn.ReLU if layer.activation == "relu" else nn.Hardswish
    block = Conv2dNormActivation(
        layer.channels, layer.channels, kernel_size=layer.kernel, stride=layer.stride,
        groups=layer.channels, norm_layer=functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01),
        activation_layer=act,
    )
    randomize_bn_(block, seed_of("bn", layer.name))
    return freeze_(block)


def dw_parts(block: nn.Module):
    conv, bn = block[0], block[1]
    return conv, bn


def dw_reference(block: nn.Module, layer: DwLayer, x: torch.Tensor) -> torch.Tensor:
    """conv -> BN -> act in float64: the oracle every provider is checked against."""
    conv, bn = dw_parts(block)
    d = lambda t: None if t is None else t.detach().double()  # noqa: E731
    return reference.conv_bn_act_unfolded(
        x.double(), d(conv.weight), d(conv.bias), d(bn.weight), d(bn.bias), d(bn.running_mean),
        d(bn.running_var), bn.eps, conv.stride, conv.padding, conv.dilation, layer.activation,
    )


def dw_folded(block: nn.Module):
    conv, bn = dw_parts(block)
    return reference.fold_bn(conv.weight.detach(), conv.bias, bn.weight.detach(), bn.bias.detach(),
                             bn.running_mean, bn.running_var, bn.eps)


# ----------------------------------------------------------------------------------------------
# Compiled callables, built once per case
# ----------------------------------------------------------------------------------------------
_COMPILED: Dict[tuple, Callable] = {}


def compiled(key: tuple, module: nn.Module, freezing: bool = False) -> Callable:
    """torch.compile(module), cached by key so a case never rebuilds its graph."""
    full_key = key + (freezing,)
    if full_key not in _COMPILED:
        options = {"freezing": True} if freezing else None
        _COMPILED[full_key] = torch.compile(module, dynamic=False, options=options)
    return _COMPILED[full_key]


# ----------------------------------------------------------------------------------------------
# Squeeze-excite
# ----------------------------------------------------------------------------------------------
def se_flops_bytes(se: SeLayer, n: int, elem: int = 4) -> tuple:
    numel = n * se.channels * se.size * se.size
    flops = 2 * numel + 4 * n * se.channels * se.squeeze
    # Two-phase SE at its minimum: read x for the pool, read it again and write the scaled result.
    return flops, 3 * elem * numel


def make_se(se: SeLayer) -> nn.Module:
    from torchvision.ops.misc import SqueezeExcitation

    torch.manual_seed(seed_of("se", se.name))
    module = SqueezeExcitation(se.channels, se.squeeze, scale_activation=nn.Hardsigmoid)
    with torch.no_grad():
        module.fc2.bias.uniform_(-1.0, 1.0)  # keep the gate off its saturated ends
    return freeze_(module)


def se_reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    d = lambda t: t.detach().double()  # noqa: E731
    return reference.squeeze_excite(x.double(), d(module.fc1.weight), d(module.fc1.bias),
                                    d(module.fc2.weight), d(module.fc2.bias))


# ----------------------------------------------------------------------------------------------
# Activations (the paper's Table 5 variants, as ops and as modules)
# ----------------------------------------------------------------------------------------------
def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


ACT_FNS: Dict[str, Callable] = {
    "relu": F.relu,
    "swish": swish,
    "hswish-naive": reference.hardswish_naive_chain,
    "hswish-F": F.hardswish,
    "hswish-where": reference.hardswish_piecewise_where,
}


def act_reference(provider: str, x: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    if provider == "relu":
        return F.relu(xd)
    if provider == "swish":
        return xd * torch.sigmoid(xd)
    return F.hardswish(xd)


class NaiveHardswish(nn.Module):
    """h-swish as the op chain x * relu6(x + 3) / 6 (the paper's "naive" h-swish)."""

    def forward(self, x):
        return reference.hardswish_naive_chain(x)


class PiecewiseHardswish(nn.Module):
    """The piecewise formula in PyTorch ops (torch.where)."""

    def forward(self, x):
        return reference.hardswish_piecewise_where(x)


def replace_hardswish(model: nn.Module, factory: Callable[[nn.Hardswish], nn.Module]) -> int:
    """Replace every nn.Hardswish module of model by factory(that module); returns how many."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Hardswish):
            setattr(model, name, factory(child))
            count += 1
        else:
            count += replace_hardswish(child, factory)
    return count


# ----------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------
MODELS = ("large", "small")


@functools.lru_cache(maxsize=None)
def _base_model(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(seed_of("model", name))
    build = {"large": torchvision.models.mobilenet_v3_large,
             "small": torchvision.models.mobilenet_v3_small}[name]
    model = build(weights=None)
    randomize_bn_(model, seed_of("model-bn", name))
    return freeze_(model)


def build_model(name: str) -> nn.Module:
    """torchvision mobilenet_v3_<name>, random weights, randomized BN stats, eval, no grads."""
    return copy.deepcopy(_base_model(name))


def model_input(n: int, layout: str, dev: str) -> torch.Tensor:
    return make_input((n, 3, 224, 224), layout, dev, seed_of("model-input", n))


def convert_model(model: nn.Module, backend: str):
    """mnv3_kernels.convert on a copy; returns (converted model, its ConversionReport)."""
    converted = mnv3_kernels.convert(copy.deepcopy(model), backend=backend)
    return freeze_(converted), converted.mnv3_report


def module_type_diff(before: nn.Module, after: nn.Module) -> Dict[str, int]:
    """Module type counts that changed (negative: removed, positive: added)."""
    from collections import Counter

    a = Counter(type(m).__name__ for m in before.modules())
    b = Counter(type(m).__name__ for m in after.modules())
    return {k: b.get(k, 0) - a.get(k, 0) for k in sorted(set(a) | set(b)) if b.get(k, 0) != a.get(k, 0)}


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable, args: Iterable, dev: str) -> Callable:
    """The callable pytest-benchmark times; on GPU it waits for the kernels inside the timed call."""
    args = tuple(args)
    if dev == "cuda":
        def run():
            out = fn(*args)
            torch.cuda.synchronize()
            return out
    else:
        def run():
            return fn(*args)
    return run


# ----------------------------------------------------------------------------------------------
# Interleaved timing: every provider of a group round-robin in one case
# ----------------------------------------------------------------------------------------------
# Rounds per interleaved case. A round calls every provider once (a layer provider: a short
# burst, see _burst), in a fresh random order, so the drift of a shared machine (seconds to
# minutes) hits every provider alike.
INTERLEAVED_ROUNDS = {"model": {"ci": 1, "quick": 8, "full": 20},
                      "layer": {"ci": 1, "quick": 25, "full": 50}}
# A layer op can take a few microseconds: one sample is a burst of calls lasting about this long.
_BURST_S = 2e-4
# Whole models: a provider's turn starts after an idle pause, then untimed calls. ONNX
# Runtime's worker threads keep spinning for 20-50 ms after its last call (OpenMP's, libgomp's,
# a few ms); on a 2-core machine they steal the next provider's cores. Measured: Large at batch 1
# took 8.0-8.6 ms when called 0-20 ms after ONNX Runtime, 4.1 ms 50 ms after, 4.4 ms with no
# peer in the process; Small at batch 1 2.1 ms after 3 untimed calls behind ONNX Runtime, 1.0 ms
# on its own. The pause lets every runtime's threads go to sleep, the untimed calls wake them,
# so each provider is timed in its own steady state (as it runs in production). Longer pauses
# still favoured ONNX Runtime a little (Small, batch 1, converted / ONNX Runtime, one process:
# 0.755 after 20 ms, 0.778 after 50, 0.790 after 100, 0.840 after 200), so the pause is 200 ms.
_MODEL_IDLE_S = 0.2
_MODEL_SETTLE_CALLS = 3
_MODEL_BURST_CALLS = 4


def _burst(fn: Callable, scale: str) -> int:
    """Timed calls per sample: a few for whole models (see _MODEL_SETTLE_CALLS); for layers,
    enough to last about _BURST_S."""
    if scale == "model":
        return _MODEL_BURST_CALLS
    t0 = time.perf_counter()
    fn()
    single = time.perf_counter() - t0
    return max(1, min(200, int(_BURST_S / max(single, 1e-7))))


def summary(values: List[float]) -> dict:
    q1, med, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values),
            "max": max(values), "rounds": len(values)}


def run_interleaved(benchmark, dev: str, providers: Dict[str, tuple], *, group: str, kind: str,
                    scale: str, seed: int, info: dict) -> None:
    """Time `providers` ({name: (fn, args, float64 ref or None)}) round-robin as one
    pytest-benchmark case. Each provider is checked against its reference and warmed up first;
    the per-provider medians go to extra_info["interleaved"] (the report reads them)."""
    calls, bursts, errors = {}, {}, {}
    for name, (fn, args, ref) in providers.items():
        out = fn(*args)
        sync(dev)
        if ref is not None:
            errors[name] = check_close(out, ref, f"{group} [{name}] (interleaved)")
        for _ in range(2):
            fn(*args)
        calls[name] = timed(fn, args, dev)
        bursts[name] = _burst(calls[name], scale)
    samples = {p: [] for p in calls}
    order = list(calls)
    rng = random.Random(seed)

    settle = _MODEL_SETTLE_CALLS if scale == "model" else 0
    idle = _MODEL_IDLE_S if scale == "model" else 0.0

    def one_round():
        rng.shuffle(order)
        for p in order:
            call, reps = calls[p], bursts[p]
            if idle:
                time.sleep(idle)
            for _ in range(settle):
                call()
            t0 = time.perf_counter()
            for _ in range(reps):
                call()
            samples[p].append((time.perf_counter() - t0) / reps)

    rounds = INTERLEAVED_ROUNDS[scale][mode()]
    benchmark.group = group
    extra = env_info(dev)
    extra.update(info)
    extra.update({"kind": kind, "provider": "round-robin", "rounds_interleaved": rounds,
                  "burst_calls": bursts, "settle_calls": settle, "idle_s": idle})
    benchmark.extra_info.update(extra)
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    # samples: one per round, in round order, so the report can pair providers round by round.
    benchmark.extra_info["interleaved"] = {p: dict(summary(v), max_rel_err=errors.get(p), samples=v)
                                           for p, v in samples.items()}


def interleaved_info(bench_keywords: dict) -> dict:
    """The extra_info of an interleaved case from the keywords a per-provider case passes to
    the bench fixture (same names, same formatting)."""
    info = dict(bench_keywords)
    info["compare"] = ",".join(info.get("compare", ()))
    if info.get("shape") is not None:
        info["shape"] = "x".join(str(d) for d in info["shape"])
    info["bytes"] = info.pop("nbytes", None)
    info.setdefault("dtype", "float32")
    return info
