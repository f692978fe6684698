"""Squeeze-excite at the MobileNetV3 SE shapes (the depthwise outputs it scales).

Providers: eager (torchvision SqueezeExcitation with nn.Hardsigmoid, as in MobileNetV3),
compile (torch.compile of that module), fused-<backend> (mnv3_kernels.ops.squeeze_excite).
Each group is timed one provider after another (kind se) and round-robin (kind se-il).
"""
import pytest

from benchmarks import common
from mnv3_kernels import ops


def _providers(se, n, layout, dev):
    providers = ["eager"]
    if common.compile_selected("se", se.name, n, layout):
        providers.append("compile")
    return providers + [f"fused-{b}" for b in common.fused_backends(dev)]


def _groups():
    return [(se, n, layout) for se in common.se_layers() for n in common.batches() for layout in common.LAYOUTS]


def _cases():
    dev = common.device()
    return [pytest.param(se, n, layout, p, id=f"{se.name}-b{n}-{layout}-{p}")
            for se, n, layout in _groups() for p in _providers(se, n, layout, dev)]


def _build(se, n, layout, provider, dev):
    """(callable, input, float64 reference, bench keywords) of one provider of a group."""
    shape = (n, se.channels, se.size, se.size)
    x = common.make_input(shape, layout, dev, common.seed_of("se-input", se.name, n))
    module = common.to_layout(common.make_se(se).to(dev), layout)
    ref = common.se_reference(module, x)

    if provider == "eager":
        fn = module
    elif provider == "compile":
        fn = common.compiled(("se", se.name, n, layout, dev), module)
    else:
        backend = provider[len("fused-"):]
        w1, b1, w2, b2 = module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias

        def fn(x):
            return ops.squeeze_excite(x, w1, b1, w2, b2, backend=backend)

    flops, nbytes = common.se_flops_bytes(se, n)
    info = dict(op="squeeze_excite", baseline="eager", compare=("compile",), flops=flops, nbytes=nbytes,
                shape=shape, layout=layout, layer=se.name, batch=n, channels=se.channels,
                squeeze=se.squeeze, size=se.size)
    return fn, x, ref, info


@pytest.mark.parametrize("se,n,layout,provider", _cases())
def test_squeeze_excite(bench, dev, se, n, layout, provider):
    if provider.startswith("fused-"):
        common.skip_unless_fused(provider[len("fused-"):], dev)
    fn, x, ref, info = _build(se, n, layout, provider, dev)
    bench(group=f"se {se.name} b{n} {layout} {dev}", provider=provider, fn=fn, args=(x,), kind="se",
          ref=ref, **info)


@pytest.mark.parametrize("se,n,layout", [pytest.param(*g, id=f"{g[0].name}-b{g[1]}-{g[2]}") for g in _groups()])
def test_squeeze_excite_interleaved(benchmark, dev, se, n, layout):
    built = {}
    for provider in _providers(se, n, layout, dev):
        if provider.startswith("fused-") and common.fused_skip_reason(provider[len("fused-"):], dev):
            continue  # the per-provider case says why
        fn, x, ref, info = _build(se, n, layout, provider, dev)
        built[provider] = (fn, (x,), ref)
    common.run_interleaved(benchmark, dev, built, group=f"se-il {se.name} b{n} {layout} {dev}", kind="se-il",
                           scale="layer", seed=common.seed_of("se-il", se.name, n, layout),
                           info=common.interleaved_info(info))
