"""Squeeze-excite at the MobileNetV3 SE shapes (the depthwise outputs it scales).

Providers: eager (torchvision SqueezeExcitation with nn.Hardsigmoid, as in MobileNetV3),
compile (torch.compile of that module), fused-<backend> (mnv3_kernels.ops.squeeze_excite).
"""
import pytest

from benchmarks import common
from mnv3_kernels import ops


def _cases():
    dev = common.device()
    cases = []
    for se in common.se_layers():
        for n in common.batches():
            for layout in common.LAYOUTS:
                providers = ["eager"]
                if common.compile_selected("se", se.name, n, layout):
                    providers.append("compile")
                providers += [f"fused-{b}" for b in common.fused_backends(dev)]
                cases += [pytest.param(se, n, layout, p, id=f"{se.name}-b{n}-{layout}-{p}")
                          for p in providers]
    return cases


@pytest.mark.parametrize("se,n,layout,provider", _cases())
def test_squeeze_excite(bench, dev, se, n, layout, provider):
    if provider.startswith("fused-"):
        common.skip_unless_fused(provider[len("fused-"):], dev)
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
    bench(
        group=f"se {se.name} b{n} {layout} {dev}", provider=provider, fn=fn, args=(x,),
        kind="se", op="squeeze_excite", baseline="eager", compare=("compile",), ref=ref,
        flops=flops, nbytes=nbytes, shape=shape, layout=layout,
        layer=se.name, batch=n, channels=se.channels, squeeze=se.squeeze, size=se.size,
    )
