"""The report renders from a small pytest-benchmark JSON (runs in CI; no benchmarks timed)."""
import json
import os

from benchmarks import report


def _bench(group, provider, kind, median, baseline, compare="", **extra):
    stats = {"min": median * 0.9, "max": median * 1.3, "mean": median * 1.02, "stddev": median * 0.05,
             "rounds": 50, "median": median, "iqr": median * 0.04, "q1": median * 0.98, "q3": median * 1.02,
             "iqr_outliers": 0, "stddev_outliers": 1, "outliers": "1;0", "ld15iqr": median * 0.9,
             "hd15iqr": median * 1.1, "ops": 1 / median, "total": median * 50, "iterations": 1,
             "data": [median] * 5}
    ei = {"kind": kind, "provider": provider, "baseline": baseline, "compare": compare, "device": "cpu",
          "device_name": "Test CPU", "threads": 2, "torch": "2.x", "torchvision": "0.x", "triton": "3.x",
          "mnv3_kernels": "0.1.0", "mnv3_compiled": "true", "cpu_isa": "avx2", "backends": "cpu,reference",
          "mode": "ci", "malloc_env": "set", "tf32": False, "dtype": "float32", "max_rel_err": 1e-7,
          "warmup_calls": 3}
    ei.update(extra)
    return {"group": group, "name": f"test[{group}-{provider}]", "fullname": f"x::test[{group}-{provider}]",
            "params": None, "param": None, "extra_info": ei, "options": {}, "stats": stats}


def _sample():
    b = [
        _bench("ceiling cpu", "matmul", "ceiling", 0.015, "matmul", flops=2 * 1024**3, bytes=12 * 1024**2, layer="matmul"),
        _bench("ceiling cpu", "copy", "ceiling", 0.010, "copy", bytes=2 * 64 * 2**20, layer="copy"),
    ]
    for layer, n, layout, t in [("large-c16-k3-s1-112", 1, "nchw", 200e-6), ("large-c960-k5-s1-7+se", 1, "nchw", 90e-6),
                                ("large-c16-k3-s1-112", 1, "channels_last", 150e-6)]:
        g = f"dw {layer} b{n} {layout} cpu"
        common = dict(compare="eager-folded,compile,compile-freezing", layer=layer, batch=n, layout=layout,
                      flops=2 * 16 * 112 * 112 * 9, bytes=4 * 2 * 16 * 112 * 112, shape="1x16x112x112")
        b += [_bench(g, "eager-unfused", "dw", t, "eager-unfused", **common),
              _bench(g, "eager-folded", "dw", t * 0.8, "eager-unfused", **common),
              _bench(g, "fused-cpu", "dw", t * 0.2, "eager-unfused", **common)]
        if layout == "nchw":
            b += [_bench(g, "compile", "dw", t * 0.6, "eager-unfused", **common),
                  _bench(g, "compile-freezing", "dw", t * 0.5, "eager-unfused", **common)]
    g = "se se-c960-r240-7 b1 nchw cpu"
    se = dict(compare="compile", layer="se-c960-r240-7", batch=1, layout="nchw", bytes=3 * 4 * 960 * 49, flops=1000)
    b += [_bench(g, "eager", "se", 60e-6, "eager", **se), _bench(g, "compile", "se", 30e-6, "eager", **se),
          _bench(g, "fused-cpu", "se", 10e-6, "eager", **se)]
    g = "act c72-56 b1 cpu"
    act = dict(compare="relu,hswish-F", layer="c72-56", batch=1, layout="nchw", bytes=8 * 72 * 56 * 56)
    for p, t in [("relu", 20e-6), ("swish", 60e-6), ("hswish-naive", 90e-6), ("hswish-F", 25e-6),
                 ("hswish-where", 120e-6), ("hswish-fused-cpu", 22e-6)]:
        b.append(_bench(g, p, "act", t, "hswish-naive", **act))
    g = "model large b1 cpu"
    md = dict(compare="compile,compile-freezing", layer="large", model="large", batch=1, layout="nchw")
    for p, t in [("eager", 0.0208), ("eager-cl", 0.019), ("compile", 0.0153), ("compile-freezing", 0.0139),
                 ("converted-cpu", 0.012), ("converted-cpu-cl", 0.010), ("converted-cpu+compile", 0.009)]:
        b.append(_bench(g, p, "model", t, "eager", **md))
    g = "table5 large b1 nchw cpu"
    for p, t in [("all-relu", 0.0200), ("hswish-naive", 0.0230), ("hswish-F", 0.0208), ("hswish-where", 0.0240),
                 ("hswish-fused-cpu", 0.0205), ("fused-blocks-cpu", 0.012)]:
        b.append(_bench(g, p, "table5", t, "all-relu", compare="hswish-naive", layer="large", model="large",
                        batch=1, layout="nchw"))
    # An interleaved case: one benchmark whose extra_info holds every provider's statistics.
    inter = {p: {"median": t, "q1": t * 0.99, "q3": t * 1.03, "min": t * 0.95, "max": t * 1.4, "rounds": 20}
             for p, t in [("eager", 0.0200), ("converted-cpu", 0.0160), ("compile", 0.0180)]}
    # Two peers with per-round samples: the machine slows down in round 2 for both providers.
    inter["onnxruntime"] = {"median": 0.0200, "q1": 0.02, "q3": 0.04, "min": 0.02, "max": 0.04, "rounds": 3,
                            "samples": [0.0200, 0.0400, 0.0200]}
    inter["openvino"] = {"median": 0.0300, "q1": 0.03, "q3": 0.03, "min": 0.03, "max": 0.03, "rounds": 3,
                         "samples": [0.0300, 0.0300, 0.0300]}
    inter["converted-cpu"]["samples"] = [0.0150, 0.0320, 0.0170]
    b.append(_bench("model-il large b1 cpu", "round-robin", "model-il", 0.06, "eager",
                    compare="compile", layer="large", model="large", batch=1, layout="nchw",
                    weight_bytes=22_000_000, interleaved=inter))
    inter5 = {p: {"median": t, "q1": t, "q3": t * 1.01, "min": t, "max": t * 1.1, "rounds": 20}
              for p, t in [("all-relu", 0.0200), ("hswish-naive", 0.0240), ("hswish-fused-cpu", 0.0202)]}
    b.append(_bench("table5-il large b1 cpu", "round-robin", "table5-il", 0.07, "all-relu",
                    compare="hswish-naive", layer="large", model="large", batch=1, layout="nchw",
                    interleaved=inter5))
    interb = {p: {"median": t, "q1": t, "q3": t * 1.01, "min": t, "max": t * 1.1, "rounds": 20}
              for p, t in [("eager", 400e-6), ("layer-by-layer", 300e-6), ("fused-block", 200e-6)]}
    b.append(_bench("blk-il block1-16-64-24-112-k3-s2 b8 cpu", "round-robin", "blk-il", 0.02, "eager",
                    compare="layer-by-layer", layer="block1-16-64-24-112-k3-s2", block=1, batch=8, layout="channels_last",
                    flops=2e8, bytes_layer=40e6, bytes_fused=12.5e6, interleaved=interb))
    return {"machine_info": {"python_version": "3.11.7"}, "commit_info": {"id": "0123456789abcdef", "dirty": True},
            "benchmarks": b, "datetime": "2026-01-01T00:00:00", "version": "5.2.3"}


def test_report_renders(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_sample()))
    extra = tmp_path / "extra.md"
    extra.write_text("## Extra section\n\nhello\n")
    out = tmp_path / "out"
    path = report.main([str(src), "--out", str(out), "--extra-md", str(extra)])
    text = open(path).read()
    for needle in ("## Headline", "Depthwise conv + BN + activation", "Squeeze-excite", "Activations",
                   "Whole models", "Table 5 reproduction", "## Machine ceilings", "Extra section",
                   "MALLOC_MMAP_THRESHOLD_=33554432", "fused-cpu", "+2.5%", "57.5 ms"):
        assert needle in text, needle
    # fused-cpu is 5x faster than eager-unfused in every dw group of the sample
    assert "5.00× (n=3" in text
    # The interleaved cases become one row per provider: 20 / 16 ms, and +20.0% / +1.0% vs all-relu.
    assert "Whole models (224×224, eval, no_grad), interleaved" in text
    assert "| large | 1 | cpu | converted-cpu | 16.00 ms |" in text and "1.25×" in text
    assert "| round-robin |" not in text
    # Against the faster peer (onnxruntime, 20 ms): 16 / 20 ms by medians; round by round
    # 0.75, 0.80, 0.85 -> median 0.80, quartiles 0.75-0.85.
    assert "**0.80×** the time of the faster peer" in text
    assert "round by round 0.80× (quartiles 0.75–0.85, 3 rounds)" in text
    # 22 MB of weights at the copy ceiling (2 * 64 MiB in 10 ms = 13.4 GB/s): 1.64 ms.
    assert "the model's 22.0 MB of weights take 1.64 ms to read once at the run's copy bandwidth (13.4 GB/s)" in text
    assert "+20.0%" in text and "+1.0%" in text
    # The block table: 300 / 200 us layer by layer vs fused, 2e8 FLOP in 200 us, 40 -> 12.5 MB.
    assert "one fused call vs layer by layer" in text
    assert "Batch 8: fused block vs layer by layer, geomean 1.50×" in text
    assert "| 300.0 µs | 200.0 µs | 1.50× | 2.00× | 1000.0 | 40.00 | 12.50 |" in text
    # matmul peak: 2*1024^3 / 15 ms
    assert f"{2 * 1024**3 / 0.015 / 1e9:.1f}" in text
    for png in ("dw_speedup_cpu.png", "dw_roofline_cpu.png", "se_cpu.png", "act_cpu.png", "models.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in text
    copied = json.loads((out / "in.json").read_text())
    assert "data" not in copied["benchmarks"][0]["stats"]
    assert os.path.exists(out / "report.md")


def test_report_cli_without_matching_kinds(tmp_path):
    data = _sample()
    data["benchmarks"] = [b for b in data["benchmarks"] if b["extra_info"]["kind"] == "act"]
    src = tmp_path / "act.json"
    src.write_text(json.dumps(data))
    path = report.main([str(src), "--out", str(tmp_path / "o")])
    text = open(path).read()
    assert "Activations" in text and "Table 5 reproduction" not in text
