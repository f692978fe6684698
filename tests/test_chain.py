"""FusedSequential and FusedMobileNetV3: a converted feature extractor, or a whole converted
torchvision MobileNetV3 (features, pool, classifier), runs its layers as one LayerChain call
(csrc/python/layer_chain.cpp). Every change the layers' own checks would see must make the chain
rebuild or step aside; results are compared with the same layers called one by one (the same
kernels: bit-identical) and with the float64 original."""
import copy
import gc
from collections import OrderedDict
import weakref

import pytest
import torch
import torch.nn as nn
import torchvision

import mnv3_kernels
from mnv3_kernels import _extension, modules as M

from conftest import cpu_isas, randomize_model_bn_, rel_err

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")


def _pair(name="small"):
    """(converted model, the same model with features called layer by layer, float64 original).
    Without a FusedSequential for its features, the second one runs torchvision's forward."""
    model = randomize_model_bn_(getattr(torchvision.models, f"mobilenet_v3_{name}")().eval())
    want = copy.deepcopy(model).double()
    conv = mnv3_kernels.convert(model)
    layers = copy.deepcopy(conv)
    layers.features = nn.Sequential(OrderedDict(layers.features._modules))  # same fused layers, no chain
    return conv, layers, want


def _run(model, x):
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        y = model(x)
    return y, mnv3_kernels.path_stats(reset=True)


def _chain_ran(stats) -> bool:
    """The whole model ran as one chain."""
    return stats == {("FusedMobileNetV3", "fused", "cpu"): 1}


def _chain(model):
    return model._cache()["chain"][1]


@pytest.mark.parametrize("name", ["large", "small"])
@pytest.mark.parametrize("shape,fmt", [((1, 3, 224, 224), torch.contiguous_format),
                                       ((3, 3, 97, 131), torch.channels_last),
                                       ((2, 3, 33, 1), torch.contiguous_format),
                                       ((0, 3, 64, 64), torch.contiguous_format)])
def test_chain_matches_layers_and_original(one_thread, name, shape, fmt):
    conv, layers, want = _pair(name)
    assert isinstance(conv.features, M.FusedSequential)
    assert isinstance(conv.classifier, M.FusedSequential)
    assert {e.path: e.shape for e in conv.mnv3_report.fused("sequence")} == {
        "features": f"{len(conv.features)} layers", "classifier": "4 layers"}
    x = torch.randn(*shape).contiguous(memory_format=fmt)
    got, stats = _run(conv, x)
    assert _chain_ran(stats), stats
    ref, _ = _run(layers, x)
    assert torch.equal(got, ref)
    assert got.shape == (shape[0], 1000)
    if shape[0]:
        with torch.no_grad():
            assert rel_err(got.double(), want(x.double())) < 1e-4
    with torch.no_grad():  # no_grad serves it too, and reuses the inference-mode-free plan
        again = conv(x)
    assert torch.equal(again, got)


def test_chain_packs_depthwise_weights_for_the_kernels_it_runs(one_thread):
    # A chain packs each block's depthwise weights once, in the format of the instruction set
    # active when it was built; switched to another one, it must not read that format.
    isas = cpu_isas()
    if len(isas) < 2:
        pytest.skip("this CPU supports one instruction set")
    conv, layers, want = _pair("small")
    x = torch.randn(2, 3, 96, 80)
    before = _extension._C.build_info()["cpu_isa"]
    try:
        _extension._C._set_cpu_isa(isas[0])
        first, stats = _run(conv, x)
        assert _chain_ran(stats), stats
        chain = _chain(conv)
        for other in isas[1:]:
            _extension._C._set_cpu_isa(other)
            got, stats = _run(conv, x)
            assert _chain_ran(stats) and _chain(conv) is chain  # the same chain, other kernels
            ref, _ = _run(layers, x)
            assert torch.equal(got, ref), other
        with torch.no_grad():
            assert rel_err(got.double(), want(x.double())) < 1e-4
    finally:
        _extension._C._set_cpu_isa(before)


def test_profile_times_every_step(one_thread):
    conv, layers, _ = _pair("small")
    x = torch.randn(1, 3, 64, 64)
    _run(conv, x)
    chain = _chain(conv)
    seconds = chain.profile(x, 3)
    assert len(seconds) == len(chain) == len(chain.describe())
    assert all(s > 0 for s in seconds)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        chain.profile(x, 0)


def test_chain_is_reused_and_the_state_dict_is_unchanged(one_thread):
    model = randomize_model_bn_(torchvision.models.mobilenet_v3_small().eval())
    keys = list(model.state_dict())
    conv = mnv3_kernels.convert(model)
    assert list(conv.state_dict()) == keys
    x = torch.randn(1, 3, 64, 64)
    _run(conv, x)
    chain = _chain(conv)
    _run(conv, x)
    assert _chain(conv) is chain  # nothing changed: not rebuilt
    # The features' layers, the pool, and the classifier's two linear layers (its hard-swish
    # merged into the first, its dropout the identity).
    assert len(chain) == len(conv.features) + 3
    assert chain.describe()[-3:] == [("pool",), ("pointwise", "hardswish"), ("pointwise", "none")]


def _edits():
    """(what, edit(model)) pairs: each changes what the chain computes or must call."""
    def inplace(m):
        with torch.no_grad():
            m.features[4].block[0][0].weight.mul_(1.5)

    def new_param(m):
        conv = m.features[6].block[3][0]
        conv.weight = nn.Parameter(conv.weight.detach() * -1.0)

    def data_refresh(m):
        m.features[8].block[1][1].weight.data.mul_(-1.0)  # no version bump: refresh() tells
        if isinstance(m.features[8], M.FusedModule):
            m.features[8].refresh()  # the block's refresh covers its layers' caches

    def eps(m):
        m.features[9].block[1][1].eps = 0.5

    def buffer(m):
        bn = m.features[3].block[1][1]
        bn.running_mean = bn.running_mean * 0 + 0.25

    def replace_block(m):
        m.features[5] = copy.deepcopy(m.features[6])

    def se_weight(m):
        with torch.no_grad():
            m.features[1].block[1].fc2.bias.add_(1.0)

    def stem(m):
        with torch.no_grad():
            m.features[0][1].running_var.mul_(4.0)

    return [("in-place weight", inplace), ("new Parameter", new_param), (".data + refresh", data_refresh),
            ("BN eps", eps), ("BN buffer replaced", buffer), ("block replaced", replace_block),
            ("squeeze-excite bias", se_weight), ("stem statistics", stem)]


@pytest.mark.parametrize("what,edit", _edits(), ids=[w for w, _ in _edits()])
def test_chain_sees_every_change(one_thread, what, edit):
    conv, layers, _ = _pair("small")
    x = torch.randn(2, 3, 48, 40)
    before, _ = _run(conv, x)
    edit(conv)
    edit(layers)
    got, stats = _run(conv, x)
    want, _ = _run(layers, x)
    assert _chain_ran(stats), stats
    assert not torch.equal(got, before), what
    assert torch.equal(got, want), what


def test_a_layer_in_train_mode_runs_the_features_layer_by_layer(one_thread):
    conv, layers, _ = _pair("small")
    x = torch.randn(2, 3, 48, 40)
    _run(conv, x)
    conv.features[3].train()
    layers.features[3].train()
    got, stats = _run(conv, x)
    assert stats[("FusedSequential", "layer by layer", "layer 3: training mode")] == 1
    assert stats[("FusedInvertedResidual", "layer by layer", "training mode")] == 1
    assert torch.equal(got, _run(layers, x)[0])
    conv.features[3].eval()
    assert _chain_ran(_run(conv, x)[1])


def test_hooks_added_after_conversion_run(one_thread):
    conv, _, _ = _pair("small")
    x = torch.randn(1, 3, 48, 48)
    _run(conv, x)
    seen = []
    handle = conv.features[5].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    _, stats = _run(conv, x)
    assert len(seen) == 1 and stats[("FusedSequential", "fused", "cpu")] == 1  # the classifier's
    assert "forward hooks" in next(k[2] for k in stats if k[0] == "FusedSequential")
    handle.remove()
    assert _chain_ran(_run(conv, x)[1])
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append(1))
    try:
        _, stats = _run(conv, x)
    finally:
        handle.remove()
    assert stats[("FusedSequential", "layer by layer", "global forward hooks")] == 2
    assert len(seen) > 2


def test_backend_change_and_autograd_leave_the_chain(one_thread):
    conv, layers, _ = _pair("small")
    x = torch.randn(1, 3, 48, 48)
    conv.features[0].backend = "reference"
    _, stats = _run(conv, x)
    assert stats[("FusedSequential", "fused", "cpu")] == 1  # the classifier's
    assert any(k[:2] == ("FusedConvBNAct", "reference") for k in stats), stats
    conv.features[0].backend = "auto"
    assert _chain_ran(_run(conv, x)[1])
    # Autograd on: the features run layer by layer and gradients flow as in the original.
    mnv3_kernels.path_stats(reset=True)
    xg = x.clone().requires_grad_()
    conv(xg).sum().backward()
    assert any(k[:2] == ("FusedSequential", "layer by layer") for k in mnv3_kernels.path_stats())
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_bad_input_raises_as_the_layers_do(one_thread):
    conv, _, _ = _pair("small")
    with torch.inference_mode(), pytest.raises(ValueError, match="channels"):
        conv.features(torch.randn(1, 5, 32, 32))
    with torch.inference_mode(), pytest.raises(ValueError):
        conv.features(torch.randn(1, 3, 0, 32))


def test_inference_tensor_weights_are_not_cached(one_thread):
    with torch.inference_mode():
        model = randomize_model_bn_(torchvision.models.mobilenet_v3_small().eval())
        want = copy.deepcopy(model)
        mnv3_kernels.convert(model)
        x = torch.randn(1, 3, 40, 40)
        got = model(x)
        assert "chain" not in model._cache() and "chain" not in model.features._cache()
        torch.testing.assert_close(got, want(x), rtol=1e-4, atol=1e-4)


def test_no_reference_cycle_keeps_the_model_alive(one_thread):
    conv, _, _ = _pair("small")
    _run(conv, torch.randn(1, 3, 32, 32))
    assert "chain" in conv._cache()
    ref = weakref.ref(conv)
    del conv
    gc.collect()
    assert ref() is None


def test_copy_revert_and_construction(one_thread):
    conv, layers, _ = _pair("small")
    x = torch.randn(1, 3, 40, 40)
    first, _ = _run(conv, x)
    clone = copy.deepcopy(conv)
    assert "chain" not in clone.features._cache()
    assert torch.equal(_run(clone, x)[0], first)
    mnv3_kernels.revert(conv)
    assert type(conv.features) is nn.Sequential
    assert not any(isinstance(m, M.FusedModule) for m in conv.modules())
    with pytest.raises(ValueError, match="first child must be one of"):
        M.FusedSequential(nn.Sequential(nn.ReLU()))
    # Converting a converted model again reports the sequence as already fused.
    again = mnv3_kernels.convert(layers).mnv3_report
    assert again.counts()["sequence"]["fused"] == 1  # the features (the classifier was one already)
    assert mnv3_kernels.convert(layers).mnv3_report.counts()["sequence"]["already fused"] == 2


def test_slices_are_chains_where_they_can_be(one_thread):
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 64, 64)
    head = conv.features[:4]
    assert isinstance(head, M.FusedSequential) and not head.training
    assert list(head._modules.values()) == list(conv.features._modules.values())[:4]
    assert all(not m.training for m in conv.modules())  # slicing changed no child's mode
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        got = conv.features[4:](head(x))
        assert mnv3_kernels.path_stats() == {("FusedSequential", "fused", "cpu"): 2}
        assert torch.equal(got, conv.features(x))
    with torch.no_grad():
        assert rel_err(got.double(), want.features(x.double())) < 1e-4
    # A slice that starts with an activation cannot be a chain: a plain Sequential of the layers.
    tail = conv.classifier[1:]
    assert type(tail) is nn.Sequential and list(tail) == list(conv.classifier)[1:]
    assert conv.features[0] is conv.features._modules["0"]
    with pytest.raises(TypeError, match="seq must be an nn.Sequential"):
        M.FusedSequential([conv.features[0]])


def _mlp(*layers):
    model = nn.Sequential(nn.Sequential(*layers)).eval()  # convert replaces children, not the root
    want = copy.deepcopy(model)
    return mnv3_kernels.convert(model), want


def test_linear_chains_merge_activations_and_skip_dropout():
    model, want = _mlp(nn.Linear(24, 40), nn.Hardswish(), nn.Dropout(0.3), nn.Linear(40, 17), nn.ReLU6())
    seq = model[0]
    assert isinstance(seq, M.FusedSequential)
    for n in (3, 1, 0):
        x = torch.randn(n, 24)
        mnv3_kernels.path_stats(reset=True)
        with torch.no_grad():
            got = model(x)
            torch.testing.assert_close(got, want(x), rtol=1e-5, atol=1e-5)
        assert mnv3_kernels.path_stats() == {("FusedSequential", "fused", "cpu"): 1}
        assert got.shape == (n, 17)
    assert seq._cache()["chain"][1].describe() == [("pointwise", "hardswish"), ("pointwise", "relu6")]
    # Dropout in train mode: not the identity, so not chained.
    seq[2].train()
    mnv3_kernels.path_stats(reset=True)
    with torch.no_grad():
        model(torch.randn(2, 24))
    assert mnv3_kernels.path_stats()[("FusedSequential", "layer by layer", "layer 2: training mode")] == 1


def test_what_a_chain_cannot_hold():
    # Two activations in a row: the second has no 1x1 step of its own to go into.
    model, want = _mlp(nn.Linear(8, 8), nn.ReLU(), nn.Hardswish(), nn.Linear(8, 4))
    x = torch.randn(2, 8)
    mnv3_kernels.path_stats(reset=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want(x), rtol=1e-5, atol=1e-5)
    assert ("FusedSequential", "layer by layer",
            "layer 2: an activation that no 1x1 layer right before it can apply") in mnv3_kernels.path_stats()
    # An activation first, or something that is not a layer, an activation or dropout: not converted.
    for layers in ((nn.ReLU(), nn.Linear(8, 4)), (nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4))):
        model, _ = _mlp(*layers)
        assert type(model[0]) is nn.Sequential
        assert M.chain_unsupported_reason(model[0]) is not None


# ----------------------------------------------------------------------------------------------
# The whole model as one chain (FusedMobileNetV3)
# ----------------------------------------------------------------------------------------------
def test_whole_model_class_report_state_dict_and_revert(one_thread, tmp_path):
    from mnv3_kernels.models import FusedMobileNetV3
    from torchvision.models.mobilenetv3 import MobileNetV3

    model = randomize_model_bn_(torchvision.models.mobilenet_v3_large().eval())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 77, 64)
    with torch.no_grad():
        want = model(x)
    conv = mnv3_kernels.convert(model)
    assert conv is model and type(conv) is FusedMobileNetV3 and isinstance(conv, MobileNetV3)
    assert [(e.path, e.status) for e in conv.mnv3_report.entries if e.kind == "model"] == [("", "fused")]
    assert list(conv.state_dict()) == list(state)
    got, stats = _run(conv, x)
    assert _chain_ran(stats), stats
    assert rel_err(got, want) < 1e-4
    # Saved whole and loaded back, it is the same class and runs as one chain again.
    torch.save(conv, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded) is FusedMobileNetV3 and "chain" not in loaded._cache()
    again, stats = _run(loaded, x)
    assert _chain_ran(stats) and torch.equal(again, got)
    # Converting again: already fused. Reverting: torchvision's class, same tensors.
    assert [e.status for e in mnv3_kernels.convert(conv).mnv3_report.entries if e.kind == "model"] == ["already fused"]
    mnv3_kernels.revert(conv)
    assert type(conv) is MobileNetV3 and "_mnv3_cache" not in conv.__dict__
    assert all(torch.equal(v, state[k]) for k, v in conv.state_dict().items())
    with torch.no_grad():
        assert torch.equal(conv(x), want)


def test_whole_model_steps_aside_for_what_its_parts_would_do(one_thread):
    conv, _, want = _pair("small")
    x = torch.randn(3, 3, 50, 45)
    with torch.no_grad():
        ref = want(x.double())

    def check(reason, expect_chain=False):
        got, stats = _run(conv, x)
        assert rel_err(got.double(), ref) < 1e-4
        if expect_chain:
            assert _chain_ran(stats), stats
        else:
            assert stats[("FusedMobileNetV3", "layer by layer", reason)] == 1, stats

    check(None, expect_chain=True)
    handle = conv.avgpool.register_forward_hook(lambda m, a, out: None)
    check("a layer has forward hooks or a replaced forward")
    handle.remove()
    handle = conv.classifier[3].register_forward_pre_hook(lambda m, a: None)
    check("layer 3: a layer has forward hooks or a replaced forward")
    handle.remove()
    conv.avgpool.backend = "reference"
    check("backend 'reference' is not the CPU kernels")
    conv.avgpool.backend = "auto"
    conv.classifier[2].train()  # dropout in train mode is not the identity
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        conv(x)
    assert mnv3_kernels.path_stats()[("FusedMobileNetV3", "layer by layer", "layer 2: training mode")] == 1
    conv.classifier[2].eval()
    check(None, expect_chain=True)
    # torchvision's forward calls _forward_impl: an instance attribute replacing it is honoured.
    conv._forward_impl = lambda t: torch.zeros(t.shape[0], 7)
    got, stats = _run(conv, x)
    assert got.shape == (3, 7) and stats == {
        ("FusedMobileNetV3", "layer by layer", "an instance attribute replaces _forward_impl"): 1}
    # Its 4-D outputs come back in the input's layout, as convert's layout hook gives other
    # converted models (this one has no hook).
    assert not conv._forward_hooks
    conv._forward_impl = lambda t: conv.features(t)
    with torch.no_grad():
        maps = conv(x)
    assert maps.dim() == 4 and maps.is_contiguous()
    del conv._forward_impl
    check(None, expect_chain=True)
    # A replaced classifier: torchvision's forward with the new one.
    conv.classifier = nn.Identity()
    got, stats = _run(conv, x)
    assert got.shape == (3, 576)
    assert stats[("FusedMobileNetV3", "layer by layer",
                  "classifier is not a FusedSequential of FusedLinear layers")] == 1


def test_whole_model_training_and_autograd_are_torchvision_forward(one_thread):
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 48, 48)
    mnv3_kernels.path_stats(reset=True)
    xg = x.clone().requires_grad_()
    y = conv(xg)
    assert ("FusedMobileNetV3", "layer by layer",
            "autograd is enabled (torch.no_grad() or torch.inference_mode() runs one chain)") in mnv3_kernels.path_stats()
    y.sum().backward()
    wg = x.double().requires_grad_()
    want(wg).sum().backward()
    assert rel_err(xg.grad.double(), wg.grad) < 1e-4
    conv.train()
    want.train()
    conv.classifier[2].p = want.classifier[2].p = 0.0  # no random dropout masks to compare
    mnv3_kernels.path_stats(reset=True)
    out = conv(x)
    assert mnv3_kernels.path_stats()[("FusedMobileNetV3", "layer by layer", "training mode")] == 1
    assert rel_err(out.double(), want(x.double())) < 1e-4


def test_a_mobilenet_subclass_keeps_its_forward(one_thread):
    from torchvision.models.mobilenetv3 import MobileNetV3

    class Mine(MobileNetV3):
        def forward(self, x):
            return super().forward(x) * 2

    model = randomize_model_bn_(Mine(_small_settings(), 1024).eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    mnv3_kernels.convert(model)
    assert type(model) is Mine
    entry = next(e for e in model.mnv3_report.entries if e.kind == "model")
    assert entry.status == "skipped" and "is not torchvision's MobileNetV3" in entry.reason
    with torch.no_grad():
        assert rel_err(model(x), want) < 1e-4


def _small_settings():
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    return _mobilenet_v3_conf("mobilenet_v3_small")[0]


def test_a_dict_modified_but_holding_the_same_objects_keeps_the_chain(one_thread):
    # The chain first compares each watched dict's modification tag; a modified dict is then
    # checked in full, and only a real change rebuilds.
    conv, layers, _ = _pair("small")
    x = torch.randn(1, 3, 48, 48)
    first, _ = _run(conv, x)
    chain = _chain(conv)
    block = conv.features[4]
    block.note = "an unrelated attribute"  # the block's __dict__ is modified
    handle = block.register_forward_hook(lambda m, a, out: None)
    handle.remove()  # its hooks dict too, and back to empty
    got, stats = _run(conv, x)
    assert _chain_ran(stats) and _chain(conv) is chain
    assert torch.equal(got, first)
    block.training = True  # a real change: rebuilt, here to the layer-by-layer path
    _, stats = _run(conv, x)
    assert not _chain_ran(stats)


def test_run_checked_serves_only_what_the_module_would(one_thread):
    # A module's fast path is one C++ call that returns None whenever the module's own checks
    # could answer otherwise; the module then takes its checked path.
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 40, 40)
    first, _ = _run(conv, x)
    chain = _chain(conv)
    with torch.inference_mode():
        assert torch.equal(chain.run_checked(x), first)
        assert chain.run_checked(x.double()) is None
        assert chain.run_checked(x[0]) is None  # 3-D
        assert chain.run_checked("x") is None
    with torch.no_grad():
        assert chain.run_checked(x) is None  # built in inference mode
    assert chain.run_checked(x) is None  # autograd on
    conv.train()
    with torch.inference_mode():
        assert chain.run_checked(x) is None
    conv.eval()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        with torch.inference_mode():
            assert chain.run_checked(x) is None
    finally:
        handle.remove()
    mnv3_kernels.refresh(conv.features[2])
    with torch.inference_mode():
        assert chain.run_checked(x) is None  # refresh() anywhere rebuilds
    got, stats = _run(conv, x)
    assert _chain_ran(stats) and torch.equal(got, first) and _chain(conv) is not chain
    # The chain holds its owner weakly: once the model is gone it serves nothing.
    chain = _chain(conv)
    del conv
    gc.collect()
    with torch.inference_mode():
        assert chain.run_checked(x) is None


# ----------------------------------------------------------------------------------------------
# Under torch.compile: a chain's owner is one mnv3::chain_owner_call
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    """Each test compiles new model objects whose forward is the same code: Dynamo keeps at most
    8 graphs per code object, so the compiled graphs go when the test ends."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _captured(model):
    """model under torch.compile(fullgraph=True) with a backend that keeps the graphs and runs
    them as captured (Inductor's code generation: test_compiled_model_sees_in_place_changes_and_copies)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return torch.compile(model, fullgraph=True, backend=capture), graphs


def _targets(graphs):
    return [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("grad_mode", [torch.no_grad, torch.inference_mode])
def test_compiled_model_is_one_chain_call(one_thread, fresh_dynamo, grad_mode):
    conv, _, want = _pair("small")
    compiled, graphs = _captured(conv)
    x = torch.randn(2, 3, 67, 45)
    with grad_mode():
        compiled(x)  # builds the chain
        mnv3_kernels.path_stats(reset=True)
        y = compiled(x)
        stats = mnv3_kernels.path_stats(reset=True)
    assert rel_err(y, want(x.double())) <= 1e-4
    assert y.shape == (2, 1000) and y.is_contiguous()
    assert [t for t in _targets(graphs) if "mnv3" in t] == ["mnv3.chain_owner_call.default"], _targets(graphs)
    assert _chain_ran(stats), stats


def test_compiled_features_return_channels_last(one_thread, fresh_dynamo):
    conv, _, want = _pair("large")
    compiled, graphs = _captured(conv.features)
    x = torch.randn(1, 3, 50, 61)
    with torch.no_grad():
        y = compiled(x)
        ref = want.features(x.double())
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 1e-4
    assert [t for t in _targets(graphs) if "mnv3" in t] == ["mnv3.chain_owner_call.default"]


def test_compiled_model_sees_in_place_changes_and_copies(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        compiled = torch.compile(conv, fullgraph=True)  # Inductor: the graph is one op
        assert rel_err(compiled(x), want(x.double())) <= 1e-4
        for m in (conv, want):
            m.classifier[3].bias.add_(1.0)
            m.features[4].block[1][1].running_var.mul_(3.0)
        assert rel_err(compiled(x), want(x.double())) <= 1e-4
        other = copy.deepcopy(conv)  # a copy is an owner of its own
        other.classifier[3].bias.sub_(2.0)
        assert rel_err(torch.compile(other, fullgraph=True)(x), want(x.double()) - 2.0) <= 1e-4
        assert rel_err(compiled(x), want(x.double())) <= 1e-4


def test_compiled_functional_call_runs_the_given_tensors(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 64, 64)
    given = {k: (v * 1.5 if k.endswith("weight") else v) for k, v in conv.state_dict(keep_vars=True).items()}
    given_64 = {k: (v.double() if v.is_floating_point() else v) for k, v in given.items()}
    with torch.no_grad():
        compiled, graphs = _captured(lambda p, x: torch.func.functional_call(conv, p, (x,)))
        y = compiled(given, x)
        assert rel_err(y, torch.func.functional_call(want, given_64, (x.double(),))) <= 1e-4
        assert rel_err(y, conv(x)) > 1e-2  # the given tensors, not the module's own
    assert "mnv3.chain_owner_call.default" in _targets(graphs)


def test_compiled_model_runs_eager_forward_for_changes_made_after_compiling(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        compiled, graphs = _captured(conv)
        compiled(x)
        conv.features[2].train()  # a layer's flag: the compiled graph does not depend on it
        ref = copy.deepcopy(conv)
        mnv3_kernels.path_stats(reset=True)
        y = compiled(x)
        stats = mnv3_kernels.path_stats(reset=True)
        assert torch.equal(y, ref(x))  # batch statistics, running stats updated as in eager mode
        assert torch.equal(conv.features[2].block[1][1].running_mean, ref.features[2].block[1][1].running_mean)
    assert any(path == "layer by layer" for (_, path, _) in stats), stats


def test_compiled_model_without_a_chain_runs_the_eager_forward(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    x = torch.randn(2, 3, 48, 48)
    conv.features[5].block[1].backend = "reference"  # a layer no chain can hold: the model runs layer by layer
    with torch.no_grad():
        compiled, graphs = _captured(conv)
        mnv3_kernels.path_stats(reset=True)
        y = compiled(x)
        stats = mnv3_kernels.path_stats(reset=True)
        assert torch.equal(y, conv(x))
    assert rel_err(y, want(x.double())) <= 1e-4
    assert "mnv3.chain_owner_call.default" in _targets(graphs)
    assert stats[("FusedMobileNetV3", "layer by layer", "layer 5: a layer's backend is not the CPU kernels")] == 1, stats


def test_compile_traces_the_layers_for_autograd_training_and_export(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    x = torch.randn(1, 3, 64, 64)
    compiled, graphs = _captured(conv)
    y = compiled(x)  # autograd records the call: the layers, traced
    assert rel_err(y.detach(), want(x.double())) <= 1e-4
    assert "mnv3.chain_owner_call.default" not in _targets(graphs)
    assert any("mnv3" in t for t in _targets(graphs))
    with torch.no_grad():
        program = torch.export.export(conv, (x,))  # a program that stands on its own
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("chain_owner_call" in t for t in targets) and any("mnv3" in t for t in targets)
    conv.train()
    graphs.clear()
    with torch.no_grad():
        compiled(torch.randn(2, 3, 64, 64))
    assert "mnv3.chain_owner_call.default" not in _targets(graphs)


def test_compiled_model_with_dynamic_shapes(one_thread, fresh_dynamo):
    conv, _, want = _pair("small")
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(conv, fullgraph=True, dynamic=True, backend=capture)
    with torch.no_grad():
        for shape in ((2, 3, 64, 48), (5, 3, 81, 47), (4, 3, 33, 9)):  # no 0, 1 or equal sizes: Dynamo specializes those
            x = torch.randn(shape)
            assert rel_err(compiled(x), want(x.double())) <= 1e-4
    assert len(graphs) == 1 and _targets(graphs).count("mnv3.chain_owner_call.default") == 1


def test_compiled_timm_model_calls_its_stages(one_thread, fresh_dynamo):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = randomize_model_bn_(timm.create_model("mobilenetv3_small_050", pretrained=False)).eval()
    want = copy.deepcopy(model).double()
    conv = mnv3_kernels.convert(model)
    stages = [m for m in conv.blocks.children() if isinstance(m, M.FusedSequential)]
    compiled, graphs = _captured(conv)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(compiled(x), want(x.double())) <= 1e-4
    # Each block stage is one call; the stem, head and classifier are traced layer by layer.
    assert stages and _targets(graphs).count("mnv3.chain_owner_call.default") == len(stages)
