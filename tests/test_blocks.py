"""Pointwise conv modules and whole inverted-residual blocks: FusedPointwiseConvBNAct,
FusedInvertedResidual and what convert() does with torchvision and timm MobileNetV3, against the
original modules (float64 where values are compared)."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

import mnv3_kernels
from mnv3_kernels import _extension, modules as M, ops

from conftest import random_bn_, randomize_model_bn_, rel_err

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")


def _pw_seq(cin, cout, act):
    seq = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), random_bn_(nn.BatchNorm2d(cout)))
    if act is not None:
        seq.append(act)
    return seq.eval()


@pytest.mark.parametrize("act", [None, nn.ReLU(), nn.Hardswish()])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_pointwise_module_matches_original(act, fmt):
    seq = _pw_seq(24, 72, act)
    want_model = copy.deepcopy(seq).double()
    fused = M.FusedPointwiseConvBNAct.from_sequential(seq)
    assert list(fused.state_dict()) == list(want_model.state_dict())
    x = torch.randn(3, 24, 9, 11).contiguous(memory_format=fmt)
    with torch.no_grad():
        got = fused(x)
        want = want_model(x.double())
    assert got.is_contiguous(memory_format=fmt)
    assert rel_err(got.double(), want) < 1e-5


def test_pointwise_module_packs_once_and_sees_parameter_updates():
    fused = M.FusedPointwiseConvBNAct.from_sequential(_pw_seq(16, 40, nn.ReLU()))
    x = torch.randn(1, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused(x)
        packed = fused._cache()["pack"][2]
        fused(x)
        assert fused._cache()["pack"][2] is packed  # reused, not repacked
        fused[1].weight.mul_(-2.0)  # an in-place update bumps the version counter
        got = fused(x)
        want = nn.Sequential(*fused)(x)  # the children, unfused
    assert fused._cache()["pack"][2] is not packed
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pointwise_module_train_mode_is_the_original():
    seq = _pw_seq(8, 20, nn.Hardswish()).train()
    ref = copy.deepcopy(seq)
    fused = M.FusedPointwiseConvBNAct.from_sequential(seq)
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(fused(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(fused[1].running_mean, ref[1].running_mean, rtol=0, atol=0)


def test_pointwise_module_gradients_in_eval():
    seq = _pw_seq(6, 10, nn.Hardswish())
    ref = copy.deepcopy(seq)
    fused = M.FusedPointwiseConvBNAct.from_sequential(seq)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    g = torch.randn(2, 10, 4, 4)
    got = torch.autograd.grad(fused(x), (x, fused[0].weight, fused[1].weight), g)
    want = torch.autograd.grad(ref(x), (x, ref[0].weight, ref[1].weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("conv,reason", [
    (nn.Conv2d(4, 8, 1, stride=2), "stride"),
    (nn.Conv2d(4, 8, 1, padding=1), "padding"),
    (nn.Conv2d(4, 8, 1, groups=2), "not a pointwise conv"),
])
def test_pointwise_module_refuses_what_it_cannot_compute(conv, reason):
    with pytest.raises(ValueError, match=reason):
        M.FusedPointwiseConvBNAct(conv, nn.BatchNorm2d(8))


def _tv(name):
    model = getattr(torchvision.models, f"mobilenet_v3_{name}")().eval()
    return randomize_model_bn_(model)


@pytest.mark.parametrize("name,blocks,pw", [("large", 15, 30), ("small", 11, 22)])
def test_convert_fuses_every_block(one_thread, name, blocks, pw):
    model = mnv3_kernels.convert(_tv(name))
    counts = model.mnv3_report.counts()
    assert counts["block"] == {"fused": blocks, "skipped": 0, "already fused": 0}
    assert counts["conv"] == {"fused": 1, "skipped": 0, "already fused": 0}  # the stem
    assert isinstance(model.features[0], M.FusedConvBNAct)
    # Every 1x1 conv of the blocks plus the last conv.
    assert counts["pwconv"]["fused"] == pw and counts["pwconv"]["skipped"] == 0
    assert sum(isinstance(m, M.FusedInvertedResidual) for m in model.modules()) == blocks
    again = mnv3_kernels.convert(model).mnv3_report.counts()
    assert again["block"]["already fused"] == blocks and again["block"]["fused"] == 0


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (3, 3, 97, 131), (0, 3, 64, 64)])
def test_converted_blocks_match_float64_original(one_thread, fmt, shape):
    model = _tv("large")
    want_model = copy.deepcopy(model).double()
    state = copy.deepcopy(model.state_dict())
    mnv3_kernels.convert(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(*shape).contiguous(memory_format=fmt)
    with torch.inference_mode():
        got = model(x)
    with torch.no_grad():
        want = want_model(x.double())
    assert got.shape == want.shape
    if shape[0]:
        assert rel_err(got.double(), want) < 1e-4


def _block_calls(model, monkeypatch) -> dict:
    """Runs model once at batch 1 with the operators a fused block could call counted: one
    block call per block, no layer op outside them (1x1 calls on one pixel per sample are the
    classifier's FusedLinear). Blocks inside a FusedSequential or a FusedMobileNetV3 run in its
    LayerChain: they are counted from the chain's steps (1x1 steps after a pool or in a chain of
    FusedLinear layers are the classifier's)."""
    calls = {"block": 0, "se": 0, "expand": 0, "layer": 0, "linear": 0}
    real_block, real_packed = M._OPS["block"], M._OPS["pointwise_packed"]

    def block(*args):
        calls["block"] += 1
        calls["expand"] += args[1] is not None
        calls["se"] += args[10] is not None  # se_fc1_weight: the gate computed inside the call
        return real_block(*args)

    def layer(*args):
        calls["layer"] += 1
        raise AssertionError("a layer op ran outside the block call")

    def packed(x, *args):
        if x.shape[2:] != (1, 1):
            return layer()
        calls["linear"] += 1
        return real_packed(x, *args)

    monkeypatch.setitem(M._OPS, "block", block)
    monkeypatch.setitem(M._OPS, "pointwise_packed", packed)
    for name in ("gate", "dwconv"):
        monkeypatch.setitem(M._OPS, name, layer)
    with torch.inference_mode():
        model(torch.randn(1, 3, 96, 96))
    for m in model.modules():
        cached = m.__dict__.get("_mnv3_cache", {}).get("chain")
        classifier = isinstance(m, nn.Sequential) and isinstance(m[0], M.FusedLinear)
        for step in cached[1].describe() if cached else ():
            classifier = classifier or step[0] == "pool"
            calls["linear"] += classifier and step[0] == "pointwise"
            if step[0] == "block":
                calls["block"] += 1
                calls["expand"] += step[1]
                calls["se"] += step[2]
    return calls


def test_the_block_fast_path_runs(monkeypatch, one_thread):
    # Small's 11 blocks, one call each: 10 with an expand conv, 9 with squeeze-excite; the
    # classifier's two Linear layers.
    model = mnv3_kernels.convert(_tv("small"))
    mnv3_kernels.path_stats(reset=True)
    calls = _block_calls(model, monkeypatch)
    assert calls == {"block": 11, "se": 9, "expand": 10, "layer": 0, "linear": 2}
    # features (stem, 11 blocks, head conv), pool and classifier ran as one chain.
    assert mnv3_kernels.path_stats() == {("FusedMobileNetV3", "fused", "cpu"): 1}
    steps = model._cache()["chain"][1].describe()
    assert [s[0] for s in steps] == ["dense"] + ["block"] * 11 + ["pointwise", "pool", "pointwise", "pointwise"]
    assert sum(s[3] for s in steps[1:12]) == 6  # blocks with a residual
    # Linear -> Hardswish -> Dropout -> Linear: two 1x1 steps, the h-swish in the first's epilogue.
    assert steps[-2:] == [("pointwise", "hardswish"), ("pointwise", "none")]


def test_block_gradients_and_train_mode_are_the_original(one_thread):
    model = _tv("small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    got = torch.autograd.grad(model(x).sum(), x)[0]
    want = torch.autograd.grad(ref(x).sum(), x)[0]
    assert rel_err(got, want) < 1e-4
    model.train()
    ref.train()
    torch.manual_seed(3)
    a = model(x.detach())
    torch.manual_seed(3)
    b = ref(x.detach())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for (n, t), (_, u) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(t, u, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_converted_model_keeps_the_output_layout(one_thread, fmt):
    # Blocks run channels_last inside; feature maps come back in the original's layout.
    model = randomize_model_bn_(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None).eval())
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    assert model.mnv3_report.counts()["block"]["fused"] == 15
    x = torch.randn(1, 3, 65, 67).contiguous(memory_format=fmt)
    with torch.inference_mode():
        got, want = model(x)["out"], ref(x)["out"]
    assert got.is_contiguous() == want.is_contiguous()
    assert got.is_contiguous(memory_format=torch.channels_last) == want.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got, want) < 1e-4


def test_gate_op_matches_reference():
    x = torch.randn(2, 40, 7, 9).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(16, 40) / 6, torch.randn(16)
    w2, b2 = torch.randn(40, 16) / 4, torch.randn(40)
    got = torch.ops.mnv3.squeeze_excite_gate(x, w1, b1, w2, b2)
    pooled = x.double().mean((2, 3))
    want = torch.nn.functional.hardsigmoid(
        torch.relu(pooled @ w1.double().t() + b1.double()) @ w2.double().t() + b2.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="no gradients"):
        torch.ops.mnv3.squeeze_excite_gate(x.requires_grad_(), w1, b1, w2, b2)


def test_refresh_drops_packed_weights_and_path_stats_count_blocks(one_thread):
    model = mnv3_kernels.convert(_tv("small"))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
        pw = model.features[-1]
        packed = pw._cache()["pack"][2]
        # A write through .data bumps no version counter: refresh() is what makes it seen.
        pw[1].weight.data.mul_(-1.0)
        mnv3_kernels.refresh(model)
        after = model(x)
    assert pw._cache()["pack"][2] is not packed
    assert not torch.allclose(before, after)
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        model(x)
    stats = mnv3_kernels.path_stats()
    assert stats == {("FusedMobileNetV3", "fused", "cpu"): 1}  # features, pool, classifier: one chain
    model.requires_grad_(False)
    model(x)  # autograd on, nothing to record: no chain, each layer on its own fused path
    stats = mnv3_kernels.path_stats(reset=True)
    assert stats[("FusedInvertedResidual", "fused", "cpu")] == 11
    assert stats[("FusedConvBNAct", "fused", "cpu")] == 1
    model.train()
    mnv3_kernels.path_stats(reset=True)
    model(x)
    assert mnv3_kernels.path_stats()[("FusedInvertedResidual", "layer by layer", "training mode")] == 11


def test_revert_undoes_block_conversion(one_thread):
    model = _tv("large")
    before = [(n, type(m)) for n, m in model.named_modules()]
    params = [id(p) for p in model.parameters()]
    mnv3_kernels.revert(mnv3_kernels.convert(model))
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert [id(p) for p in model.parameters()] == params
    assert not model._forward_hooks


def test_block_plan_sees_parameter_changes_and_replaced_layers(one_thread):
    model = _tv("small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    with torch.no_grad():  # in-place updates (version counters) in a block's layers, both models
        for m in (model, ref):
            m.features[4].block[1][1].running_var.mul_(3.0)   # depthwise BN
            m.features[4].block[3][1].weight.mul_(-0.5)       # projection BN (after SE)
            m.features[4].block[2].fc1.bias.add_(0.25)        # squeeze-excite
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) < 1e-4
    # A layer swapped out after conversion: the block runs its layers one by one, as they are now.
    model.features[4].block[0] = copy.deepcopy(ref.features[4].block[0])
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) < 1e-4
    assert mnv3_kernels.path_stats()[("FusedInvertedResidual", "layer by layer",
                                      "the block's layers were replaced after conversion")] == 1


@pytest.mark.parametrize("n", [0, 1, 3, 8])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_matches_linear(n, bias):
    lin = nn.Linear(37, 53, bias=bias)
    want_model = copy.deepcopy(lin).double()
    fused = M.FusedLinear(lin)
    assert fused.weight is lin.weight and list(fused.state_dict()) == list(lin.state_dict())
    x = torch.randn(n, 37)
    M.path_stats(reset=True)
    with torch.no_grad():
        got = fused(x)
    assert got.shape == (n, 53) and got.dtype == torch.float32
    if n:
        assert rel_err(got.double(), want_model(x.double())) < 1e-5
    assert {p for (cls, p, _) in M.path_stats(reset=True) if cls == "FusedLinear"} == {"fused"}


def test_fused_linear_sees_weight_changes_and_falls_back_exactly():
    lin = nn.Linear(16, 8)
    fused = M.FusedLinear(lin)
    x = torch.randn(2, 16)
    with torch.no_grad():
        fused(x)
        lin.weight.mul_(2)  # in place: the packed cache must notice
        assert torch.allclose(fused(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)
    # Autograd, other shapes and dtypes: F.linear itself.
    y = fused(x)
    y.sum().backward()
    assert lin.weight.grad is not None
    x3 = torch.randn(2, 5, 16)
    assert torch.equal(fused(x3), torch.nn.functional.linear(x3, lin.weight, lin.bias))
    xd = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fused.double()(xd), torch.nn.functional.linear(xd, lin.weight, lin.bias))


def test_convert_fuses_the_classifier_and_revert_restores_it():
    model = _tv("small")
    classifier = [model.classifier[0], model.classifier[3]]
    report = mnv3_kernels.convert(model).mnv3_report
    assert [e.status for e in report.entries if e.kind == "linear"] == ["fused", "fused"]
    assert isinstance(model.classifier[0], M.FusedLinear) and model.classifier[0].weight is classifier[0].weight
    mnv3_kernels.revert(model)
    assert model.classifier[0] is classifier[0] and model.classifier[3] is classifier[1]


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_layers_without_kernels_for_the_chosen_backend_run_the_reference_path(backend, monkeypatch):
    """convert(model, backend=...) for a backend the 1x1 and stem ops have no kernels for: those
    layers run the reference path (what eager ran) and say so; the others keep the backend."""
    model = _tv("small")
    want = copy.deepcopy(model).double()
    mnv3_kernels.convert(model)
    for m in model.modules():
        if isinstance(m, (M.FusedPointwiseConvBNAct, M.FusedConvBNAct)):
            m.__dict__["_backend"] = backend  # as convert(backend=...) sets it, without the availability check
    monkeypatch.setattr(ops, "_resolve_cached", lambda b, x, conv_like=True: b if b != "auto" else "cpu")
    x = torch.randn(2, 3, 64, 64)
    M.path_stats(reset=True)
    with torch.no_grad():
        got = model(x)
    assert rel_err(got.double(), want(x.double())) < 1e-4
    stats = M.path_stats(reset=True)
    reasons = {d for (cls, p, d) in stats if cls in ("FusedPointwiseConvBNAct", "FusedConvBNAct")}
    assert reasons == {f"pointwise_conv_bn_act has no {backend!r} kernels", f"dense_conv_bn_act has no {backend!r} kernels"}


def test_modules_with_forward_hooks_are_left_alone(one_thread):
    # A fused call skips its children's calls, and a replaced module takes its hooks with it.
    model = _tv("small")
    ref = copy.deepcopy(model)
    seen = []
    model.features[2].register_forward_hook(lambda m, args, out: seen.append("block"))
    model.features[4].block[1][0].register_forward_pre_hook(lambda m, args: seen.append("dw conv"))
    mnv3_kernels.convert(model)
    skipped = {e.path: e.reason for e in model.mnv3_report.skipped()}
    assert skipped["features.2"] == "forward hooks on features.2"
    assert skipped["features.4.block.1"] == "forward hooks on features.4.block.1.0"
    assert "not all fused" in skipped["features.4"]
    assert skipped[""] == "features is not a FusedSequential"  # so the model is not one chain
    assert len(skipped) == 4
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) < 1e-4
    assert seen == ["block", "dw conv"]


def test_block_refuses_parts_that_are_not_fused():
    block = torchvision.models.mobilenet_v3_small().features[1]  # dw -> se -> project, unconverted
    with pytest.raises(ValueError, match="its dw layer 'block.0' is Conv2dNormActivation"):
        M.FusedInvertedResidual(block, dw="block.0", se="block.1", project="block.2", residual=False)
    with pytest.raises(ValueError, match="its dw layer 'block.9' is NoneType"):
        M.FusedInvertedResidual(block, dw="block.9", project="block.2", residual=False)


# ----------------------------------------------------------------------------------------------
# timm MobileNetV3: DepthwiseSeparableConv / InvertedResidual blocks, stem and ConvBnAct pairs
# ----------------------------------------------------------------------------------------------
def _timm(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(f"mobilenetv3_{name}_100", pretrained=False).eval()
    return randomize_model_bn_(model)


@pytest.mark.parametrize("name,blocks,pw", [("large", 15, 31), ("small", 11, 23)])
def test_timm_convert_fuses_every_block(one_thread, name, blocks, pw):
    model = _timm(name)
    state = copy.deepcopy(model.state_dict())
    mnv3_kernels.convert(model)
    counts = model.mnv3_report.counts()
    assert counts["block"] == {"fused": blocks, "skipped": 0, "already fused": 0}
    assert counts["conv"] == {"fused": 1, "skipped": 0, "already fused": 0}  # the stem
    assert isinstance(model.conv_stem, M.DenseConvBNActHead) and model.conv_stem.tail is model.bn1
    # Every 1x1 conv: the blocks' expansions and projections, ConvBnAct's, and the head's conv_head
    # (no BN: its tail replaces act2).
    assert counts["pwconv"] == {"fused": pw, "skipped": 0, "already fused": 0}
    assert isinstance(model.blocks[-1][0].conv, M.PointwiseConvBNActHead)
    assert isinstance(model.conv_head, M.PointwiseConvBNActHead) and model.conv_head.tail is model.act2
    assert isinstance(model.act2, M.ActivationTail) and model.conv_head.activation == "hardswish"
    assert isinstance(model.classifier, M.FusedLinear) and counts["linear"]["fused"] == 1
    assert sum(isinstance(m, M.FusedInvertedResidual) for m in model.modules()) == blocks
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    again = mnv3_kernels.convert(model).mnv3_report.counts()
    assert again["block"]["already fused"] == blocks and again["block"]["fused"] == 0
    assert again["pwconv"]["already fused"] == pw and again["conv"]["already fused"] == 1


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name,shape", [("large", (1, 3, 224, 224)), ("large", (3, 3, 97, 131)),
                                        ("large", (0, 3, 64, 64)), ("small", (1, 3, 224, 224)),
                                        ("small", (3, 3, 97, 131))])
def test_timm_converted_blocks_match_float64_original(one_thread, fmt, name, shape):
    model = _timm(name)
    want_model = copy.deepcopy(model).double()
    mnv3_kernels.convert(model)
    x = torch.randn(*shape).contiguous(memory_format=fmt)
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        got = model(x)
    with torch.no_grad():
        want = want_model(x.double())
    assert got.shape == want.shape
    if shape[0]:
        assert rel_err(got.double(), want) < 1e-4
    blocks = 15 if name == "large" else 11
    # Every stage of blocks but the last (a ConvBnAct) is one chain of its blocks.
    stages = len(model.blocks) - 1
    assert [type(s).__name__ for s in model.blocks] == ["FusedSequential"] * stages + ["Sequential"]
    assert mnv3_kernels.path_stats() == {("FusedSequential", "fused", "cpu"): stages,
                                         ("DenseConvBNActHead", "fused", "cpu"): 1,
                                         ("PointwiseConvBNActHead", "fused", "cpu"): 2,
                                         ("FusedLinear", "fused", "cpu"): 1}
    chained = [s[0] for stage in model.blocks[:stages] for s in stage._cache()["chain"][1].describe()]
    assert chained == ["block"] * blocks


def test_timm_block_fast_path_runs(monkeypatch, one_thread):
    # Small's 11 blocks, one call each: the DepthwiseSeparableConv and 10 InvertedResiduals (with
    # an expand conv); 9 with squeeze-excite; the classifier's Linear.
    calls = _block_calls(mnv3_kernels.convert(_timm("small")), monkeypatch)
    assert calls == {"block": 11, "se": 9, "expand": 10, "layer": 0, "linear": 1}


def test_timm_gradients_and_train_mode_are_the_original(one_thread):
    model = _timm("small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    mnv3_kernels.path_stats(reset=True)
    got = torch.autograd.grad(model(x).sum(), x)[0]
    assert mnv3_kernels.path_stats()[("FusedInvertedResidual", "layer by layer", "autograd records the call")] == 11
    want = torch.autograd.grad(ref(x).sum(), x)[0]
    assert rel_err(got, want) < 1e-4
    model.train()
    ref.train()
    mnv3_kernels.path_stats(reset=True)
    for _ in range(2):  # timm's own forward on the original modules: the same numbers, bit for bit
        xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        a, b = model(xa), ref(xb)
        assert torch.equal(a, b)
        a.square().sum().backward()
        b.square().sum().backward()
        assert torch.equal(xa.grad, xb.grad)
    assert mnv3_kernels.path_stats()[("FusedInvertedResidual", "layer by layer", "training mode")] == 22
    for (n, t), (_, u) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(t, u), n  # running statistics updated alike
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n


def test_timm_revert_undoes_block_conversion(one_thread):
    model = _timm("large")
    before = [(n, type(m)) for n, m in model.named_modules()]
    params = [id(p) for p in model.parameters()]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    mnv3_kernels.revert(mnv3_kernels.convert(model))
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert [id(p) for p in model.parameters()] == params
    assert not model._forward_hooks
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_timm_block_plan_sees_parameter_changes_and_replaced_layers(one_thread):
    model = _timm("small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    with torch.no_grad():  # in-place updates (version counters) in a block's layers, both models
        for m in (model, ref):
            m.blocks[2][0].bn2.running_var.mul_(3.0)      # depthwise BN
            m.blocks[2][0].bn3.weight.mul_(-0.5)          # projection BN (after SE)
            m.blocks[2][0].se.conv_reduce.bias.add_(0.25)  # squeeze-excite
            m.blocks[2][0].conv_pw.weight.mul_(1.5)       # expansion conv
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) < 1e-4
    # A layer swapped out after conversion: the block runs its layers one by one, as they are now.
    model.blocks[2][0].se = copy.deepcopy(ref.blocks[2][0].se)
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) < 1e-4
    assert mnv3_kernels.path_stats()[("FusedInvertedResidual", "layer by layer",
                                      "the block's layers were replaced after conversion")] == 1
