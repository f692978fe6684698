"""convert(): torchvision and timm MobileNetV3 models (and the MobileNetV2 family: MobileNetV2,
MNASNet, EfficientNet-Lite) converted in place must give the original's outputs, keep their
state_dict, report what was replaced, and leave alone what cannot be served exactly."""
import copy
import functools
import pickle

import pytest
import torch
import torch.nn as nn

import mnv3_kernels
from mnv3_kernels import modules as M
from mnv3_kernels import ops
from mnv3_kernels.convert import ConversionReport, conversion_report
from mnv3_kernels.layers import LARGE, SMALL

from conftest import random_bn_, randomize_model_bn_, rel_err

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
from torchvision.ops.misc import SqueezeExcitation  # noqa: E402
from timm.layers.conv2d_same import Conv2dSame  # noqa: E402
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite  # noqa: E402

BACKENDS = [b for b in ("cpu", "reference") if b in ops.backends()]
FORMATS = [torch.contiguous_format, torch.channels_last]
pytestmark = [pytest.mark.usefixtures("one_thread")]
SIZE = 64


def outputs(y):
    """Model outputs as a list of tensors (classification, segmentation dict, feature list)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if isinstance(y, dict):
        return [y[k] for k in sorted(y)]
    return list(y)


def assert_close(got, want, tol=1e-4):
    got, want = outputs(got), outputs(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) <= tol


MODELS = {
    "tv_large": lambda: torchvision.models.mobilenet_v3_large(num_classes=10),
    "tv_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
    "tv_lraspp": lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3),
    "tv_deeplabv3": lambda: torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3),
    **{name: functools.partial(timm.create_model, name, num_classes=10) for name in (
        "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv3_large_075",
        "mobilenetv3_small_050", "mobilenetv3_rw", "tf_mobilenetv3_large_100")},
    "timm_features_only": lambda: timm.create_model("mobilenetv3_large_100", features_only=True),
    # features taken by hooks on the blocks' projections: those stay unfused
    "timm_features_expansion": lambda: timm.create_model("mobilenetv3_large_100", features_only=True,
                                                         feature_location="expansion"),
    # The MobileNetV2 family: depthwise and 1x1 conv + BN + ReLU6 (MNASNet: ReLU) layers.
    "tv_mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "tv_mnasnet0_5": lambda: torchvision.models.mnasnet0_5(num_classes=10),
    "tv_mnasnet1_0": lambda: torchvision.models.mnasnet1_0(num_classes=10),
    **{name: functools.partial(timm.create_model, name, num_classes=10) for name in (
        "mobilenetv2_100", "efficientnet_lite0")},
    "timm_lite_features_only": lambda: timm.create_model("efficientnet_lite0", features_only=True),
}
MOBILENET_V2_FAMILY = ["tv_mobilenet_v2", "tv_mnasnet0_5", "tv_mnasnet1_0", "mobilenetv2_100", "efficientnet_lite0"]


def make(name, seed=0):
    torch.manual_seed(seed)
    return randomize_model_bn_(MODELS[name]()).eval()


def expected(model):
    """Counts derived from the original structure, independently of convert(): every depthwise
    conv of these models is followed by its BN, and fused unless it is timm's TF-'same'
    Conv2dSame."""
    dw = dw_skipped = se = se_skipped = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
            if isinstance(m, Conv2dSame):
                dw_skipped += 1
            else:
                dw += 1
        if isinstance(m, SqueezeExcitation):
            ok = type(m.scale_activation) is nn.Hardsigmoid and type(m.activation) is nn.ReLU
            se, se_skipped = se + ok, se_skipped + (not ok)
        if isinstance(m, SqueezeExcite):
            ok = type(m.gate) is nn.Hardsigmoid and type(m.act1) is nn.ReLU
            se, se_skipped = se + ok, se_skipped + (not ok)
    return dw, dw_skipped, se, se_skipped


def fused_modules(model):
    return [m for m in model.modules()
            if isinstance(m, (M.FusedDepthwiseConvBNAct, M.DepthwiseConvBNActHead, M.FusedSqueezeExcite))]


# ----------------------------------------------------------------------------------------------
# Whole models
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_original(name):
    model = make(name)
    ref = copy.deepcopy(model)
    want_dw, want_skipped, want_se, want_se_skipped = expected(ref)
    before = model.state_dict()

    assert mnv3_kernels.convert(model, backend=BACKENDS[0]) is model
    report = model.mnv3_report
    assert isinstance(report, ConversionReport) and conversion_report(model) is report
    counts = report.counts()
    assert counts["dwconv"]["fused"] == want_dw > 0
    assert counts["dwconv"]["skipped"] == want_skipped
    assert counts["se"]["fused"] == want_se
    assert counts["se"]["skipped"] == want_se_skipped
    assert len(fused_modules(model)) == want_dw + want_se
    for e in report.skipped("dwconv"):
        assert "Conv2dSame" in e.reason
    for e in report.skipped("se"):
        assert "inner activation Hardswish" in e.reason  # mobilenetv3_rw's late SE blocks
    text = str(report)
    assert f"{want_dw} fused, {want_skipped} skipped" in text

    after = model.state_dict()
    assert list(after) == list(before)
    assert all(after[k] is before[k] or torch.equal(after[k], before[k]) for k in before)

    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        wants = [ref(x.to(memory_format=fmt)) for fmt in FORMATS]
        for backend in BACKENDS:
            mnv3_kernels.convert(model, backend=backend)  # re-converting only sets the backend
            assert model.mnv3_report.counts()["dwconv"]["already fused"] == want_dw
            assert all(m.backend == backend for m in fused_modules(model))
            for fmt, want in zip(FORMATS, wants):
                assert_close(model(x.to(memory_format=fmt)), want)


@pytest.mark.parametrize("name", MOBILENET_V2_FAMILY)
def test_mobilenet_v2_family_every_conv_fused(name):
    """Every conv of these models (stem, 1x1 expand/project/head, depthwise) is followed by its
    BN and fused; outputs match the float64 original at an odd size, batch 3 and 0, NCHW and
    channels_last, every call on the fused path."""
    model = make(name)
    ref = copy.deepcopy(model).double()
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    mnv3_kernels.convert(model)
    report = model.mnv3_report
    assert report.skipped() == []
    counts = report.counts()
    n_dw = sum(c.groups > 1 for c in convs)
    n_pw = sum(c.groups == 1 and tuple(c.kernel_size) == (1, 1) for c in convs)
    assert n_dw >= 16 and n_pw >= 30
    assert (counts["dwconv"]["fused"], counts["pwconv"]["fused"], counts["conv"]["fused"]) == (n_dw, n_pw, 1)
    assert n_dw + n_pw + 1 == len(convs)  # the stem is the only other conv
    want_act = "relu" if "mnasnet" in name else "relu6"
    assert {e.shape.rsplit("act=", 1)[1] for e in report.fused() if e.kind not in ("linear", "block", "sequence")} == {
        want_act, "none"}
    mnv3_kernels.path_stats(reset=True)
    with torch.no_grad():
        for batch in (3, 0):
            x = torch.randn(batch, 3, 67, 67)
            want = ref(x.double())
            for fmt in FORMATS:
                got = model(x.to(memory_format=fmt))
                assert got.shape == want.shape and got.dtype == torch.float32
                if batch:
                    assert rel_err(got.double(), want) <= 1e-4
    assert {path for _, path, _ in mnv3_kernels.path_stats(reset=True)} == (
        {"fused"} if "cpu" in ops.backends() else {"reference"})


def test_torchvision_counts_match_the_paper_tables():
    for name, table in (("tv_large", LARGE), ("tv_small", SMALL)):
        model = mnv3_kernels.convert(MODELS[name]())
        counts = model.mnv3_report.counts()
        assert counts["dwconv"]["fused"] == sum(layer.repeat for layer in table)
        assert counts["se"]["fused"] == sum(layer.repeat for layer in table if layer.se)
        shapes = [e.shape for e in model.mnv3_report.fused("dwconv")]
        expanded = [l for l in table for _ in range(l.repeat)]
        assert [s.split()[0] for s in shapes] == [f"C={l.channels}" for l in expanded]
        assert all(f"act={l.activation}" in s for s, l in zip(shapes, expanded))


def test_deeplab_dilation_is_served():
    model = mnv3_kernels.convert(make("tv_deeplabv3"))
    dilated = [e for e in model.mnv3_report.fused("dwconv") if "dilation=2" in e.shape]
    assert len(dilated) >= 3


def test_load_state_dict_after_conversion_takes_effect():
    for name in ("tv_small", "mobilenetv3_small_100"):
        model = mnv3_kernels.convert(make(name, seed=0))
        other = make(name, seed=1)
        x = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            model(x)  # fill the folded-weight caches
            model.load_state_dict(other.state_dict())
            assert_close(model(x), other(x))


def test_in_place_buffer_update_refreshes_cache():
    for name in ("tv_small", "mobilenetv3_small_100"):
        model = make(name)
        ref = copy.deepcopy(model)
        mnv3_kernels.convert(model)
        x = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            assert_close(model(x), ref(x))
            bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
            ref_bns = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
            for i in (1, 4, len(bns) // 2):
                bns[i].running_var.mul_(4.0)
                ref_bns[i].running_var.mul_(4.0)
                bns[i].weight.add_(0.5)
                ref_bns[i].weight.add_(0.5)
            assert_close(model(x), ref(x))


@pytest.mark.parametrize("name", ["tv_small", "mobilenetv3_small_100", "tv_mobilenet_v2", "tv_mnasnet0_5",
                                  "efficientnet_lite0"])
def test_train_mode_is_exact(name):
    model = make(name).train()
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    for step in range(2):
        x = torch.randn(4, 3, SIZE, SIZE)
        torch.manual_seed(step)  # same dropout masks
        ya = model(x)
        torch.manual_seed(step)
        yb = ref(x)
        assert torch.equal(ya, yb)
        ya.square().mean().backward()
        yb.square().mean().backward()
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, ref_params[n].grad), n
    ref_state = ref.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    # Back to eval: the updated running statistics are used by the fused path.
    model.eval()
    ref.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, SIZE, SIZE)
        assert_close(model(x), ref(x))


def test_torch_compile_fullgraph_converted_model():
    model = make("tv_small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    # Dynamo traces the whole network in one graph (fake kernels included); the captured graph
    # then runs eagerly. Inductor's code generation for the rest of the network would take
    # minutes on 2 cores; Inductor itself is exercised on the fused modules in test_modules.py.
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=capture)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_close(compiled(x), ref.double()(x.double()))  # the original network in float64
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert any("mnv3" in t for t in targets), targets


@pytest.mark.parametrize("name,aa", [("mobilenetv3_small_050", "avg"), ("mobilenetv3_large_100", "blurpc")])
def test_timm_anti_aliased_blocks_are_fused(name, aa):
    # timm runs conv_dw -> bn -> aa: the blur comes after the fused part.
    torch.manual_seed(0)
    model = randomize_model_bn_(timm.create_model(name, pretrained=False, num_classes=10, aa_layer=aa)).eval()
    blocks = [m for m in model.modules() if not isinstance(getattr(m, "aa", nn.Identity()), nn.Identity)]
    assert blocks  # the model really has anti-aliased blocks
    ref = copy.deepcopy(model)
    report = mnv3_kernels.convert(model).mnv3_report
    assert report.skipped("dwconv") == []
    assert all(isinstance(b.conv_dw, M.DepthwiseConvBNActHead) for b in blocks)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert_close(model(x), ref.double()(x.double()))


def test_converted_model_under_autocast_runs_fused():
    model = make("tv_small")
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    x = torch.randn(2, 3, SIZE, SIZE)
    mnv3_kernels.path_stats(reset=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x)
        want = ref(x)
    stats = mnv3_kernels.path_stats(reset=True)
    # The classifier's Linear runs as nn.Linear does under autocast (in bfloat16), everything
    # else fused.
    assert {(path, detail) for (cls, path, detail) in stats if cls == "FusedLinear"} == {("reference", "autocast")}
    # So the classifier's chain steps aside; the features' chain runs.
    assert ("FusedSequential", "layer by layer", "layer 0: autocast") in stats
    paths = {path for (cls, path, detail) in stats if cls != "FusedLinear" and detail != "layer 0: autocast"}
    assert paths == ({"fused"} if "cpu" in ops.backends() else {"reference"})
    assert got.dtype == want.dtype == torch.bfloat16  # the classifier's Linear runs in bfloat16
    assert rel_err(got.float(), want.float()) <= 0.1  # both bfloat16 networks


def test_deepcopy_and_pickle_converted_model():
    model = mnv3_kernels.convert(make("mobilenetv3_large_075"))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
        for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert torch.equal(copied(x), want)
            assert str(copied.mnv3_report) == str(model.mnv3_report)


# ----------------------------------------------------------------------------------------------
# What cannot be served exactly is left alone
# ----------------------------------------------------------------------------------------------
def dw(c, act=None, **conv_kw):
    kw = dict(kernel_size=3, padding=1, groups=c, bias=False)
    kw.update(conv_kw)
    bn = nn.BatchNorm2d(c, track_running_stats=kw.pop("track_running_stats", True))
    layers = [nn.Conv2d(c, c, **kw), bn] + ([act] if act is not None else [])
    return nn.Sequential(*layers)


class Mixed(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.good = dw(c, nn.ReLU())
        self.reflect = dw(c, nn.ReLU(), padding_mode="reflect")
        self.grouped = dw(c, nn.Hardswish(), groups=4)
        self.no_stats = dw(c, nn.ReLU(), track_running_stats=False)
        self.relu6 = dw(c, nn.ReLU6())
        self.hardtanh06 = dw(c, nn.Hardtanh(0.0, 6.0))  # F.relu6 itself
        self.hardtanh = dw(c, nn.Hardtanh(-1.0, 1.0))
        # A flat Sequential of runs: 1x1 + BN + ReLU6; depthwise + BN, SiLU left as it is;
        # grouped (not depthwise) + BN skipped; 1x1 + BN.
        self.flat = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.SiLU(),
                                  nn.Conv2d(c, c, 3, padding=1, groups=4), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.bare = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.se_good = SqueezeExcitation(c, 8, scale_activation=nn.Hardsigmoid)
        self.se_sigmoid = SqueezeExcitation(c, 8)  # torchvision's default gate: Sigmoid
        self.ir_sigmoid = InvertedResidual(
            c, c, act_layer=nn.ReLU, se_layer=functools.partial(SqueezeExcite, gate_layer=nn.Sigmoid))
        self.ir_silu = InvertedResidual(
            c, c, act_layer=nn.SiLU, se_layer=functools.partial(SqueezeExcite, gate_layer=nn.Hardsigmoid))
        self.ir_same = InvertedResidual(c, c, stride=2, pad_type="same")
        self.ir_ok = InvertedResidual(
            c, c, act_layer=nn.ReLU, se_layer=functools.partial(SqueezeExcite, gate_layer=nn.Hardsigmoid))

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


def test_unservable_parts_are_left_alone():
    model = Mixed().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
            random_bn_(m)
    ref = copy.deepcopy(model)
    mnv3_kernels.convert(model)
    report = model.mnv3_report
    fused = {e.path for e in report.fused()}
    timm_pw = {f"{b}.{c}" for b in ("ir_sigmoid", "ir_same", "ir_ok") for c in ("conv_pw", "conv_pwl")}
    # Each layer that can be served is fused; a block runs as a whole only when all of it is.
    assert fused == {"good", "relu6", "hardtanh06", "flat.0", "flat.3", "flat.9", "se_good",
                     "ir_sigmoid.conv_dw", "ir_ok.conv_dw", "ir_ok.se", "ir_silu.conv_pwl", "ir_ok"} | timm_pw
    assert model.relu6.activation == model.hardtanh06.activation == "relu6"
    skipped = {e.path: e.reason for e in report.skipped()}
    assert "padding_mode" in skipped["reflect"]
    assert "not depthwise" in skipped["grouped"]
    assert "running statistics" in skipped["no_stats"]
    assert "Hardtanh(-1, 1)" in skipped["hardtanh"]
    assert "not depthwise" in skipped["flat.6"]
    assert "SiLU" in skipped["ir_silu.conv_pw"]
    # The flat Sequential keeps its children's names; the fused activation's slot passes through.
    assert [type(m) for m in model.flat] == [
        M.PointwiseConvBNActHead, M.BatchNormActTail, M.ActivationSlot, M.DepthwiseConvBNActHead,
        M.BatchNormActTail, nn.SiLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, M.PointwiseConvBNActHead,
        M.BatchNormActTail]
    assert [e.shape.rsplit("act=", 1)[1] for e in report.entries if e.path.startswith("flat.")] == [
        "relu6", "none", "relu", "none"]
    assert "not part of a recognized" in skipped["bare"]
    assert "Sigmoid" in skipped["se_sigmoid"]
    assert "Sigmoid" in skipped["ir_sigmoid.se"]
    assert "SiLU" in skipped["ir_silu.conv_dw"]
    assert "SiLU" in skipped["ir_silu.se"]
    assert "Conv2dSame" in skipped["ir_same.conv_dw"]
    assert "se layer 'se' is SqueezeExcite" in skipped["ir_sigmoid"]
    assert "expand layer 'conv_pw' is Conv2d" in skipped["ir_silu"]
    assert "dw layer 'conv_dw' is Conv2dSame" in skipped["ir_same"]
    assert isinstance(model.ir_ok, M.FusedInvertedResidual)
    for path in ("reflect", "grouped", "no_stats", "hardtanh", "se_sigmoid", "ir_silu", "flat.6", "flat.7", "flat.8"):
        assert type(model.get_submodule(path)) is type(ref.get_submodule(path))
    assert type(model.ir_same.conv_dw) is Conv2dSame
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 16, 12, 12)
    for backend in BACKENDS:
        mnv3_kernels.convert(model, backend=backend)
        with torch.no_grad():
            for fmt in FORMATS:
                assert_close(model(x.to(memory_format=fmt)), ref(x.to(memory_format=fmt)))


def test_report_helpers():
    model = mnv3_kernels.convert(make("mobilenetv3_small_050"))
    report = model.mnv3_report
    assert mnv3_kernels.conversion_report(model) is report
    del model.mnv3_report
    rebuilt = conversion_report(model)
    assert {e.kind for e in rebuilt.fused()} == {"conv", "dwconv", "pwconv", "se", "block", "linear", "sequence"}
    assert sorted((e.path, e.kind) for e in rebuilt.fused()) == sorted((e.path, e.kind) for e in report.fused())
    assert "squeeze-excite" in str(rebuilt)


def test_bad_arguments():
    model = torchvision.models.mobilenet_v3_small()
    with pytest.raises(ValueError, match="backend"):
        mnv3_kernels.convert(model, backend="nope")
    with pytest.raises(TypeError, match="nn.Module"):
        mnv3_kernels.convert("not a model")
    if "cuda" not in ops.backends():
        with pytest.raises(RuntimeError, match="not available"):
            mnv3_kernels.convert(model, backend="cuda")
    # Nothing was changed by the failed calls.
    assert not fused_modules(model)
