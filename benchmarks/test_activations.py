"""Activation variants at MobileNetV3 activation sizes (the depthwise outputs).

Providers: relu and swish x*sigmoid(x) (the paper's references), hswish-naive (the op chain
x * relu6(x + 3) / 6), hswish-F (F.hardswish), hswish-where (the piecewise formula in
torch.where), hswish-fused-<backend> (mnv3_kernels.ops.hardswish, one pass).
Each group is timed one provider after another (kind act) and round-robin (kind act-il).
"""
import pytest

from benchmarks import common
from mnv3_kernels import ops

PROVIDERS = ("relu", "swish", "hswish-naive", "hswish-F", "hswish-where")


def _providers(dev):
    return list(PROVIDERS) + [f"hswish-fused-{b}" for b in common.fused_backends(dev)]


def _groups():
    return [(c, h, n) for c, h in common.act_shapes() for n in common.batches()]


def _cases():
    dev = common.device()
    return [pytest.param(c, h, n, p, id=f"c{c}-{h}-b{n}-{p}") for c, h, n in _groups() for p in _providers(dev)]


def _build(c, h, n, provider):
    """(callable, input, float64 reference, bench keywords) of one provider of a group."""
    if provider.startswith("hswish-fused-"):
        backend = provider[len("hswish-fused-"):]

        def fn(x):
            return ops.hardswish(x, backend=backend)
    else:
        fn = common.ACT_FNS[provider]
    shape = (n, c, h, h)
    # Spread over [-6, 6] so every piece of the piecewise function is exercised.
    x = common.make_input(shape, "nchw", common.device(), common.seed_of("act-input", c, h, n)) * 3.0
    info = dict(op="activation", baseline="hswish-naive", compare=("relu", "hswish-F"), flops=None,
                nbytes=2 * x.element_size() * x.numel(), shape=shape, layout="nchw", layer=f"c{c}-{h}",
                batch=n, channels=c, size=h)
    return fn, x, common.act_reference(provider, x), info


@pytest.mark.parametrize("c,h,n,provider", _cases())
def test_activation(bench, dev, c, h, n, provider):
    if provider.startswith("hswish-fused-"):
        common.skip_unless_fused(provider[len("hswish-fused-"):], dev)
    fn, x, ref, info = _build(c, h, n, provider)
    bench(group=f"act c{c}-{h} b{n} {dev}", provider=provider, fn=fn, args=(x,), kind="act", ref=ref, **info)


@pytest.mark.parametrize("c,h,n", [pytest.param(*g, id=f"c{g[0]}-{g[1]}-b{g[2]}") for g in _groups()])
def test_activation_interleaved(benchmark, dev, c, h, n):
    built = {}
    for provider in _providers(dev):
        if provider.startswith("hswish-fused-") and common.fused_skip_reason(provider[len("hswish-fused-"):], dev):
            continue  # the per-provider case says why
        fn, x, ref, info = _build(c, h, n, provider)
        built[provider] = (fn, (x,), ref)
    common.run_interleaved(benchmark, dev, built, group=f"act-il c{c}-{h} b{n} {dev}", kind="act-il",
                           scale="layer", seed=common.seed_of("act-il", c, h, n),
                           info=common.interleaved_info(info))
