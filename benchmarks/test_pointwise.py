"""Pointwise (1x1) conv + BN + activation at every MobileNetV3-Large 1x1 layer (CPU).

One group per (layer, batch, layout), all providers timed round-robin in one case (kind pw-il,
common.run_interleaved). Providers:
    eager-unfused   nn.Sequential(conv1x1, BatchNorm2d, act): conv2d -> batch_norm -> act
    eager-folded    BN folded into the conv beforehand: conv2d(+bias) -> act
    fused-cpu       mnv3_kernels' packed GEMM kernel (weights packed once, as the modules cache
                    them), activation in the epilogue
torch.compile is left out here: a graph per layer costs tens of seconds on 2 cores, and the
whole-model groups compare against it (with freezing) where it matters.
"""
import pytest
import torch
import torch.nn as nn

from benchmarks import common
from mnv3_kernels import ops, reference
from mnv3_kernels.layers import PW_LAYERS

# MobileNetV3-Large's 1x1 layers (the first entries of PW_LAYERS), with the activation each has.
_LARGE = PW_LAYERS[:21]
_QUICK = ((16, 64, 112), (40, 120, 28), (80, 480, 14), (960, 160, 7))
_CI = ((40, 120, 28),)


def _layers():
    m = common.mode()
    chosen = _LARGE if m == "full" else (_QUICK if m == "quick" else _CI)
    # Expand convs have an activation (ReLU early, h-swish late), projections none.
    return [(cin, cout, hw, "none" if cout < cin else ("relu" if hw >= 28 else "hardswish"))
            for cin, cout, hw in chosen]


def _name(cin, cout, hw, act):
    return f"pw-{cin}-{cout}-{hw}-{act}"


def _groups():
    if common.device() != "cpu":
        return []
    return [(layer, n, layout) for layer in _layers() for n in common.batches() for layout in common.LAYOUTS]


def _build(layer, n, layout, dev):
    cin, cout, hw, act = layer
    name = _name(*layer)
    x = common.make_input((n, cin, hw, hw), layout, dev, common.seed_of("pw-input", name, n))
    bn = nn.BatchNorm2d(cout)
    block = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn)
    if act != "none":
        block.append(nn.ReLU() if act == "relu" else nn.Hardswish())
    common.randomize_bn_(block, common.seed_of("pw-bn", name))
    block = common.to_layout(block.eval().to(dev), layout)
    with torch.no_grad():
        weight, bias = reference.fold_bn(block[0].weight, None, bn.weight, bn.bias, bn.running_mean,
                                         bn.running_var, bn.eps)
        ref = block.double()(x.double()).float()
        block.float()
    packed = ops.pack_pointwise_weight(weight, bias)

    def folded(x):
        return reference.pointwise_conv_bn_act(x, weight, bias, act)

    def fused(x):
        return torch.ops.mnv3.pointwise_conv_bn_act_packed(x, packed, cout, act, None, None)

    providers = {"eager-unfused": (block, (x,), ref), "eager-folded": (folded, (x,), ref)}
    if not common.fused_skip_reason("cpu", dev):
        providers["fused-cpu"] = (fused, (x,), ref)
    flops = 2 * n * hw * hw * cin * cout
    info = dict(op="pointwise_conv_bn_act", baseline="eager-unfused", compare="eager-folded", flops=flops,
                bytes=4 * n * hw * hw * (cin + cout), shape=f"{n}x{cin}x{hw}x{hw}", layout=layout,
                dtype="float32", layer=name, model="large", batch=n, channels=cin, out_channels=cout,
                size=hw, activation=act)
    return providers, info


@pytest.mark.parametrize("layer,n,layout", [pytest.param(*g, id=f"{_name(*g[0])}-b{g[1]}-{g[2]}")
                                            for g in _groups()])
def test_pointwise_interleaved(benchmark, dev, layer, n, layout):
    providers, info = _build(layer, n, layout, dev)
    common.run_interleaved(benchmark, dev, providers, group=f"pw-il {info['layer']} b{n} {layout} {dev}",
                           kind="pw-il", scale="layer", seed=common.seed_of("pw-il", info["layer"], n, layout),
                           info=info)
