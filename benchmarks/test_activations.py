"""Activation variants at MobileNetV3 activation sizes (the depthwise outputs).

Providers: relu and swish x*sigmoid(x) (the paper's references), hswish-naive (the op chain
x * relu6(x + 3) / 6), hswish-F (F.hardswish), hswish-where (the piecewise formula in
torch.where), hswish-fused-<backend> (mnv3_kernels.ops.hardswish, one pass).
"""
import pytest

from benchmarks import common
from mnv3_kernels import ops

PROVIDERS = ("relu", "swish", "hswish-naive", "hswish-F", "hswish-where")


def _cases():
    dev = common.device()
    cases = []
    for c, h in common.act_shapes():
        for n in common.batches():
            providers = list(PROVIDERS) + [f"hswish-fused-{b}" for b in common.fused_backends(dev)]
            cases += [pytest.param(c, h, n, p, id=f"c{c}-{h}-b{n}-{p}") for p in providers]
    return cases


@pytest.mark.parametrize("c,h,n,provider", _cases())
def test_activation(bench, dev, c, h, n, provider):
    if provider.startswith("hswish-fused-"):
        backend = provider[len("hswish-fused-"):]
        common.skip_unless_fused(backend, dev)

        def fn(x):
            return ops.hardswish(x, backend=backend)
    else:
        fn = common.ACT_FNS[provider]
    shape = (n, c, h, h)
    # Spread over [-6, 6] so every piece of the piecewise function is exercised.
    x = common.make_input(shape, "nchw", dev, common.seed_of("act-input", c, h, n)) * 3.0
    numel = x.numel()
    bench(
        group=f"act c{c}-{h} b{n} {dev}", provider=provider, fn=fn, args=(x,),
        kind="act", op="activation", baseline="hswish-naive", compare=("relu", "hswish-F"),
        ref=common.act_reference(provider, x), flops=None, nbytes=2 * x.element_size() * numel,
        shape=shape, layout="nchw", layer=f"c{c}-{h}", batch=n, channels=c, size=h,
    )
