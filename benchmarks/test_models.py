"""Whole MobileNetV3 models at 224x224 (torchvision, random weights, randomized BN statistics,
eval, no_grad), and the paper's Table 5 in relative terms.

model groups, providers:
    eager, eager-cl                     the torchvision model, NCHW / channels_last
    compile, compile-freezing           torch.compile (freezing: CPU only)
    converted-<b>, converted-<b>-cl     mnv3_kernels.convert(model, backend=b)
    converted-<b>+compile               the converted model under torch.compile
table5 groups (the same network, activation swapped; relative to all-relu like the paper):
    all-relu          every nn.Hardswish replaced by nn.ReLU
    hswish-naive      nn.Hardswish replaced by the op chain x * relu6(x + 3) / 6
    hswish-F          the model as torchvision builds it (nn.Hardswish)
    hswish-where      the piecewise formula in torch.where
    hswish-fused-<b>  mnv3_kernels.modules.Hardswish, the single-pass kernel, in place like the
                      nn.Hardswish(inplace=True) it replaces (the paper's "optimized h-swish")
    fused-blocks-<b>  mnv3_kernels.convert(): fused depthwise+BN+act and squeeze-excite
interleaved groups (kinds model-il, table5-il): every provider of a model or table5 group timed
    round-robin in one case, in a fresh random order each round, so that the drift of a shared
    machine (seconds to minutes) hits every provider alike. The per-provider medians go to
    extra_info["interleaved"]; the report leads with them.
"""
import random
import statistics
import time

import pytest
import torch
import torch.nn as nn

from benchmarks import common
from mnv3_kernels import modules

_REFS = {}


def _reference(name, variant, n, dev, model):
    """float64 output of the (unconverted) network, computed once per case."""
    key = (name, variant, n, dev)
    if key not in _REFS:
        x = common.model_input(n, "nchw", dev)
        _REFS[key] = model.double()(x.double()).float()
        model.float()
    return _REFS[key]


def _converted(model, backend):
    common.skip_unless_fused(backend, common.device())
    try:
        converted, _ = common.convert_model(model, backend)
    except NotImplementedError as exc:
        pytest.skip(f"mnv3_kernels.convert is not available in this build ({exc or 'NotImplementedError'})")
    return converted


def _model_cases():
    dev = common.device()
    cases = []
    names = common.MODELS if common.mode() != "ci" else ("small",)
    for name in names:
        for n in common.batches("model"):
            providers = ["eager", "eager-cl"]
            with_compile = common.compile_selected("model", name, n, "nchw")
            if with_compile:
                providers += ["compile"] + (["compile-freezing"] if dev == "cpu" else [])
            for b in common.fused_backends(dev):
                providers += [f"converted-{b}", f"converted-{b}-cl"]
                if with_compile:
                    providers.append(f"converted-{b}+compile")
            cases += [pytest.param(name, n, p, id=f"{name}-b{n}-{p}") for p in providers]
    return cases


def _model_provider(name, n, provider, dev):
    """(callable, input, float64 reference) of one provider of a model group."""
    base = common.build_model(name).to(dev)
    layout = "channels_last" if provider.endswith("-cl") else "nchw"
    x = common.model_input(n, layout, dev)
    ref = _reference(name, "eager", n, dev, common.build_model(name).to(dev))
    key = ("model", name, n, layout, dev)
    if provider.startswith("converted-"):
        backend = provider[len("converted-"):].split("-")[0].split("+")[0]
        model = common.to_layout(_converted(base, backend), layout)
        fn = common.compiled(key + (provider,), model) if provider.endswith("+compile") else model
    else:
        model = common.to_layout(base, layout)
        if provider == "compile":
            fn = common.compiled(key, model)
        elif provider == "compile-freezing":
            fn = common.compiled(key, model, freezing=True)
        else:
            fn = model
    return fn, x, ref


@pytest.mark.parametrize("name,n,provider", _model_cases())
def test_model(bench, dev, name, n, provider):
    fn, x, ref = _model_provider(name, n, provider, dev)
    layout = "channels_last" if provider.endswith("-cl") else "nchw"
    bench(
        group=f"model {name} b{n} {dev}", provider=provider, fn=fn, args=(x,), kind="model",
        op=f"mobilenet_v3_{name}", baseline="eager", compare=("compile", "compile-freezing"),
        ref=ref, shape=tuple(x.shape), layout=layout, layer=name, model=name, batch=n,
    )


def _table5_cases():
    dev = common.device()
    m = common.mode()
    names = {"ci": ("small",), "quick": ("large",), "full": common.MODELS}[m]
    batches = common.batches("model") if m == "full" else [1]
    cases = []
    for name in names:
        for n in batches:
            providers = ["all-relu", "hswish-naive", "hswish-F", "hswish-where"]
            for b in common.fused_backends(dev):
                providers += [f"hswish-fused-{b}", f"fused-blocks-{b}"]
            cases += [pytest.param(name, n, p, id=f"{name}-b{n}-{p}") for p in providers]
    return cases


def _table5_provider(name, n, provider, dev):
    """(callable, input, float64 reference) of one variant of a table5 group."""
    model = common.build_model(name).to(dev)
    variant = "all-relu" if provider == "all-relu" else "hswish"
    if provider == "all-relu":
        common.replace_hardswish(model, lambda old: nn.ReLU(inplace=old.inplace))
    elif provider == "hswish-naive":
        common.replace_hardswish(model, lambda old: common.NaiveHardswish())
    elif provider == "hswish-where":
        common.replace_hardswish(model, lambda old: common.PiecewiseHardswish())
    elif provider.startswith("hswish-fused-"):
        # In place where torchvision's module is (all of them), as nn.Hardswish(inplace=True).
        backend = provider[len("hswish-fused-"):]
        common.skip_unless_fused(backend, dev)
        common.replace_hardswish(model, lambda old: modules.Hardswish(old.inplace, backend=backend))
    elif provider.startswith("fused-blocks-"):
        model = _converted(model, provider[len("fused-blocks-"):])
    ref_model = common.build_model(name).to(dev)
    if variant == "all-relu":
        common.replace_hardswish(ref_model, lambda old: nn.ReLU(inplace=old.inplace))
    x = common.model_input(n, "nchw", dev)
    return model, x, _reference(name, variant, n, dev, ref_model)


@pytest.mark.parametrize("name,n,provider", _table5_cases())
def test_table5(bench, dev, name, n, provider):
    fn, x, ref = _table5_provider(name, n, provider, dev)
    bench(
        group=f"table5 {name} b{n} nchw {dev}", provider=provider, fn=fn, args=(x,),
        kind="table5", op=f"mobilenet_v3_{name}", baseline="all-relu", compare=("hswish-naive",),
        ref=ref, shape=tuple(x.shape), layout="nchw", layer=name, model=name, batch=n,
    )


# ----------------------------------------------------------------------------------------------
# Interleaved: one case per group, every provider timed round-robin
# ----------------------------------------------------------------------------------------------
def _interleaved_cases():
    groups = {}
    for case in _model_cases():
        name, n, provider = case.values
        groups.setdefault(("model", name, n), []).append(provider)
    for case in _table5_cases():
        name, n, provider = case.values
        groups.setdefault(("table5", name, n), []).append(provider)
    return [pytest.param(kind, name, n, providers, id=f"{kind}-{name}-b{n}")
            for (kind, name, n), providers in groups.items()]


def _fused_backend(provider: str):
    """The fused backend a provider runs on, or None for the PyTorch-only providers."""
    for prefix in ("converted-", "hswish-fused-", "fused-blocks-"):
        if provider.startswith(prefix):
            return provider[len(prefix):].split("-")[0].split("+")[0]
    return None


@pytest.mark.parametrize("kind,name,n,providers", _interleaved_cases())
def test_interleaved(benchmark, dev, kind, name, n, providers):
    build = _model_provider if kind == "model" else _table5_provider
    calls = {}
    for provider in providers:
        backend = _fused_backend(provider)
        if backend is not None and common.fused_skip_reason(backend, dev):
            continue  # the per-provider case says why
        fn, x, ref = build(name, n, provider, dev)
        common.check_close(fn(x), ref, f"{kind} {name} b{n} [{provider}] (interleaved)")
        for _ in range(2):
            fn(x)
        calls[provider] = common.timed(fn, (x,), dev)
    samples = {p: [] for p in calls}
    order = list(calls)
    rng = random.Random(common.seed_of("interleaved", kind, name, n))

    def one_round():
        rng.shuffle(order)
        for p in order:
            t0 = time.perf_counter()
            calls[p]()
            samples[p].append(time.perf_counter() - t0)

    rounds = {"ci": 1, "quick": 8, "full": 20}[common.mode()]
    benchmark.group = f"{kind}-il {name} b{n} {dev}"
    info = common.env_info(dev)
    info.update({
        "kind": f"{kind}-il", "op": f"mobilenet_v3_{name}", "provider": "round-robin",
        "baseline": "eager" if kind == "model" else "all-relu",
        "compare": "compile,compile-freezing" if kind == "model" else "hswish-naive",
        "layout": "nchw", "dtype": "float32", "model": name, "layer": name, "batch": n,
        "shape": "x".join(str(d) for d in x.shape), "rounds_interleaved": rounds,
    })
    benchmark.extra_info.update(info)
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    benchmark.extra_info["interleaved"] = {p: _summary(v) for p, v in samples.items()}


def _summary(values):
    q1, med, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values),
            "max": max(values), "rounds": len(values)}
