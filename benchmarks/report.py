"""Markdown report and PNG plots from pytest-benchmark JSON.

    python -m benchmarks.report RESULTS.json [MORE.json ...] --out benchmarks/results/NAME

Reads the groups and extra_info that the suites in benchmarks/ record (kind, provider, baseline,
compare, flops, bytes, ...), and writes NAME/report.md, NAME/*.png and a copy of each JSON
(per-round samples dropped unless --keep-samples; the statistics stay).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional

# The paper's Table 5 (MobileNetV3-Large, Pixel 1, ms), mapped onto our provider names.
PAPER_TABLE5 = OrderedDict([("all-relu", 50.5), ("hswish-fused", 51.4), ("hswish-naive", 57.5)])
PAPER_LABEL = {"all-relu": "ReLU", "hswish-fused": "h-swish @ optimized", "hswish-naive": "h-swish @ naive"}

_ORDER = ["matmul", "copy", "eager-unfused", "eager", "eager-cl", "eager-folded", "compile",
          "compile-freezing", "all-relu", "relu", "swish", "hswish-naive", "hswish-F", "hswish-where",
          "hswish-fused", "fused-blocks-relu", "fused-blocks", "layer-by-layer", "fused-block", "fused", "onnxruntime", "openvino",
          "converted"]
_KIND_TITLE = OrderedDict([
    ("ceiling", "Machine ceilings"),
    ("dw-il", "Depthwise conv + BN + activation, interleaved"),
    ("dw", "Depthwise conv + BN + activation, each provider on its own"),
    ("pw-il", "Pointwise (1x1) conv + BN + activation, interleaved"),
    ("blk-il", "Whole inverted-residual blocks, interleaved"),
    ("se-il", "Squeeze-excite, interleaved"), ("se", "Squeeze-excite, each provider on its own"),
    ("act-il", "Activations, interleaved"), ("act", "Activations, each provider on its own"),
    ("grad-il", "Converted vs original by autograd mode, interleaved"),
    ("model-il", "Whole models, interleaved"), ("model", "Whole models, each provider on its own"),
    ("table5-il", "Table 5 (activation choice, whole network), interleaved"),
    ("table5", "Table 5 (activation choice, whole network), each variant on its own"),
])


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
class Row:
    def __init__(self, bench: dict):
        st = bench["stats"]
        self.ei = dict(bench.get("extra_info") or {})
        self.group = bench.get("group") or bench.get("name")
        self.name = bench.get("name", "")
        self.provider = self.ei.get("provider") or self.name
        self.kind = self.ei.get("kind", "other")
        self.device = self.ei.get("device", "cpu")
        for k in ("median", "mean", "min", "max", "q1", "q3", "iqr", "stddev", "rounds"):
            setattr(self, k, st.get(k))
        self.samples = st.get("samples")  # interleaved cases: one time per round, in round order
        self.flops = self.ei.get("flops")
        self.bytes = self.ei.get("bytes")

    def gflops(self) -> Optional[float]:
        return self.flops / self.median / 1e9 if self.flops and self.median else None

    def gbs(self) -> Optional[float]:
        return self.bytes / self.median / 1e9 if self.bytes and self.median else None


def provider_key(p: str):
    for i, prefix in enumerate(_ORDER):
        if p == prefix:
            return (i, 0, p)
    for i, prefix in enumerate(_ORDER):
        if p.startswith(prefix):
            return (i, 1, p)
    return (len(_ORDER), 0, p)


def load(paths: List[str]):
    rows: Dict[tuple, Row] = OrderedDict()
    meta = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta.append({"path": path, "datetime": data.get("datetime"), "machine": data.get("machine_info") or {},
                     "commit": data.get("commit_info") or {}, "version": data.get("version")})
        for bench in data.get("benchmarks", []):
            for row in _rows_of(bench):
                rows[(row.group, row.provider)] = row  # a later file replaces an earlier measurement
    return list(rows.values()), meta


def _rows_of(bench: dict) -> List[Row]:
    """One row per provider: an interleaved case (test_models.py) timed several providers
    round-robin and holds their statistics in extra_info["interleaved"]."""
    ei = bench.get("extra_info") or {}
    inter = ei.get("interleaved")
    if not inter:
        return [Row(bench)]
    rows = []
    for provider, st in inter.items():
        stats = dict(st, iqr=st["q3"] - st["q1"])
        rows.append(Row({"group": bench.get("group"), "name": f"{bench.get('name', '')}[{provider}]",
                         "stats": stats, "extra_info": {**ei, "provider": provider,
                                                        "max_rel_err": st.get("max_rel_err")}}))
    return rows


def by_group(rows: List[Row]) -> "OrderedDict[str, Dict[str, Row]]":
    groups: "OrderedDict[str, Dict[str, Row]]" = OrderedDict()
    for r in rows:
        groups.setdefault(r.group, {})[r.provider] = r
    return groups


def ceilings(rows: List[Row]) -> Dict[str, dict]:
    """Per device: the measured matmul GFLOP/s and copy GB/s (best of what was measured)."""
    out: Dict[str, dict] = defaultdict(dict)
    for r in rows:
        if r.kind != "ceiling":
            continue
        if r.provider == "matmul" and r.gflops():
            out[r.device]["gflops"] = max(out[r.device].get("gflops", 0.0), r.gflops())
        if r.provider == "copy" and r.gbs():
            out[r.device]["gbs"] = max(out[r.device].get("gbs", 0.0), r.gbs())
    return out


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------
def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def fmt_x(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.2f}×"


def fmt_num(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def md_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def geomean(values: List[float]) -> Optional[float]:
    values = [v for v in values if v and v > 0]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def speedup(group: Dict[str, Row], provider: str, ref: str) -> Optional[float]:
    """How many times faster `provider` is than `ref` in this group (medians)."""
    if provider not in group or ref not in group or not group[provider].median:
        return None
    return group[ref].median / group[provider].median


def _compare_list(group: Dict[str, Row]) -> List[str]:
    any_row = next(iter(group.values()))
    refs = [any_row.ei.get("baseline")] + [c for c in (any_row.ei.get("compare") or "").split(",") if c]
    seen = []
    for r in refs:
        if r and r in group and r not in seen:
            seen.append(r)
    return seen


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------
def group_table(group: Dict[str, Row], ceil: Dict[str, dict]) -> str:
    refs = _compare_list(group)
    header = ["provider", "median", "IQR", "min – max", "rounds"] + [f"vs {r}" for r in refs]
    any_row = next(iter(group.values()))
    has_flops = any(r.flops for r in group.values())
    has_bytes = any(r.bytes for r in group.values())
    c = ceil.get(any_row.device, {})
    if has_flops:
        header += ["GFLOP/s", "% matmul peak"]
    if has_bytes:
        header += ["GB/s", "% copy"]
    header.append("max rel err")
    rows = []
    for p in sorted(group, key=provider_key):
        r = group[p]
        row = [p, fmt_time(r.median), fmt_time(r.iqr), f"{fmt_time(r.min)} – {fmt_time(r.max)}", r.rounds]
        row += [fmt_x(speedup(group, p, ref)) for ref in refs]
        if has_flops:
            g = r.gflops()
            row += [fmt_num(g), fmt_pct(g / c["gflops"]) if g and c.get("gflops") else "–"]
        if has_bytes:
            b = r.gbs()
            row += [fmt_num(b), fmt_pct(b / c["gbs"]) if b and c.get("gbs") else "–"]
        err = r.ei.get("max_rel_err")
        row.append("–" if err is None else f"{err:.1e}")
        rows.append(row)
    return md_table(header, rows)


def geomean_rows(groups, kind: str, refs: List[str], split=None, exclude=()) -> List[List[str]]:
    """One row per (split value, provider): geomean speedup over each ref and how many groups."""
    selected = [g for g in groups.values() if next(iter(g.values())).kind == kind]
    if not selected:
        return []
    splits = OrderedDict()
    for g in selected:
        any_row = next(iter(g.values()))
        key = split(any_row) if split else "all"
        splits.setdefault(key, []).append(g)
    if split and len(splits) > 1:
        splits["all"] = selected
    providers = sorted({p for g in selected for p in g if p not in exclude}, key=provider_key)
    out = []
    for key, gs in splits.items():
        for p in providers:
            cells, any_value = [], False
            for ref in refs:
                ratios = [speedup(g, p, ref) for g in gs]
                ratios = [v for v in ratios if v]
                if p == ref or not ratios:
                    cells.append("–")
                    continue
                any_value = True
                cells.append(f"{geomean(ratios):.2f}× (n={len(ratios)}, {min(ratios):.2f}–{max(ratios):.2f})")
            if any_value:
                out.append([key, p] + cells)
    return out


def _case_label(row: Row) -> str:
    parts = [str(row.ei.get("layer") or row.group), f"b{row.ei.get('batch')}"]
    if row.ei.get("layout") and row.kind.split("-")[0] in ("dw", "pw", "se"):
        parts.append(str(row.ei.get("layout")))
    return " ".join(parts)


def _of_kind(groups, kind: str) -> list:
    return [g for g in groups.values() if next(iter(g.values())).kind == kind]


def _ratio_summary(gs, provider: str, ref: str) -> Optional[str]:
    """'G× geomean over n cases, slowest S× (case)' for provider vs ref, or None."""
    ratios = [(speedup(g, provider, ref), g) for g in gs]
    ratios = [(v, g) for v, g in ratios if v]
    if not ratios:
        return None
    worst, g = min(ratios, key=lambda t: t[0])
    return (f"**{geomean([v for v, _ in ratios]):.2f}×** geomean over {len(ratios)} cases, slowest "
            f"**{worst:.2f}×** ({_case_label(g[provider])})")


def headline_lines(groups, ceil=None) -> List[str]:
    """The numbers to quote, each against the baselines a careful user would pick, with the
    slowest case. Interleaved measurements when the run has them."""
    lines = []

    def pick(kind):
        gs = _of_kind(groups, f"{kind}-il")
        return (gs, "interleaved") if gs else (_of_kind(groups, kind), "one provider after another")

    comparisons = (
        ("dw", "depthwise conv+BN+act", "fused-", [
            ("eager-unfused", "eager conv2d → batch_norm → act"),
            ("eager-folded", "eager with BN folded beforehand, conv2d(+bias) → act"),
            ("compile", "torch.compile of the unfused block"),
            ("compile-freezing", "torch.compile with freezing")]),
        ("pw", "pointwise (1x1) conv+BN+act", "fused-", [
            ("eager-unfused", "eager conv2d → batch_norm → act"),
            ("eager-folded", "eager with BN folded beforehand, conv2d(+bias) → act")]),
        ("se", "squeeze-excite", "fused-", [("eager", "eager torchvision module"),
                                            ("compile", "torch.compile of it")]),
        ("act", "h-swish", "hswish-fused-", [("hswish-F", "F.hardswish"),
                                             ("hswish-naive", "x * relu6(x + 3) / 6")]),
    )
    for kind, what, prefix, refs in comparisons:
        gs, how = pick(kind)
        providers = sorted({p for g in gs for p in g if p.startswith(prefix)})
        for p in providers:
            parts = [f"  - vs {label}: {text}" for ref, label in refs if (text := _ratio_summary(gs, p, ref))]
            if parts:
                lines += [f"- {what}, {p} ({how}):"] + parts
    gs, how = pick("model")
    for g in gs:
        r0 = next(iter(g.values()))
        for p in sorted(g, key=provider_key):
            if p.startswith("converted-") and "+" not in p and not p.endswith("-layers"):
                base = "eager-cl" if p.endswith("-cl") and "eager-cl" in g else "eager"
                v = speedup(g, p, base)
                if v:
                    lines.append(f"- mobilenet_v3_{r0.ei.get('model')} b{r0.ei.get('batch')} {r0.device}, {p} "
                                 f"vs {base} ({how}, no_grad): **{v:.2f}×**")
        if "converted-cpu" in g and "converted-cpu-layers" in g:
            lines.append(f"- mobilenet_v3_{r0.ei.get('model')} b{r0.ei.get('batch')} {r0.device}, the whole "
                         f"model as one call (converted-cpu) vs every layer called from Python "
                         f"(converted-cpu-layers, {how}): **{speedup(g, 'converted-cpu', 'converted-cpu-layers'):.2f}×**")
        peer_lines = _peer_lines(g, how, ceil)
        lines += peer_lines
    for g in _of_kind(groups, "grad-il"):
        r0 = next(iter(g.values()))
        cells = []
        for mode in ("no_grad", "inference_mode", "grad"):
            conv = [p for p in g if p.startswith("converted-") and p.endswith(f"-{mode}")]
            if conv and f"eager-{mode}" in g:
                cells.append(f"{mode} **{speedup(g, conv[0], f'eager-{mode}'):.2f}×**")
        if cells:
            lines.append(f"- converted vs original mobilenet_v3_{r0.ei.get('model')} b{r0.ei.get('batch')} "
                         f"{r0.device} by autograd mode (interleaved): " + ", ".join(cells))
    return lines


def paired_ratios(a: Row, b: Row) -> List[float]:
    """a's time over b's in each round of an interleaved case (both timed within seconds of each
    other, so the drift of a shared machine cancels); empty without per-round samples."""
    if not (a.samples and b.samples) or len(a.samples) != len(b.samples):
        return []
    return [x / y for x, y in zip(a.samples, b.samples) if y > 0]


def _quartiles(v: List[float]):
    """(q1, median, q3), as common.summary computes them for the per-provider statistics."""
    return statistics.quantiles(v, n=4) if len(v) > 1 else v * 3


def _peer_lines(g, how, ceil=None) -> List[str]:
    """The converted model (NCHW input) against the faster of ONNX Runtime and OpenVINO, and
    against torch.compile with freezing: what a CPU user would deploy instead."""
    r0 = next(iter(g.values()))
    peers = [p for p in ("onnxruntime", "openvino") if p in g]
    out = []
    for p in sorted(g, key=provider_key):
        if not (p.startswith("converted-") and "+" not in p and not p.endswith(("-cl", "-layers"))):
            continue
        parts = []
        if peers:
            best = min(peers, key=lambda q: g[q].median)
            parts.append(f"time {fmt_time(g[p].median)} vs {best} {fmt_time(g[best].median)}: "
                         f"**{g[p].median / g[best].median:.2f}×** the time of the faster peer")
            paired = paired_ratios(g[p], g[best])
            if paired:
                q1, med, q3 = _quartiles(paired)
                parts.append(f"round by round {med:.2f}× (quartiles {q1:.2f}–{q3:.2f}, {len(paired)} rounds)")
        wb, bw = r0.ei.get("weight_bytes"), (ceil or {}).get(r0.device, {}).get("gbs")
        if wb and bw:
            parts.append(f"the model's {wb / 1e6:.1f} MB of weights take {fmt_time(wb / (bw * 1e9))} to read "
                         f"once at the run's copy bandwidth ({bw:.1f} GB/s)")
        if "compile-freezing" in g:
            parts.append(f"{speedup(g, p, 'compile-freezing'):.2f}× faster than torch.compile+freezing")
        if parts:
            out.append(f"- mobilenet_v3_{r0.ei.get('model')} b{r0.ei.get('batch')} {r0.device}, {p} "
                       f"({how}): " + "; ".join(parts))
    return out


def grad_mode_table(groups, kind: str = "grad-il") -> str:
    """Per model: eager and converted under each autograd mode, side by side."""
    rows = []
    for g in _of_kind(groups, kind):
        r0 = next(iter(g.values()))
        base = g.get("eager-no_grad")
        for mode in ("no_grad", "inference_mode", "grad"):
            eager = g.get(f"eager-{mode}")
            conv = next((g[p] for p in g if p.startswith("converted-") and p.endswith(f"-{mode}")), None)
            if eager is None or conv is None:
                continue
            rows.append([f"mobilenet_v3_{r0.ei.get('model')}", r0.ei.get("batch"), r0.device, mode,
                         fmt_time(eager.median), fmt_time(conv.median),
                         fmt_x(eager.median / conv.median),
                         fmt_x(base.median / conv.median) if base else "–"])
    if not rows:
        return ""
    return md_table(["model", "batch", "device", "autograd mode", "eager", "converted", "converted vs eager",
                     "converted vs eager no_grad"], rows)


def wide_dw_tables(groups, ceil, kind: str = "dw") -> str:
    """Per (device, batch, layout): one line per layer, medians of every provider side by side."""
    dw = [g for g in groups.values() if next(iter(g.values())).kind == kind]
    if not dw:
        return ""
    parts = OrderedDict()
    for g in dw:
        r = next(iter(g.values()))
        parts.setdefault((r.device, r.ei.get("batch"), r.ei.get("layout")), []).append(g)
    text = []
    for (dev, batch, layout), gs in parts.items():
        providers = sorted({p for g in gs for p in g}, key=provider_key)
        fused = [p for p in providers if p.startswith("fused-")]
        header = ["layer"] + [f"{p}" for p in providers]
        for f in fused:
            header += [f"{f} vs eager-unfused", f"{f} vs compile", f"{f} vs compile-freezing"]
        roof = "GFLOP/s (% peak)" if dev == "cpu" else "GB/s (% copy)"
        header += [f"{f} {roof}" for f in fused]
        rows = []
        c = ceil.get(dev, {})
        for g in gs:
            r0 = next(iter(g.values()))
            row = [r0.ei.get("layer", r0.group)]
            row += [fmt_time(g[p].median) if p in g else "–" for p in providers]
            for f in fused:
                row += [fmt_x(speedup(g, f, "eager-unfused")), fmt_x(speedup(g, f, "compile")),
                        fmt_x(speedup(g, f, "compile-freezing"))]
            for f in fused:
                if f not in g:
                    row.append("–")
                elif dev == "cpu":
                    v = g[f].gflops()
                    row.append(f"{fmt_num(v)} ({fmt_pct(v / c['gflops']) if v and c.get('gflops') else '–'})")
                else:
                    v = g[f].gbs()
                    row.append(f"{fmt_num(v)} ({fmt_pct(v / c['gbs']) if v and c.get('gbs') else '–'})")
            rows.append(row)
        text.append(f"#### {dev}, batch {batch}, {layout} (medians)\n\n" + md_table(header, rows))
    return "\n".join(text)


def pointwise_efficiency(groups, ceil, kind: str) -> str:
    """GFLOP/s of the fused pointwise kernel per layer, against the measured matmul peak, for the
    layers of at least 20 MFLOP (the bar of a GEMM kernel)."""
    rows, effs = [], []
    for g in _of_kind(groups, kind):
        r = g.get("fused-cpu")
        if r is None or not r.flops or r.flops < 20e6:
            continue
        peak = (ceil.get(r.device) or {}).get("gflops")
        gf = r.flops / r.median / 1e9
        effs.append(gf / peak if peak else None)
        rows.append([r.ei.get("layer", ""), f"b{r.ei.get('batch')}", r.ei.get("layout", ""), fmt_num(gf),
                     fmt_pct(gf / peak) if peak else "?"])
    if not rows:
        return ""
    known = [e for e in effs if e is not None]
    head = (f"Fused kernel on the layers of ≥ 20 MFLOP: {len(rows)} cases, "
            f"{fmt_pct(min(known)) if known else '?'} to {fmt_pct(max(known)) if known else '?'} of the measured "
            "matmul peak.\n\n")
    return head + md_table(["layer", "batch", "layout", "GFLOP/s", "of matmul peak"], rows)


def block_table(groups, kind: str) -> str:
    """Per block and batch: the fused block call against the same block layer by layer (and
    eager), its GFLOP/s and the estimated bytes each path moves to and from memory."""
    rows, ratios = [], {}
    for g in _of_kind(groups, kind):
        f, lay, eag = g.get("fused-block"), g.get("layer-by-layer"), g.get("eager")
        r = f or lay
        if r is None:
            continue
        n = r.ei.get("batch")
        x = speedup(g, "fused-block", "layer-by-layer")
        if x is not None:
            ratios.setdefault(n, []).append(x)
        rows.append([r.ei.get("layer", ""), f"b{n}", fmt_time(eag.median if eag else None),
                     fmt_time(lay.median if lay else None), fmt_time(f.median if f else None), fmt_x(x),
                     fmt_x(speedup(g, "fused-block", "eager")),
                     fmt_num(r.flops / f.median / 1e9) if f and r.flops else "?",
                     fmt_num(r.ei.get("bytes_layer", 0) / 1e6, 2), fmt_num(r.ei.get("bytes_fused", 0) / 1e6, 2)])
    if not rows:
        return ""
    head = "".join(f"Batch {n}: fused block vs layer by layer, geomean {fmt_x(geomean(v))} "
                   f"(min {fmt_x(min(v))}, max {fmt_x(max(v))}, {len(v)} blocks).\n\n" for n, v in sorted(ratios.items()))
    return head + md_table(["block", "batch", "eager", "layer by layer", "fused block", "vs layer by layer",
                            "vs eager", "fused GFLOP/s", "est. MB layer by layer", "est. MB fused"], rows)


def model_table(groups, kind: str) -> str:
    gs = [g for g in groups.values() if next(iter(g.values())).kind == kind]
    if not gs:
        return ""
    refs = []
    for g in gs:
        refs += [r for r in _compare_list(g) if r not in refs]
    rows = []
    for g in gs:
        for p in sorted(g, key=provider_key):
            r = g[p]
            rows.append([r.ei.get("model", ""), r.ei.get("batch", ""), r.device, p, fmt_time(r.median),
                         fmt_time(r.iqr)] + [fmt_x(speedup(g, p, ref)) for ref in refs])
    return md_table(["model", "batch", "device", "provider", "median", "IQR"] + [f"vs {r}" for r in refs], rows)


def table5_section(groups, kind: str = "table5") -> str:
    gs = [g for g in groups.values() if next(iter(g.values())).kind == kind]
    if not gs:
        return ""
    text = []
    for g in gs:
        r0 = next(iter(g.values()))
        relu = g.get("all-relu")
        header = ["variant", "median", "IQR", "vs all-relu", "paper (Pixel 1, V3-Large)", "paper vs all-relu"]
        rows = []
        for p in sorted(g, key=provider_key):
            r = g[p]
            rel = f"{100 * (r.median / relu.median - 1):+.1f}%" if relu else "–"
            if p.startswith("fused-blocks-") and not p.startswith("fused-blocks-relu-"):
                # Not a Table 5 variant: conversion and activation change together, so its
                # h-swish cost is read against the converted all-ReLU network.
                base = g.get("fused-blocks-relu-" + p[len("fused-blocks-"):])
                rel = f"{100 * (r.median / base.median - 1):+.1f}% vs fused-blocks-relu" if base else "–"
            paper_key = "hswish-fused" if p.startswith("hswish-fused") else p
            paper = PAPER_TABLE5.get(paper_key)
            paper_rel = f"{100 * (paper / PAPER_TABLE5['all-relu'] - 1):+.1f}%" if paper else ""
            rows.append([p, fmt_time(r.median), fmt_time(r.iqr), rel,
                         f"{paper} ms ({PAPER_LABEL[paper_key]})" if paper else "", paper_rel])
        text.append(f"#### mobilenet_v3_{r0.ei.get('model')}, batch {r0.ei.get('batch')}, "
                    f"{r0.ei.get('layout')}, {r0.device}\n\n" + md_table(header, rows))
    return "\n".join(text)


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(providers):
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {p: cmap(i % 10) for i, p in enumerate(sorted(providers, key=provider_key))}


def _plain_log_axis(axis) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(FormatStrFormatter(""))


def _bar_speedups(ax, gs, baseline, providers, colors, labels, log=True, rel_time=False):
    import numpy as np

    x = np.arange(len(gs))
    width = 0.8 / max(1, len(providers))
    for i, p in enumerate(providers):
        vals = []
        for g in gs:
            s = speedup(g, p, baseline)
            vals.append((1 / s if rel_time else s) if s else float("nan"))
        ax.bar(x + (i - (len(providers) - 1) / 2) * width, vals, width, label=p, color=colors[p])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    if log:
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
    ax.grid(axis="y", alpha=0.3)


def plot_dw(groups, out_dir, ceil) -> List[str]:
    plt = _plt()
    files = []
    dw = [g for g in groups.values() if next(iter(g.values())).kind == "dw"]
    for dev in sorted({next(iter(g.values())).device for g in dw}):
        gsd = [g for g in dw if next(iter(g.values())).device == dev]
        keys = sorted({(next(iter(g.values())).ei.get("batch"), next(iter(g.values())).ei.get("layout")) for g in gsd})
        providers = sorted({p for g in gsd for p in g if p != "eager-unfused"}, key=provider_key)
        colors = _colors(providers)
        fig, axes = plt.subplots(len(keys), 1, figsize=(12, 3.6 * len(keys)), squeeze=False)
        for ax, (batch, layout) in zip(axes[:, 0], keys):
            gs = [g for g in gsd if (next(iter(g.values())).ei.get("batch"), next(iter(g.values())).ei.get("layout")) == (batch, layout)]
            labels = [next(iter(g.values())).ei.get("layer") for g in gs]
            _bar_speedups(ax, gs, "eager-unfused", providers, colors, labels)
            ax.set_title(f"depthwise conv+BN+act, {dev}, batch {batch}, {layout}: speedup over eager-unfused (median)", fontsize=9)
            ax.set_ylabel("speedup (×, log)")
        axes[0, 0].legend(fontsize=7, ncol=len(providers), loc="upper left")
        fig.tight_layout()
        name = f"dw_speedup_{dev}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        files.append(name)

        # Roofline: achieved GFLOP/s against arithmetic intensity, with the measured ceilings.
        c = ceil.get(dev, {})
        fig, ax = plt.subplots(figsize=(8, 5.5))
        pts = defaultdict(list)
        for g in gsd:
            for p, r in g.items():
                if r.gflops() and r.bytes:
                    pts[p].append((r.flops / r.bytes, r.gflops()))
        cols = _colors(list(pts))
        for p in sorted(pts, key=provider_key):
            xs, ys = zip(*pts[p])
            ax.scatter(xs, ys, s=18, label=p, color=cols[p], alpha=0.8)
        all_x = [x for v in pts.values() for x, _ in v] or [1.0]
        lo, hi = min(all_x) / 1.5, max(all_x) * 1.5
        if c.get("gflops"):
            ax.axhline(c["gflops"], color="black", ls="--", lw=1, label=f"measured matmul peak {c['gflops']:.0f} GFLOP/s")
        if c.get("gbs"):
            ax.plot([lo, hi], [lo * c["gbs"], hi * c["gbs"]], color="gray", ls=":", lw=1,
                    label=f"measured copy {c['gbs']:.0f} GB/s × intensity")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_axis(ax.xaxis)
        _plain_log_axis(ax.yaxis)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP / byte, 4·(in+out) bytes)")
        ax.set_ylabel("GFLOP/s (median)")
        ax.set_title(f"depthwise layers on {dev}: achieved vs measured ceilings", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"dw_roofline_{dev}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def plot_simple(groups, out_dir, kind, baseline, title, ylabel, rel_time=False, log=True) -> List[str]:
    plt = _plt()
    files = []
    sel = [g for g in groups.values() if next(iter(g.values())).kind == kind]
    for dev in sorted({next(iter(g.values())).device for g in sel}):
        gs = [g for g in sel if next(iter(g.values())).device == dev]
        providers = sorted({p for g in gs for p in g if p != baseline}, key=provider_key)
        if not providers:
            continue
        colors = _colors(providers)
        labels = []
        for g in gs:
            r = next(iter(g.values()))
            labels.append(f"{r.ei.get('layer')} b{r.ei.get('batch')}" + (f" {r.ei.get('layout')}" if kind == "se" else ""))
        fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(gs) * max(1, len(providers)) ** 0.5 + 4), 4.5))
        _bar_speedups(ax, gs, baseline, providers, colors, labels, log=log, rel_time=rel_time)
        ax.set_title(f"{title}, {dev}", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, ncol=min(4, len(providers)))
        fig.tight_layout()
        name = f"{kind}_{dev}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def plot_models(groups, out_dir) -> List[str]:
    plt = _plt()
    files = []
    kinds = {next(iter(g.values())).kind for g in groups.values()}
    # The interleaved measurements when there are any: they are the ones to compare.
    wanted = ("model-il", "table5-il") if kinds & {"model-il", "table5-il"} else ("model", "table5")
    sel = [g for g in groups.values() if next(iter(g.values())).kind in wanted]
    if not sel:
        return files
    fig, axes = plt.subplots(len(sel), 1, figsize=(9, 0.32 * sum(len(g) for g in sel) + 1.2 * len(sel)), squeeze=False)
    for ax, g in zip(axes[:, 0], sel):
        r0 = next(iter(g.values()))
        providers = sorted(g, key=provider_key)
        med = [g[p].median * 1e3 for p in providers]
        err = [[(g[p].median - (g[p].q1 or g[p].median)) * 1e3 for p in providers],
               [((g[p].q3 or g[p].median) - g[p].median) * 1e3 for p in providers]]
        ax.barh(range(len(providers)), med, xerr=err,
                color="tab:blue" if r0.kind.startswith("model") else "tab:orange")
        ax.set_yticks(range(len(providers)))
        ax.set_yticklabels(providers, fontsize=8)
        ax.invert_yaxis()
        base = g.get(r0.ei.get("baseline"))
        for i, p in enumerate(providers):
            note = f"{med[i]:.2f} ms"
            if base and p != base.provider:
                note += f"  ({100 * (g[p].median / base.median - 1):+.1f}% vs {base.provider})"
            ax.text(med[i] + err[1][i], i, "  " + note, va="center", fontsize=7)
        ax.set_xlim(0, max(med) * 1.5)
        what = "Table 5 variants" if r0.kind.startswith("table5") else "whole model"
        how = ", interleaved" if r0.kind.endswith("-il") else ""
        ax.set_title(f"{what}: mobilenet_v3_{r0.ei.get('model')}, batch {r0.ei.get('batch')}, {r0.device}"
                     f"{how} (median, IQR bars)", fontsize=9)
        ax.set_xlabel("ms")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "models.png"), dpi=110)
    plt.close(fig)
    files.append("models.png")
    return files


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
def _environment(rows: List[Row], meta: List[dict]) -> str:
    lines = []
    for dev in sorted({r.device for r in rows}):
        ei = next(r.ei for r in rows if r.device == dev)
        lines.append(
            f"- **{dev}**: {ei.get('device_name', '?')}, {ei.get('threads', '?')} threads; torch {ei.get('torch')}, "
            f"torchvision {ei.get('torchvision')}, triton {ei.get('triton')}, mnv3_kernels {ei.get('mnv3_kernels')} "
            f"(compiled library: {ei.get('mnv3_compiled')}, CPU ISA {ei.get('cpu_isa')}, backends {ei.get('backends')}); "
            f"suite mode `{ei.get('mode')}`."
        )
        mall = sorted({r.ei.get("malloc_env", "?") for r in rows if r.device == dev})
        if dev == "cpu":
            if mall == ["set"]:
                lines.append("- Allocator: every CPU benchmark ran with `MALLOC_MMAP_THRESHOLD_=33554432 "
                             "MALLOC_TRIM_THRESHOLD_=1073741824` in the process environment, for every provider alike "
                             "(plain glibc otherwise returns freed MB-sized blocks to the kernel and the next op "
                             "page-faults its output in again).")
            else:
                lines.append(f"- Allocator: **the recommended glibc settings were not in effect** ({', '.join(mall)}); "
                             "small CPU ops may be dominated by page faults.")
        if dev == "cuda":
            lines.append(f"- GPU: TF32 {'on' if ei.get('tf32') else 'off'} for every provider; each timed call ends "
                         "with torch.cuda.synchronize().")
    for m in meta:
        mi, ci = m["machine"], m["commit"]
        commit = (ci.get("id") or "")[:10]
        dirty = " (uncommitted changes)" if ci.get("dirty") else ""
        lines.append(f"- Run {m.get('datetime', '?')}, python {mi.get('python_version', '?')}, "
                     f"pytest-benchmark {m.get('version', '?')}, commit {commit or '?'}{dirty}; source: `{os.path.basename(m['path'])}`.")
    return "\n".join(lines) + "\n"


def render(rows: List[Row], meta: List[dict], out_dir: str, extra_md: List[str] = (), title: str = None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    groups = by_group(rows)
    ceil = ceilings(rows)
    kinds = {r.kind for r in rows}
    md = [f"# {title or 'mnv3_kernels benchmark report'}\n"]
    md.append(_environment(rows, meta))
    warm = sorted({r.ei.get("warmup_calls") for r in rows if r.ei.get("warmup_calls") is not None})
    md.append(
        "How it was measured: pytest-benchmark; each group is one comparison (same op, shape, layout, dtype, device "
        "and the same input tensor for every provider), measured side by side in one process. Every provider's "
        "output was checked against a float64 evaluation of the unfused math before it was timed "
        f"(max |err| ≤ 1e-4·max |ref|; column *max rel err*), then called {', '.join(str(w) for w in warm) or '?'} "
        "more times as warm-up. Times are medians over rounds; spread is the IQR and min–max. "
        "*vs X* = median(X) / median(provider): above 1 the provider is faster. Geomeans are over the groups where "
        "both providers were measured (n). Roofline: FLOPs = 2·N·C·Ho·Wo·k², bytes = 4·(N·C·H·W + N·C·Ho·Wo) for "
        "depthwise layers; SE bytes = 3 passes over the tensor (pool read, scale read + write); activations "
        "2 passes. Ceilings were measured in the same run (below).\n"
    )
    for path in extra_md:
        with open(path) as f:
            md.append(f.read().rstrip() + "\n")

    # Ceilings
    if ceil:
        md.append("## Machine ceilings (measured in this run)\n")
        rows_c = []
        for dev, c in sorted(ceil.items()):
            rows_c.append([dev, fmt_num(c.get("gflops")), fmt_num(c.get("gbs"))])
        md.append(md_table(["device", "measured matmul peak (GFLOP/s, fp32 torch.mm)", "measured copy (GB/s, read+write)"], rows_c))

    # Headline
    md.append("## Headline\n")
    lines = headline_lines(groups, ceil)
    if lines:
        md.append("Each fused op against every baseline a careful user would compare with -- eager unfused "
                  "*and* eager with BN folded beforehand -- with the slowest case:\n")
        md.append("\n".join(lines) + "\n")
    # The interleaved measurements when the run has them: they are the ones to compare.
    layer_kind = {k: (f"{k}-il" if f"{k}-il" in kinds else k) for k in ("dw", "pw", "se", "act")}
    how = {k: (", interleaved" if v.endswith("-il") else "") for k, v in layer_kind.items()}
    if layer_kind["dw"] in kinds:
        md.append(f"### Depthwise conv + BN + activation: geomean speedup (min–max over layers){how['dw']}\n")
        refs = ["eager-unfused", "eager-folded", "compile", "compile-freezing"]
        split = lambda r: f"{r.device} b{r.ei.get('batch')} {r.ei.get('layout')}"  # noqa: E731
        tab = geomean_rows(groups, layer_kind["dw"], refs, split=split, exclude=("eager-unfused",))
        md.append(md_table(["cases", "provider"] + [f"vs {r}" for r in refs], tab))
        md.append("\nSplit by batch and layout; *all* pools every depthwise group.\n")
    if layer_kind["pw"] in kinds:
        md.append(f"### Pointwise (1x1) conv + BN + activation, MobileNetV3-Large's 1x1 layers: geomean "
                  f"speedup (min–max over layers){how['pw']}\n")
        refs = ["eager-unfused", "eager-folded"]
        split = lambda r: f"{r.device} b{r.ei.get('batch')} {r.ei.get('layout')}"  # noqa: E731
        tab = geomean_rows(groups, layer_kind["pw"], refs, split=split, exclude=("eager-unfused",))
        md.append(md_table(["cases", "provider"] + [f"vs {r}" for r in refs], tab))
        md.append("\n" + pointwise_efficiency(groups, ceil, layer_kind["pw"]) + "\n")
    if layer_kind["se"] in kinds:
        md.append(f"### Squeeze-excite: geomean speedup{how['se']}\n")
        refs = ["eager", "compile"]
        tab = geomean_rows(groups, layer_kind["se"], refs, split=lambda r: f"{r.device} {r.ei.get('layout')}",
                           exclude=("eager",))
        md.append(md_table(["cases", "provider"] + [f"vs {r}" for r in refs], tab))
    if layer_kind["act"] in kinds:
        md.append(f"### Activations: geomean speedup over the naive h-swish chain and over ReLU{how['act']}\n")
        refs = ["hswish-naive", "relu", "hswish-F"]
        tab = geomean_rows(groups, layer_kind["act"], refs, split=lambda r: f"{r.device} b{r.ei.get('batch')}")
        md.append(md_table(["cases", "provider"] + [f"vs {r}" for r in refs], tab))
        md.append("\nBelow 1× vs relu: slower than ReLU (the paper's reference cost).\n")
    interleaved_note = ("Every provider of a group timed round-robin, in a fresh random order each "
                        "round, so the drift of a shared machine hits all of them alike: these are the "
                        "ratios to read. The per-provider runs below them are pytest-benchmark's own, "
                        "one provider after the other.\n")
    table5_note = ("The paper's numbers are MobileNetV3-Large on a Pixel 1 phone; ours are on this machine. "
                   "*hswish-fused-* is the single-pass kernel as a module, in place like the "
                   "nn.Hardswish(inplace=True) it replaces (the paper's optimized h-swish); "
                   "*fused-blocks-relu-* and *fused-blocks-* are not Table 5 variants: the convert()ed network "
                   "(depthwise+BN+act and SE fused) with all-ReLU and with h-swish; the h-swish one is read "
                   "against the all-ReLU one, so that only the activation differs.\n")
    grad_note = ("The torchvision model and its convert()ed copy with trainable parameters (as a user's "
                 "model after `.eval()`), called under `torch.no_grad()`, `torch.inference_mode()` and with "
                 "autograd enabled. With autograd enabled, PyTorch records a graph and the converted model "
                 "folds BN afresh on every call (the fold is part of the graph): run inference under "
                 "`torch.inference_mode()` or `torch.no_grad()`.\n")
    block_note = ("Each block on the channels_last input it sees inside a converted model. *layer by layer* is "
                  "the same folded and packed weights as one op call per layer (expand, depthwise, SE gate, "
                  "projection); *fused block* is `mnv3::inverted_residual_packed`. Bytes are estimates: every "
                  "tensor pass to or from memory counted once (benchmarks/test_blocks.py).\n")
    sections = (
        ("model-il", "Whole models (224×224, eval, no_grad), interleaved", interleaved_note, model_table),
        ("model", "Whole models (224×224, eval, no_grad), each provider on its own", None, model_table),
        ("table5-il", "Table 5 reproduction (relative to all-ReLU, as in the paper), interleaved",
         table5_note, table5_section),
        ("table5", "Table 5 reproduction, each variant on its own", table5_note, table5_section),
        ("grad-il", "Converted vs original by autograd mode (224×224, eval), interleaved", grad_note,
         grad_mode_table),
        ("blk-il", "MobileNetV3-Large's inverted-residual blocks: one fused call vs layer by layer, interleaved",
         block_note, block_table),
    )
    for kind, title, note, render_section in sections:
        if kind in kinds:
            md.append(f"### {title}\n")
            if note:
                md.append(note)
            md.append(render_section(groups, kind))

    # Plots
    md.append("## Plots\n")
    pngs = []
    try:
        pngs += plot_dw(groups, out_dir, ceil)
        pngs += plot_simple(groups, out_dir, "se", "eager", "squeeze-excite: speedup over eager torchvision module",
                            "speedup (×, log)")
        pngs += plot_simple(groups, out_dir, "act", "hswish-naive",
                            "activations: time relative to the naive h-swish chain (lower is faster)",
                            "time / naive chain", rel_time=True, log=False)
        pngs += plot_models(groups, out_dir)
    except ImportError as exc:  # matplotlib missing: the tables still stand
        md.append(f"(plots skipped: {exc})\n")
    for p in pngs:
        md.append(f"![{p}]({p})\n")

    # Details
    if layer_kind["dw"] in kinds:
        md.append(f"## Depthwise layers, side by side{how['dw']}\n")
        md.append(wide_dw_tables(groups, ceil, layer_kind["dw"]))
    md.append("## Every group\n")
    for kind, ktitle in _KIND_TITLE.items():
        gs = [(name, g) for name, g in groups.items() if next(iter(g.values())).kind == kind]
        if not gs:
            continue
        md.append(f"### {ktitle}\n")
        for name, g in gs:
            r0 = next(iter(g.values()))
            shape = r0.ei.get("shape", "")
            md.append(f"#### `{name}`  (x {shape}, {r0.ei.get('dtype', '')}, baseline {r0.ei.get('baseline')})\n")
            md.append(group_table(g, ceil))
    others = [(name, g) for name, g in groups.items() if next(iter(g.values())).kind not in _KIND_TITLE]
    for name, g in others:
        md.append(f"#### `{name}`\n")
        md.append(group_table(g, ceil))

    text = "\n".join(md)
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(text)
    return path


def copy_json(paths: List[str], out_dir: str, keep_samples: bool) -> List[str]:
    written = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if not keep_samples:
            for b in data.get("benchmarks", []):
                b.get("stats", {}).pop("data", None)
        dest = os.path.join(out_dir, os.path.basename(path))
        with open(dest, "w") as f:
            json.dump(data, f, indent=1)
        written.append(dest)
    return written


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    ap.add_argument("--out", required=True, help="output folder (report.md, PNGs, JSON copies)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--extra-md", action="append", default=[], help="markdown file to include after the header")
    ap.add_argument("--keep-samples", action="store_true", help="keep per-round samples in the JSON copies")
    args = ap.parse_args(argv)
    rows, meta = load(args.json)
    if not rows:
        raise SystemExit(f"no benchmarks found in {args.json}")
    path = render(rows, meta, args.out, args.extra_md, args.title)
    copy_json(args.json, args.out, args.keep_samples)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
