"""The main job: demo, benchmark suites, report.

    python -m benchmarks.run [--full] [--out DIR] [--device cpu|cuda] [--no-demo] [--no-bench] [-k EXPR]

1. Demo: torchvision mobilenet_v3_large (random weights, randomized BN statistics), converted with
   mnv3_kernels.convert on a copy; checks the outputs match (max rel err <= 1e-4), prints what was
   replaced and a short fused-vs-unfused timing table.
2. The pytest-benchmark suites in benchmarks/ (quick: a representative subset, a few minutes on
   2 cores; --full: every layer, batch and provider).
3. The report: DIR/report.md, DIR/*.png and the raw JSON (default DIR:
   benchmarks/results/<date>-<device>-<mode>).

The CPU allocator settings (common.MALLOC_ENV: without them glibc hands freed MB-sized blocks
back to the kernel and small CPU ops page-fault their outputs in again) are put in the
environment of this process (it re-executes itself once) and of the benchmark process, so every
provider runs under them.
"""
from __future__ import annotations

import argparse
import copy
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
MAX_REL_ERR = 1e-4


def _ensure_malloc_env() -> None:
    """glibc reads these at start-up, so a process that lacks them starts again with them."""
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    if os.environ.get("MNV3_BENCH_REEXEC") == "1":
        print("warning: could not apply the allocator settings; continuing without them", file=sys.stderr)
        return
    env = dict(os.environ, MNV3_BENCH_REEXEC="1", **MALLOC_ENV)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every layer, batch and provider (long)")
    ap.add_argument("--out", default=None, help="report folder (default benchmarks/results/<date>-<device>-<mode>)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="default: cuda when a CUDA device is present, else cpu")
    ap.add_argument("--no-demo", action="store_true", help="skip the conversion demo")
    ap.add_argument("--no-bench", action="store_true", help="skip the suites (demo only)")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to select benchmarks")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# 1. Demo
# ----------------------------------------------------------------------------------------------
def _interleaved_times(fns: dict, x_by_name: dict, runs: int, sync) -> dict:
    """Median and IQR per callable, calling them round-robin so drift hits all alike."""
    import statistics

    samples = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x_by_name[name])
            sync()
            samples[name].append(time.perf_counter() - t0)
    out = {}
    for name, s in samples.items():
        q = statistics.quantiles(s, n=4)
        out[name] = (statistics.median(s), q[2] - q[0])
    return out


def demo(dev: str, full: bool) -> tuple:
    """Returns (markdown text, ok)."""
    import torch

    from benchmarks import common

    lines = ["## Demo: convert() on mobilenet_v3_large\n"]

    def say(text=""):
        print(text)
        lines.append(text)

    import mnv3_kernels

    say(f"backends here: {mnv3_kernels.backends()}; build: {mnv3_kernels.build_info()}\n")
    model = common.build_model("large").to(dev)
    x = common.model_input(1, "nchw", dev)
    with torch.no_grad():
        ref64 = model.double()(x.double())
        model.float()
        fused, report = common.convert_model(model, "auto")
        say("What convert() replaced (module type counts, after minus before):\n")
        say("```")
        for name, delta in common.module_type_diff(model, fused).items():
            say(f"{name:32s} {delta:+d}")
        say("")
        say(str(report))
        say("```\n")
        ok = True
        errs = {}
        for layout in ("nchw", "channels_last"):
            xi = common.model_input(1, layout, dev)
            m_fused = common.to_layout(copy.deepcopy(fused), layout)
            m_eager = common.to_layout(copy.deepcopy(model), layout)
            errs[layout] = (common.max_rel_err(m_eager(xi), ref64), common.max_rel_err(m_fused(xi), ref64))
        for layout, (e_eager, e_fused) in errs.items():
            good = e_fused <= MAX_REL_ERR
            ok &= good
            say(f"- output vs float64 reference, {layout}: eager {e_eager:.2e}, converted {e_fused:.2e} "
                f"(max rel err, limit {MAX_REL_ERR:g}): {'OK' if good else 'MISMATCH'}")
        say("")

        sync = (lambda: torch.cuda.synchronize()) if dev == "cuda" else (lambda: None)
        batches = [1, 8] if dev == "cpu" else [1, 64]
        rows = []
        for n in batches:
            runs = (40 if n == 1 else 12) * (3 if full else 1)
            fns, xs = {}, {}
            for layout in ("nchw", "channels_last"):
                tag = "" if layout == "nchw" else " cl"
                fns[f"eager{tag}"] = common.to_layout(common.build_model("large").to(dev), layout)
                fns[f"converted{tag}"] = common.to_layout(copy.deepcopy(fused), layout)
                xs[f"eager{tag}"] = xs[f"converted{tag}"] = common.model_input(n, layout, dev)
            for name, fn in fns.items():  # warm-up
                for _ in range(3):
                    fn(xs[name])
            sync()
            times = _interleaved_times(fns, xs, runs, sync)
            base = times["eager"][0]
            for name, (med, iqr) in times.items():
                rows.append(f"| {n} | {name} | {med * 1e3:.2f} ms | {iqr * 1e3:.2f} ms | {base / med:.2f}× |")
        say(f"Timing on {dev} ({torch.get_num_threads()} threads), median of interleaved calls:\n")
        say("| batch | model | median | IQR | vs eager NCHW |")
        say("|---|---|---|---|---|")
        for r in rows:
            say(r)
        say("")
    return "\n".join(lines) + "\n", ok


# ----------------------------------------------------------------------------------------------
# 2. Suites
# ----------------------------------------------------------------------------------------------
def run_suites(dev: str, mode: str, json_path: str, keyword=None) -> int:
    rounds, max_time = ("10", "1.0") if mode == "full" else ("5", "0.25")
    cmd = [
        sys.executable, "-m", "pytest", os.path.join("benchmarks"), "-p", "no:cacheprovider", "-q", "-rs",
        "--ignore=benchmarks/test_report.py",
        f"--benchmark-json={json_path}", "--benchmark-disable-gc",
        f"--benchmark-min-rounds={rounds}", f"--benchmark-max-time={max_time}",
        "--benchmark-sort=fullname", "--benchmark-columns=min,median,iqr,max,rounds",
    ]
    if keyword:
        cmd += ["-k", keyword]
    env = dict(os.environ, MNV3_BENCH_MODE=mode, MNV3_BENCH_DEVICE=dev, **MALLOC_ENV)
    print("$ " + " ".join(f"{k}={env[k]}" for k in ("MNV3_BENCH_MODE", "MNV3_BENCH_DEVICE", *MALLOC_ENV)) + " "
          + " ".join(cmd[1:]), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    _ensure_malloc_env()
    started = time.time()
    import torch

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mode = "full" if args.full else "quick"
    os.environ["MNV3_BENCH_MODE"] = mode
    os.environ["MNV3_BENCH_DEVICE"] = dev
    out_dir = args.out or os.path.join(ROOT, "benchmarks", "results", f"{time.strftime('%Y%m%d-%H%M')}-{dev}-{mode}")
    out_dir = os.path.abspath(out_dir)  # the suites run with the repository root as working folder
    os.makedirs(out_dir, exist_ok=True)
    extra = []

    ok = True
    t_demo = 0.0
    if not args.no_demo:
        t0 = time.time()
        text, ok = demo(dev, args.full)
        t_demo = time.time() - t0
        path = os.path.join(out_dir, "demo.md")
        with open(path, "w") as f:
            f.write(text)
        extra.append(path)

    rc, t_bench = 0, 0.0
    json_path = os.path.join(out_dir, f"benchmarks-{dev}-{mode}.json")
    if not args.no_bench:
        t0 = time.time()
        rc = run_suites(dev, mode, json_path, args.keyword)
        t_bench = time.time() - t0

    run_md = os.path.join(out_dir, "run.md")
    with open(run_md, "w") as f:
        f.write(
            "## This run\n\n"
            f"- Command: `{shlex.join(['python', '-m', 'benchmarks.run', *argv])}` (mode `{mode}`, device `{dev}`), "
            f"environment `{' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())}` for the demo and every benchmark.\n"
            f"- Wall time: demo {t_demo:.0f} s, suites {t_bench:.0f} s (pytest exit status {rc}).\n"
        )
    extra.insert(0, run_md)
    if os.path.exists(json_path):
        from benchmarks import report

        report.main([json_path, "--out", out_dir, *sum((["--extra-md", p] for p in extra), []),
                     "--title", f"mnv3_kernels benchmarks ({dev}, {mode})"])
    else:
        print("no benchmark JSON was produced; no report written")
    total = time.time() - started
    print(f"\nresults in {out_dir}  (total {total:.0f} s: demo {t_demo:.0f} s, suites {t_bench:.0f} s)")
    if not ok:
        print("demo: converted model does NOT match the reference", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
