"""Shared fixtures of the benchmark suites.

Each benchmark is one (group, provider) cell: the group is one comparison (same op, shape,
layout, dtype, device and the same input tensor for every provider); the provider names are
the same across suites:

    eager-unfused | eager-folded | eager | eager-cl | compile | compile-freezing
    fused-cpu | fused-cuda | fused-triton | converted-<backend>[-cl][+compile] | ...

Every provider's output is checked against a float64 reference before it is timed, also under
--benchmark-disable, so a wrong kernel fails its benchmark.
"""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import common

_DEVICE = common.device()
common.configure_torch(_DEVICE)


def pytest_report_header(config):
    return [
        f"mnv3 benchmarks: mode={common.mode()} device={_DEVICE} threads={torch.get_num_threads()} "
        f"backends={','.join(__import__('mnv3_kernels').backends())} malloc_env={common.malloc_env_state()}",
    ]


def pytest_configure(config):
    if _DEVICE == "cpu" and common.mode() != "ci" and common.malloc_env_state() != "set":
        sys.stderr.write(
            "warning: CPU benchmarks without " + " ".join(f"{k}={v}" for k, v in common.MALLOC_ENV.items())
            + " in the environment; run them through `python -m benchmarks.run`.\n"
        )


@pytest.fixture(scope="session")
def dev() -> str:
    if _DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MNV3_BENCH_DEVICE=cuda but no CUDA device is available")
    return _DEVICE


@pytest.fixture(autouse=True)
def _inference():
    # Inference benchmarks: no autograd bookkeeping for any provider.
    with torch.no_grad():
        yield


def _warmups() -> int:
    return {"ci": 1, "quick": 3, "full": 10}[common.mode()]


class Bench:
    """Fills group and extra_info, checks the provider, warms it up, then times it."""

    def __init__(self, benchmark, dev: str):
        self.benchmark = benchmark
        self.dev = dev

    def __call__(self, *, group: str, provider: str, fn, args, kind: str, op: str, baseline: str,
                 compare=(), ref=None, check_fn=None, flops=None, nbytes=None, shape=None,
                 layout="nchw", dtype=torch.float32, rtol=common.RTOL, **extra):
        args = tuple(args)
        out = fn(*args)
        common.sync(self.dev)
        err = None
        if check_fn is not None:
            check_fn(out)
        if ref is not None:
            err = common.check_close(out, ref, f"{group} [{provider}]", rtol=rtol)
        for _ in range(_warmups()):
            fn(*args)
        common.sync(self.dev)
        del out

        b = self.benchmark
        b.group = group
        info = common.env_info(self.dev)
        info.update({
            "kind": kind, "op": op, "provider": provider, "baseline": baseline,
            "compare": ",".join(compare), "layout": layout,
            "dtype": str(dtype).replace("torch.", ""),
            "shape": "x".join(str(s) for s in shape) if shape is not None else "",
            "flops": flops, "bytes": nbytes,
            "max_rel_err": err, "warmup_calls": _warmups(),
        })
        info.update(extra)
        b.extra_info.update(info)
        return b(common.timed(fn, args, self.dev))


@pytest.fixture
def bench(benchmark, dev) -> Bench:
    return Bench(benchmark, dev)
