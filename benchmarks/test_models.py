"""Whole MobileNetV3 models at 224x224 (torchvision, random weights, randomized BN statistics,
eval, no_grad), and the paper's Table 5 in relative terms.

model groups, providers:
    eager, eager-cl                     the torchvision model, NCHW / channels_last
    compile, compile-freezing           torch.compile (freezing: CPU only)
    converted-<b>, converted-<b>-cl     mnv3_kernels.convert(model, backend=b)
    converted-<b>+compile               the converted model under torch.compile
    converted-cpu-layers                the converted model with its FusedSequentials back to
                                        plain Sequentials (and torchvision's forward): every
                                        layer called from Python
    onnxruntime, openvino               the original model exported to ONNX, run by ONNX Runtime /
                                        OpenVINO with torch's thread count (CPU; benchmarks/peers.py)
table5 groups (the same network, activation swapped; relative to all-relu like the paper):
    all-relu          every nn.Hardswish replaced by nn.ReLU
    hswish-naive      nn.Hardswish replaced by the op chain x * relu6(x + 3) / 6
    hswish-F          the model as torchvision builds it (nn.Hardswish)
    hswish-where      the piecewise formula in torch.where
    hswish-fused-<b>  mnv3_kernels.modules.Hardswish, the single-pass kernel, in place like the
                      nn.Hardswish(inplace=True) it replaces (the paper's "optimized h-swish")
    fused-blocks-relu-<b>  convert()ed all-relu network (not a Table 5 variant: the reference
                      for the next one, so that only the activation differs)
    fused-blocks-<b>  convert()ed network with h-swish: fused depthwise+BN+act and squeeze-excite
grad-mode groups (kind grad-il, always interleaved): the torchvision model and its convert()ed
    copy with trainable parameters (as a user's model after .eval()), called under
    torch.no_grad(), torch.inference_mode() and with autograd enabled (which records a graph
    and, in the converted model, folds BN afresh on every call).
interleaved groups (kinds model-il, table5-il, grad-il): every provider of a group timed
    round-robin in one case (common.run_interleaved). The per-provider medians go to
    extra_info["interleaved"]; the report leads with them.
"""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from benchmarks import common, peers
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
    converted, _ = common.convert_model(model, backend)
    return converted


def _unchained(model):
    """A converted model with every FusedSequential back to a plain nn.Sequential of the same
    fused layers, and a FusedMobileNetV3 back to torchvision's class: each layer called from
    Python, one op call each -- what the chains save."""
    for _, parent in reversed(list(model.named_modules())):  # innermost first
        for name, child in list(parent._modules.items()):
            if isinstance(child, modules.FusedSequential):
                parent._modules[name] = nn.Sequential(OrderedDict(child._modules))
    for m in model.modules():
        original = getattr(type(m), "_mnv3_original_class", None)
        if original is not None:
            m.__class__ = original
    return model


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
                if b == "cpu":
                    providers.append("converted-cpu-layers")
                if with_compile:
                    providers.append(f"converted-{b}+compile")
            if dev == "cpu":
                providers += list(peers.PEERS)
            cases += [pytest.param(name, n, p, id=f"{name}-b{n}-{p}") for p in providers]
    return cases


def _model_provider(name, n, provider, dev):
    """(callable, input, float64 reference) of one provider of a model group."""
    base = common.build_model(name).to(dev)
    layout = "channels_last" if provider.endswith("-cl") else "nchw"
    x = common.model_input(n, layout, dev)
    ref = _reference(name, "eager", n, dev, common.build_model(name).to(dev))
    key = ("model", name, n, layout, dev)
    if provider in peers.PEERS:
        reason = peers.unavailable_reason(provider)
        if reason is not None:
            pytest.skip(reason)
        fn = peers.runner(provider, base, x)
    elif provider.startswith("converted-"):
        backend = provider[len("converted-"):].split("-")[0].split("+")[0]
        model = common.to_layout(_converted(base, backend), layout)
        if provider.endswith("-layers"):
            model = _unchained(model)
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
                providers += [f"hswish-fused-{b}", f"fused-blocks-relu-{b}", f"fused-blocks-{b}"]
            cases += [pytest.param(name, n, p, id=f"{name}-b{n}-{p}") for p in providers]
    return cases


def _table5_provider(name, n, provider, dev):
    """(callable, input, float64 reference) of one variant of a table5 group."""
    model = common.build_model(name).to(dev)
    variant = "all-relu" if provider == "all-relu" or provider.startswith("fused-blocks-relu-") else "hswish"
    if variant == "all-relu":
        common.replace_hardswish(model, lambda old: nn.ReLU(inplace=old.inplace))
    if provider.startswith("fused-blocks-relu-"):
        model = _converted(model, provider[len("fused-blocks-relu-"):])
    elif provider == "hswish-naive":
        common.replace_hardswish(model, lambda old: common.NaiveHardswish())
    elif provider == "hswish-where":
        common.replace_hardswish(model, lambda old: common.PiecewiseHardswish())
    elif provider.startswith("hswish-fused-"):
        # In place where torchvision's module is (all of them), as nn.Hardswish(inplace=True).
        backend = provider[len("hswish-fused-"):]
        common.skip_unless_fused(backend, dev)
        common.replace_hardswish(model, lambda old: modules.Hardswish(old.inplace, backend=backend))
    elif provider.startswith("fused-blocks-") and variant == "hswish":
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
# Autograd modes: converted vs original under no_grad, inference_mode and grad-enabled eval
# ----------------------------------------------------------------------------------------------
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "grad": torch.enable_grad}


def _grad_mode_cases():
    dev = common.device()
    names = {"ci": ("small",), "quick": ("large",), "full": common.MODELS}[common.mode()]
    return [pytest.param(name, 1, b, id=f"{name}-b1-{b}") for name in names for b in common.fused_backends(dev)]


def _grad_mode_providers(name, n, backend, dev):
    """{provider: (fn, args, ref)}: eager and converted, each under every autograd mode."""
    eager = common.build_model(name).to(dev)
    converted = _converted(eager, backend)
    for model in (eager, converted):
        model.requires_grad_(True)  # as torchvision builds it; .eval() leaves this alone
    x = common.model_input(n, "nchw", dev)
    ref = _reference(name, "eager", n, dev, common.build_model(name).to(dev))
    providers = {}
    for mode, ctx in GRAD_MODES.items():
        for label, model in (("eager", eager), (f"converted-{backend}", converted)):
            def fn(x, model=model, ctx=ctx):
                with ctx():
                    return model(x)
            providers[f"{label}-{mode}"] = (fn, (x,), ref)
    return providers


@pytest.mark.parametrize("name,n,backend", _grad_mode_cases())
def test_grad_modes(benchmark, dev, name, n, backend):
    common.skip_unless_fused(backend, dev)
    common.run_interleaved(
        benchmark, dev, _grad_mode_providers(name, n, backend, dev),
        group=f"grad-il {name} b{n} {dev}", kind="grad-il", scale="model",
        seed=common.seed_of("grad-il", name, n),
        info={"op": f"mobilenet_v3_{name}", "baseline": "eager-no_grad", "compare": "",
              "layout": "nchw", "dtype": "float32", "model": name, "layer": name, "batch": n,
              "shape": f"{n}x3x224x224"},
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
    for prefix in ("converted-", "hswish-fused-", "fused-blocks-relu-", "fused-blocks-"):
        if provider.startswith(prefix):
            return provider[len(prefix):].split("-")[0].split("+")[0]
    return None


@pytest.mark.parametrize("kind,name,n,providers", _interleaved_cases())
def test_interleaved(benchmark, dev, kind, name, n, providers):
    build = _model_provider if kind == "model" else _table5_provider
    built = {}
    for provider in providers:
        backend = _fused_backend(provider)
        if backend is not None and common.fused_skip_reason(backend, dev):
            continue  # the per-provider case says why
        if provider in peers.PEERS and peers.unavailable_reason(provider):
            continue
        fn, x, ref = build(name, n, provider, dev)
        built[provider] = (fn, (x,), ref)
    common.run_interleaved(
        benchmark, dev, built, group=f"{kind}-il {name} b{n} {dev}", kind=f"{kind}-il", scale="model",
        seed=common.seed_of("interleaved", kind, name, n),
        info={"op": f"mobilenet_v3_{name}", "baseline": "eager" if kind == "model" else "all-relu",
              "compare": "compile,compile-freezing" if kind == "model" else "hswish-naive",
              "layout": "nchw", "dtype": "float32", "model": name, "layer": name, "batch": n,
              "shape": "x".join(str(d) for d in x.shape),
              # What every provider reads per call at least once (the report sets it against
              # the run's memory bandwidth: at batch 1 the weights do not stay in cache).
              "weight_bytes": sum(t.numel() * t.element_size() for t in common.build_model(name).state_dict().values()
                                  if t.is_floating_point())},
    )
