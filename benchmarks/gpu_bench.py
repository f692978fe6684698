#!/usr/bin/env python
"""GPU benchmark of the fused depthwise conv + BN + activation over MobileNetV3-Large's layers.

    python benchmarks/gpu_bench.py --budget 80 [--batches 256,64,8,1] [--dtypes fp16,fp32]
                                   [--out table.md] [--json results.json] [--dry-run]

Providers, side by side in one run: eager unfused conv2d -> batch_norm -> activation,
torch.compile of that function (a subset of configurations, as the time budget allows),
ops.dwconv_bn_act(backend="cuda") and backend="triton" (when available). Every fused result is
checked against the fp32 reference (TF32 off) before it is timed. Timing: CUDA events around each call,
L2 flushed before each call (as triton.testing.do_bench does), median over the repetitions.
Bytes = elem_size * (N*C*H*W + N*C*Ho*Wo); the fraction is of a measured device-to-device copy.
Standalone: no pytest needed. Stops starting new measurements once the budget is spent.
Nothing measured is lost: each row is appended to the table (and the JSON rewritten) as soon as
it is measured, flushed to disk; SIGINT/SIGTERM (a `timeout`) end the run after the current row
is written. Large batches come first (the numbers that matter most on a GPU). --dry-run prints
the plan and writes the table header without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv3_kernels import ops, reference  # noqa: E402
from mnv3_kernels.layers import LARGE  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_LAYERS = (1, 6, 10)  # c64-s2-112, c184-14, c672-k5-s2-14
TOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 8e-2}


class Timer:
    def __init__(self, reps: int, warmup: int):
        self.reps = reps
        self.warmup = warmup
        self.flush_buf = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.float32, device="cuda")

    def __call__(self, fn) -> float:
        """Median microseconds of fn() on a cold L2."""
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.flush_buf.zero_()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            times.append((start, end))
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in times) * 1e3


def copy_bandwidth(timer: Timer) -> float:
    """GB/s of a device-to-device copy of 512 MiB (read + write counted)."""
    n = 512 * 1024 * 1024 // 4
    a = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    us = timer(lambda: b.copy_(a))
    del a, b
    return 2 * n * 4 / (us * 1e-6) / 1e9


def eager_fn(layer):
    act = layer.activation

    def fn(x, w, bn_w, bn_b, mean, var):
        y = F.conv2d(x, w, None, layer.stride, layer.padding, 1, x.shape[1])
        y = F.batch_norm(y, mean, var, bn_w, bn_b, False, 0.0, 1e-3)
        return F.relu(y) if act == "relu" else F.hardswish(y)

    return fn


def _set_compile_limits():
    cfg = torch._dynamo.config
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, 4096)


class TableWriter:
    """The markdown table and the JSON results, on disk after every row."""

    def __init__(self, out, json_path, meta):
        self.out, self.json_path, self.meta, self.rows = out, json_path, meta, []
        if self.out:
            with open(self.out, "w") as f:
                f.write(header(meta.get("copy_gbs")))
        self._write_json()

    def add(self, row, line):
        self.rows.append(row)
        if self.out:
            self._append(line + "\n")
        self._write_json()

    def note(self, text):
        if self.out:
            self._append("\n" + text + "\n")
        self.meta["notes"] = self.meta.get("notes", []) + [text]
        self._write_json()

    def _append(self, text):
        with open(self.out, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def _write_json(self):
        if not self.json_path:
            return
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**self.meta, "rows": self.rows}, f, indent=1)
        os.replace(tmp, self.json_path)  # never a half-written file


def _stop_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def plan(batches, dtypes):
    """Measurement order: largest batch first, then dtype, then the layers in model order."""
    return [(d, n, layer) for n in sorted(batches, reverse=True) for d in dtypes for layer in LARGE]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=80.0, help="seconds for the whole run")
    ap.add_argument("--batches", default="256,64,8,1")
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--layout", default="channels_last", choices=["channels_last", "nchw"])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--compile-share", type=float, default=0.45,
                    help="fraction of the budget torch.compile may use (compiling is slow)")
    ap.add_argument("--out", default=None, help="markdown table path (written row by row)")
    ap.add_argument("--json", default=None, help="results as JSON (rewritten after every row)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, write the header; no GPU needed")
    args = ap.parse_args()

    t0 = time.monotonic()
    deadline = t0 + args.budget
    batches = [int(b) for b in args.batches.split(",") if b]
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        ap.error(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    configs = plan(batches, dtypes)
    if args.dry_run:
        writer = TableWriter(args.out, args.json, {"dry_run": True, "copy_gbs": None})
        for dname, n, layer in configs:
            print(f"plan: {layer.name} batch {n} {dname}")
        writer.note(f"(dry run: {len(configs)} configurations planned, none measured)")
        print(f"gpu_bench: dry run, {len(configs)} configurations planned")
        return 0
    if not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; nothing to measure")
        return 0
    signal.signal(signal.SIGTERM, _stop_on_signal)  # SIGINT already raises KeyboardInterrupt
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False  # keeps the fp32 reference exact enough to check against
    _set_compile_limits()
    timer = Timer(args.reps, warmup=3)
    copy_gbs = copy_bandwidth(timer)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {copy_gbs:.0f} GB/s")
    have = ops.backends()
    fused = [b for b in ("cuda", "triton") if b in have]
    print(f"fused backends available: {fused}")
    writer = TableWriter(args.out, args.json, {"copy_gbs": copy_gbs, "device": torch.cuda.get_device_name(),
                                               "torch": torch.__version__, "fused": fused})
    print(header(copy_gbs), end="", flush=True)

    compile_deadline = t0 + args.budget * args.compile_share
    run_plan(configs, lambda d, n, layer: measure(layer, n, d, args.layout, timer, fused,
                                                   time.monotonic() < compile_deadline),
             lambda row: _fmt_row(row, copy_gbs), writer, deadline)
    rows = writer.rows
    print(f"gpu_bench: {len(rows)} configurations in {time.monotonic() - t0:.0f}s, "
          f"{len(configs) - len(rows)} not measured")
    bad = [r for r in rows if r["check"] != "ok" and "compile" not in r["check"]]
    return 1 if bad else 0


def run_plan(configs, measure_one, fmt, writer, deadline):
    """Measures configs in order until the deadline or an interrupt; each row is on disk before
    the next measurement starts, so an interrupted run keeps every finished row."""
    done = 0
    try:
        for dname, n, layer in configs:
            if time.monotonic() > deadline:
                break
            row = measure_one(dname, n, layer)
            line = fmt(row)
            writer.add(row, line)
            print(line, flush=True)
            done += 1
    except KeyboardInterrupt as exc:
        writer.note(f"Interrupted ({exc or 'SIGINT'}) after {done} configurations.")
        print(f"gpu_bench: interrupted after {done} configurations", flush=True)
    if done < len(configs):
        writer.note(f"{len(configs) - done} configurations not measured (time budget or interrupt).")
    return done


def measure(layer, n, dname, layout, timer, fused, may_compile):
    """One table row: every provider on one (layer, batch, dtype), fused results checked first."""
    dtype = DTYPES[dname]
    g = torch.Generator(device="cuda").manual_seed(0)
    C, H = layer.channels, layer.size
    x = torch.randn(n, C, H, H, device="cuda", generator=g).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(C, 1, layer.kernel, layer.kernel, device="cuda", generator=g) / layer.kernel).to(dtype)
    bn_w = (torch.rand(C, device="cuda", generator=g) + 0.5).to(dtype)
    bn_b = (torch.rand(C, device="cuda", generator=g) - 0.5).to(dtype)
    mean = (torch.rand(C, device="cuda", generator=g) - 0.5).to(dtype)
    var = (torch.rand(C, device="cuda", generator=g) + 0.5).to(dtype)
    wf, bf = reference.fold_bn(w, None, bn_w, bn_b, mean, var, 1e-3)
    s, p = [layer.stride] * 2, [layer.padding] * 2
    want = reference.dwconv_bn_act(x.float(), wf.float(), bf.float(), s, p, [1, 1], layer.activation)
    ho = want.shape[-1]
    nbytes = x.element_size() * (n * C * H * H + n * C * ho * ho)
    row = {"layer": layer.name, "batch": n, "layout": layout, "dtype": dname,
           "bytes": nbytes, "eager_us": None, "compile_us": None, "cuda_us": None,
           "triton_us": None, "check": "ok"}
    eager = eager_fn(layer)
    with torch.no_grad():
        row["eager_us"] = timer(lambda: eager(x, w, bn_w, bn_b, mean, var))
        # Compiling costs seconds per shape: a few layers only, while the budget allows.
        if LARGE.index(layer) in COMPILE_LAYERS and may_compile:
            try:
                compiled = torch.compile(eager, dynamic=False)
                compiled(x, w, bn_w, bn_b, mean, var)
                row["compile_us"] = timer(lambda: compiled(x, w, bn_w, bn_b, mean, var))
            except Exception as exc:  # compile problems must not end the benchmark
                row["check"] = f"compile failed: {type(exc).__name__}"
        for backend in fused:
            try:
                got = ops.dwconv_bn_act(x, wf, bf, s, p, 1, layer.activation, backend=backend)
                err = (got.float() - want).abs().max().item() / max(1.0, want.abs().max().item())
                if not err <= TOL[dtype]:
                    row["check"] = f"{backend} MISMATCH (rel err {err:.2e})"
                    continue
                row[f"{backend}_us"] = timer(
                    lambda: ops.dwconv_bn_act(x, wf, bf, s, p, 1, layer.activation, backend=backend))
            except Exception as exc:
                row["check"] = f"{backend} error: {type(exc).__name__}: {str(exc)[:80]}"
    return row


def _us(v):
    return "-" if v is None else f"{v:.1f}"


def _ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _fmt_row(r, copy_gbs):
    best = r["cuda_us"]
    gbs = None if best is None else r["bytes"] / (best * 1e-6) / 1e9
    cells = [r["layer"], str(r["batch"]), r["layout"], r["dtype"], _us(r["eager_us"]), _us(r["compile_us"]),
             _us(r["cuda_us"]), _us(r["triton_us"]),
             "-" if gbs is None else f"{gbs:.0f}",
             "-" if gbs is None else f"{gbs / copy_gbs:.2f}",
             _ratio(r["eager_us"], r["cuda_us"]), _ratio(r["compile_us"], r["cuda_us"]), r["check"]]
    return "| " + " | ".join(cells) + " |"


def header(copy_gbs):
    head = ("| layer | batch | layout | dtype | eager unfused us | torch.compile us | fused cuda us | "
            "fused triton us | cuda GB/s | of copy | speedup vs eager | speedup vs compile | check |")
    copy = "not measured" if copy_gbs is None else f"{copy_gbs:.0f} GB/s"
    return "\n".join([f"Device-to-device copy: {copy}. Median us per call, cold L2. "
                      f"GB/s = elem_size*(N*C*H*W + N*C*Ho*Wo) / fused cuda time.", "", head,
                      "|" + "---|" * 13]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
