"""Whole inverted-residual blocks of MobileNetV3-Large (CPU): one fused call per block against
the same block layer by layer.

One group per (block, batch), all providers timed round-robin in one case (kind blk-il,
common.run_interleaved), on the channels_last input the block sees inside a converted model.
Providers:
    eager            the torchvision block itself (conv -> BN -> act ... as PyTorch runs it)
    layer-by-layer   the fused layers one op call each, on the same folded/packed weights:
                     1x1 expand -> depthwise -> SE gate -> 1x1 project (+ residual, + gate)
    fused-block      mnv3::inverted_residual_packed: the whole block in one call
The estimated bytes (info bytes_layer / bytes_fused) count each tensor pass to or from memory
once: the layer path writes the expanded tensor and reads it back, writes the depthwise output
and reads it back (twice with squeeze-excite); the fused block keeps the expanded rows in a
per-thread buffer and only squeeze-excite blocks write the depthwise output (their projection
needs the gate of the whole image first).
"""
import functools

import pytest
import torch
import torchvision

import mnv3_kernels
from benchmarks import common
from mnv3_kernels import modules as M

_QUICK = (1, 3, 5, 12, 14)
_CI = (4,)


@functools.lru_cache(maxsize=None)
def _blocks():
    """(converted block, original block, input shape at batch 1) for every block of Large."""
    torch.manual_seed(common.seed_of("blk-model"))
    model = torchvision.models.mobilenet_v3_large()
    common.randomize_bn_(model, common.seed_of("blk-bn"))
    model.eval()
    shapes = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(i[0].shape[1:])))
             for k, b in enumerate(model.features) if isinstance(b, torchvision.models.mobilenetv3.InvertedResidual)]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    originals = {k: model.features[k] for k in shapes}
    import copy
    converted = mnv3_kernels.convert(copy.deepcopy(model))
    out = []
    for k in sorted(shapes):
        block = converted.features[k]
        assert isinstance(block, M.FusedInvertedResidual), type(block)
        out.append((block, originals[k], shapes[k]))
    return out


def _indices():
    m = common.mode()
    n = 15  # Large's inverted-residual blocks
    return list(range(n)) if m == "full" else list(_QUICK if m == "quick" else _CI)


def _groups():
    if common.device() != "cpu":
        return []
    return [(i, n) for i in _indices() for n in common.batches()]


def _layer_by_layer(ep, ce, eact, dw, db, s, p, d, dact, w1, b1, w2, b2, pp, cout, res):
    ops_ = M._OPS

    def run(x):
        h = x if ep is None else ops_["pointwise_packed"](x, ep, ce, eact, None, None)
        h = ops_["dwconv"](h, dw, db, s, p, d, dact)
        scale = None if w1 is None else ops_["gate"](h, w1, b1, w2, b2)
        return ops_["pointwise_packed"](h, pp, cout, "none", x if res else None, scale)
    return run


def _estimates(n, cin, h, w, args, oh, ow):
    """(MACs, bytes layer by layer, bytes fused) of a block call (fp32)."""
    ep, ce, eact, dw, db, s, p, d, dact, w1, b1, w2, b2, pp, cout, res = args
    k2 = dw.shape[2] * dw.shape[3]
    r = 0 if w1 is None else w1.shape[0]
    x, e, dout, out = n * h * w * cin, n * h * w * ce, n * oh * ow * ce, n * oh * ow * cout
    weights = (cin * ce if ep is not None else 0) + ce * (k2 + 1) + 2 * ce * r + ce * cout
    macs = n * ((h * w * cin * ce if ep is not None else 0) + oh * ow * ce * (k2 + cout)) + 2 * n * ce * r
    resid = x if res else 0
    layer = x + (2 * e if ep is not None else 0) + dout * (3 if w1 is not None else 2) + out + resid + weights
    fused = x + out + resid + weights + (2 * dout if w1 is not None else 0)
    return macs, 4 * layer, 4 * fused


@pytest.mark.parametrize("index,n", [pytest.param(*g, id=f"block{g[0]}-b{g[1]}") for g in _groups()])
def test_block_interleaved(benchmark, dev, index, n):
    block, original, (cin, h, w) = _blocks()[index]
    x = common.make_input((n, cin, h, w), "channels_last", dev, common.seed_of("blk-input", index, n))
    assert x.is_contiguous(memory_format=torch.channels_last) or h * w == 1
    with torch.no_grad():
        ref = original.double()(x.double()).float()
        original.float()
    with torch.inference_mode():
        args = block._plan()
    layered = _layer_by_layer(*args)
    block_op = M._OPS["block"]

    def fused(x):
        return block_op(x, *args)

    providers = {"eager": (original, (x,), ref), "layer-by-layer": (layered, (x,), ref)}
    if not common.fused_skip_reason("cpu", dev):
        providers["fused-block"] = (fused, (x,), ref)
    with torch.no_grad():
        oh, ow = ref.shape[2], ref.shape[3]
    macs, bytes_layer, bytes_fused = _estimates(n, cin, h, w, args, oh, ow)
    name = f"block{index}-{cin}-{args[1]}-{args[14]}-{h}-k{args[3].shape[2]}-s{args[5][0]}" + (
        "-se" if args[9] is not None else "")
    info = dict(op="inverted_residual", baseline="eager", compare="layer-by-layer", flops=2 * macs,
                bytes=bytes_fused, bytes_layer=bytes_layer, bytes_fused=bytes_fused, shape=f"{n}x{cin}x{h}x{w}",
                layout="channels_last", dtype="float32", layer=name, block=index, model="large", batch=n, channels=cin,
                size=h)
    with torch.inference_mode():
        common.run_interleaved(benchmark, dev, providers, group=f"blk-il {name} b{n} {dev}", kind="blk-il",
                               scale="layer", seed=common.seed_of("blk-il", index, n), info=info)
