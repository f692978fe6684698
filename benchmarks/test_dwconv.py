"""Depthwise conv + BN + activation at every MobileNetV3 depthwise layer.

One group per (layer, batch, layout, device). Providers:
    eager-unfused     torchvision's Conv2dNormActivation: conv2d -> batch_norm -> act
    eager-folded      BN folded into the conv beforehand: conv2d(+bias) -> act
    compile           torch.compile of the unfused block
    compile-freezing  the same with inductor freezing (CPU; weights become constants)
    fused-<backend>   mnv3_kernels.ops.dwconv_bn_act, one pass
Each group is timed twice: one provider after another (kind dw, pytest-benchmark's own
calibration) and all providers round-robin in one case (kind dw-il, common.run_interleaved).
"""
import pytest

from benchmarks import common
from mnv3_kernels import ops, reference


def _providers(layer, n, layout, dev):
    providers = ["eager-unfused", "eager-folded"]
    if common.compile_selected("dw", layer.name, n, layout):
        providers += ["compile"] + (["compile-freezing"] if dev == "cpu" else [])
    return providers + [f"fused-{b}" for b in common.fused_backends(dev)]


def _groups():
    return [(layer, n, layout) for layer in common.dw_layers() for n in common.batches()
            for layout in common.LAYOUTS]


def _cases():
    dev = common.device()
    return [pytest.param(layer, n, layout, p, id=f"{layer.name}-b{n}-{layout}-{p}")
            for layer, n, layout in _groups() for p in _providers(layer, n, layout, dev)]


def _build(layer, n, layout, provider, dev):
    """(callable, input, float64 reference, bench keywords) of one provider of a group."""
    shape = (n, layer.channels, layer.size, layer.size)
    x = common.make_input(shape, layout, dev, common.seed_of("dw-input", layer.name, n))
    block = common.to_layout(common.make_dw_block(layer).to(dev), layout)
    ref = common.dw_reference(block, layer, x)
    weight, bias = common.dw_folded(block)
    s, p, act = layer.stride, layer.padding, layer.activation
    key = ("dw", layer.name, n, layout, dev)

    if provider == "eager-unfused":
        fn = block
    elif provider == "eager-folded":
        def fn(x):
            return reference.dwconv_bn_act(x, weight, bias, (s, s), (p, p), (1, 1), act)
    elif provider == "compile":
        fn = common.compiled(key, block)
    elif provider == "compile-freezing":
        fn = common.compiled(key, block, freezing=True)
    else:
        backend = provider[len("fused-"):]

        def fn(x):
            return ops.dwconv_bn_act(x, weight, bias, s, p, 1, act, backend=backend)

    flops, nbytes = common.dw_flops_bytes(layer, n)
    info = dict(
        op="dwconv_bn_act", baseline="eager-unfused", compare=("eager-folded", "compile", "compile-freezing"),
        flops=flops, nbytes=nbytes, shape=shape, layout=layout,
        layer=layer.name, model=layer.model, batch=n, channels=layer.channels, kernel=layer.kernel,
        stride=layer.stride, size=layer.size, out_size=layer.out_size, activation=act,
    )
    return fn, x, ref, info


@pytest.mark.parametrize("layer,n,layout,provider", _cases())
def test_dwconv(bench, dev, layer, n, layout, provider):
    if provider.startswith("fused-"):
        common.skip_unless_fused(provider[len("fused-"):], dev)
    fn, x, ref, info = _build(layer, n, layout, provider, dev)
    bench(group=f"dw {layer.name} b{n} {layout} {dev}", provider=provider, fn=fn, args=(x,), kind="dw",
          ref=ref, **info)


@pytest.mark.parametrize("layer,n,layout", [pytest.param(*g, id=f"{g[0].name}-b{g[1]}-{g[2]}") for g in _groups()])
def test_dwconv_interleaved(benchmark, dev, layer, n, layout):
    built = {}
    for provider in _providers(layer, n, layout, dev):
        if provider.startswith("fused-") and common.fused_skip_reason(provider[len("fused-"):], dev):
            continue  # the per-provider case says why
        fn, x, ref, info = _build(layer, n, layout, provider, dev)
        built[provider] = (fn, (x,), ref)
    common.run_interleaved(benchmark, dev, built, group=f"dw-il {layer.name} b{n} {layout} {dev}", kind="dw-il",
                           scale="layer", seed=common.seed_of("dw-il", layer.name, n, layout),
                           info=common.interleaved_info(info))
