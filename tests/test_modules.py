"""Fused modules: numerics against the unfused originals, state_dict preservation, the folded
weight cache, training mode, backend switching, copying, and torch.compile."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

import mnv3_kernels
from mnv3_kernels import modules as M
from mnv3_kernels import ops

from conftest import random_bn_, rel_err

BACKENDS = [b for b in ("cpu", "reference") if b in ops.backends()]
FORMATS = [torch.contiguous_format, torch.channels_last]
pytestmark = [pytest.mark.usefixtures("one_thread")]


def make_dw(c=24, k=3, stride=1, dilation=1, act="relu", bias=False, affine=True):
    conv = nn.Conv2d(c, c, k, stride, dilation * (k - 1) // 2, dilation, groups=c, bias=bias)
    bn = random_bn_(nn.BatchNorm2d(c, eps=1e-3, affine=affine))
    acts = {"relu": nn.ReLU(inplace=True), "hardswish": nn.Hardswish(), "identity": nn.Identity(),
            "relu6": nn.ReLU6(inplace=True), "hardtanh06": nn.Hardtanh(0.0, 6.0), None: None}
    return conv, bn, acts[act]


class BNAct(nn.BatchNorm2d):
    """A BN + activation module in the style of timm's BatchNormAct2d."""

    def __init__(self, c, act):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class SiblingBlock(nn.Module):
    """conv_dw and bn as siblings, called adjacently (as in timm's blocks)."""

    def __init__(self, c=16, k=3, stride=1, act=None):
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
        self.bn = random_bn_(BNAct(c, act if act is not None else nn.Hardswish()))
        self.pw = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.pw(self.bn(self.conv_dw(x)))


def fuse_block(block, backend="auto"):
    head, tail = M.fused_conv_bn_act_pair(block.conv_dw, block.bn, act=block.bn.act, drop=block.bn.drop,
                                          backend=backend)
    block.conv_dw, block.bn = head, tail
    return block


def make_se(c=32, r=8, gate=None):
    fc1, fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)
    with torch.no_grad():
        fc2.bias.uniform_(-2, 2)
    return fc1, fc2, nn.ReLU(), gate if gate is not None else nn.Hardsigmoid()


class SE(nn.Module):
    def __init__(self, c=32, r=8):
        super().__init__()
        self.conv_reduce, self.conv_expand, self.act1, self.gate = make_se(c, r)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.conv_expand(self.act1(self.conv_reduce(s))))


# ----------------------------------------------------------------------------------------------
# FusedDepthwiseConvBNAct
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cfg", [
    dict(k=3, stride=1, act="relu"),
    dict(k=5, stride=2, act="hardswish"),
    dict(k=3, stride=1, dilation=2, act="identity", bias=True),
    dict(k=5, stride=1, act=None, affine=False),
    dict(c=13, k=3, stride=2, act="hardswish", bias=True),
    dict(k=3, stride=2, act="relu6"),
    dict(c=13, k=5, stride=1, act="hardtanh06", bias=True),
])
def test_sequential_eval_matches_original(backend, cfg):
    orig = nn.Sequential(*[m for m in make_dw(**cfg) if m is not None]).eval()
    ref = copy.deepcopy(orig)
    fused = M.FusedDepthwiseConvBNAct.from_sequential(orig, backend=backend)
    assert fused.training is False
    c = orig[0].in_channels
    for fmt in FORMATS:
        x = torch.randn(2, c, 17, 19).to(memory_format=fmt)
        with torch.no_grad():
            want = ref(x)
            got = fused(x)
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-4


def test_sequential_state_dict_and_structure():
    conv, bn, act = make_dw()
    seq = nn.Sequential(conv, bn, act)
    before = seq.state_dict()
    fused = M.FusedDepthwiseConvBNAct(conv, bn, act)
    after = fused.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert fused[0] is conv and fused[1] is bn and fused[2] is act and len(fused) == 3
    assert fused.out_channels == conv.out_channels
    text = repr(fused)
    assert "C=24" in text and "backend='auto'" in text and "activation=relu" in text


def test_sequential_load_state_dict_takes_effect():
    fused = M.FusedDepthwiseConvBNAct(*make_dw()).eval()
    other = nn.Sequential(*make_dw()).eval()
    x = torch.randn(2, 24, 12, 12)
    with torch.no_grad():
        fused(x)  # fill the cache with the old weights
        fused.load_state_dict(other.state_dict())
        assert rel_err(fused(x), other(x)) <= 1e-4


def test_cache_is_reused_and_refreshed():
    fused = M.FusedDepthwiseConvBNAct(*make_dw(act="hardswish")).eval()
    ref = copy.deepcopy(nn.Sequential(*fused))
    conv, bn = fused[0], fused[1]
    x = torch.randn(2, 24, 10, 10)
    with torch.no_grad():
        w1, _ = fused._folded(conv.weight, conv.bias, bn)
        w2, _ = fused._folded(conv.weight, conv.bias, bn)
        assert w1 is w2  # cached
        fused(x)
        # In-place buffer and parameter updates, as an optimizer or a user would do them.
        bn.running_var.mul_(3.0)
        ref[1].running_var.mul_(3.0)
        assert rel_err(fused(x), ref(x)) <= 1e-4
        bn.weight.add_(0.25)
        ref[1].weight.add_(0.25)
        conv.weight.mul_(-1)
        ref[0].weight.mul_(-1)
        assert rel_err(fused(x), ref(x)) <= 1e-4
        # Replacing a tensor (same version counter) is noticed too.
        bn.running_mean = torch.full_like(bn.running_mean, 0.3)
        ref[1].running_mean = torch.full_like(bn.running_mean, 0.3)
        assert rel_err(fused(x), ref(x)) <= 1e-4
        # New storage under the same Parameter object (`.data =`, as Module.to() does): the
        # version counter does not move, the storage address does.
        version = conv.weight._version
        conv.weight.data = conv.weight.data * 0.5
        ref[0].weight.data = ref[0].weight.data * 0.5
        assert conv.weight._version == version
        assert rel_err(fused(x), ref(x)) <= 1e-4
        bn.eps = 0.5
        ref[1].eps = 0.5
        assert rel_err(fused(x), ref(x)) <= 1e-4
        # dtype change: the fold follows (float64 is served by the reference path).
        fused.double()
        ref.double()
        assert rel_err(fused(x.double()), ref(x.double())) <= 1e-6  # fold_bn computes in fp32


def test_eval_gradients_flow_through_fold():
    fused = M.FusedDepthwiseConvBNAct(*make_dw(act="hardswish", bias=True)).eval()
    ref = copy.deepcopy(nn.Sequential(*fused))
    x = torch.randn(2, 24, 9, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused(xa).square().sum().backward()
    ref(xb).square().sum().backward()
    assert rel_err(xa.grad, xb.grad) <= 1e-4
    for (name, p), q in zip(fused.named_parameters(), ref.parameters()):
        assert rel_err(p.grad, q.grad) <= 1e-4, name
    # A second backward through a fresh forward works (nothing stale is cached with a graph).
    fused(xa).sum().backward()


def test_sequential_train_mode_is_exact():
    conv, bn, act = make_dw(act="hardswish", bias=True)
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn), copy.deepcopy(act)).train()
    fused = M.FusedDepthwiseConvBNAct(conv, bn, act).train()
    for _ in range(2):
        x = torch.randn(4, 24, 8, 8)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = fused(xa), ref(xb)
        assert torch.equal(ya, yb)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert torch.equal(xa.grad, xb.grad)
    for k, v in ref.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k
    for p, q in zip(fused.parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad)
    # Frozen BN inside a training model: BN eval -> fused with fresh fold, gradients flow.
    fused.train()
    fused[1].eval()
    ref.train()
    ref[1].eval()
    x = torch.randn(2, 24, 8, 8)
    assert rel_err(fused(x), ref(x)) <= 1e-4


class MyConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) + 1.0


@pytest.mark.parametrize("build, reason", [
    (lambda: (nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect"), nn.BatchNorm2d(8), None),
     "padding_mode"),
    (lambda: (nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), None), "not depthwise"),
    (lambda: (nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16), None), "not depthwise"),
    (lambda: (nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8, track_running_stats=False), None),
     "running statistics"),
    (lambda: (nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardtanh(-1.0, 1.0)),
     "activation Hardtanh(-1, 1) is not"),
    (lambda: (nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.SiLU()), "activation"),
    (lambda: (MyConv(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), None), "overrides"),
    (lambda: (nn.Conv2d(8, 8, 4, padding="same", groups=8), nn.BatchNorm2d(8), None), "padding"),
])
def test_unsupported_depthwise_is_refused(build, reason):
    conv, bn, act = build()
    assert reason in M.depthwise_unsupported_reason(conv, bn, act)
    with pytest.raises(ValueError, match="cannot fuse"):
        M.FusedDepthwiseConvBNAct(conv, bn, act)


def test_same_padding_string_is_served():
    conv, bn, act = make_dw(k=5)
    conv.padding = "same"
    conv._reversed_padding_repeated_twice = [2, 2, 2, 2]
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn), copy.deepcopy(act)).eval()
    fused = M.FusedDepthwiseConvBNAct(conv, bn, act).eval()
    x = torch.randn(2, 24, 11, 11)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) <= 1e-4


def test_backend_attribute():
    fused = M.FusedDepthwiseConvBNAct(*make_dw()).eval()
    x = torch.randn(1, 24, 8, 8)
    with torch.no_grad():
        outs = []
        for b in BACKENDS + ["auto"]:
            fused.backend = b
            assert fused.backend == b and f"backend={b!r}" in repr(fused)
            outs.append(fused(x))
    assert all(rel_err(o, outs[-1]) <= 1e-4 for o in outs)
    with pytest.raises(ValueError, match="backend"):
        fused.backend = "nope"
    if "cuda" not in ops.backends():
        with pytest.raises(RuntimeError, match="not available"):
            fused.backend = "cuda"


# ----------------------------------------------------------------------------------------------
# Hardswish / Hardsigmoid drop-ins
# ----------------------------------------------------------------------------------------------
_HARD = [(M.Hardswish, nn.Hardswish), (M.Hardsigmoid, nn.Hardsigmoid)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ours,theirs", _HARD, ids=["hardswish", "hardsigmoid"])
@pytest.mark.parametrize("inplace", [False, True])
def test_hard_activation_modules_match_torch(backend, ours, theirs, inplace):
    x = torch.randn(2, 16, 9, 9) * 4
    want = theirs()(x)
    for fmt in FORMATS:
        xi = x.clone(memory_format=fmt)
        before = xi.clone()
        with torch.no_grad():
            got = ours(inplace, backend=backend)(xi)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        # In place exactly when asked, like the torch modules.
        assert (got.data_ptr() == xi.data_ptr()) == inplace
        assert torch.equal(xi, got if inplace else before)
        assert got.is_contiguous(memory_format=fmt)
    assert f"inplace={inplace}" in repr(ours(inplace))


@pytest.mark.parametrize("ours,theirs", _HARD, ids=["hardswish", "hardsigmoid"])
def test_hard_activation_modules_train_with_gradients(ours, theirs):
    # inplace=True with a tracked input: same values and gradients as the torch module.
    x = (torch.randn(3, 8, 6, 6) * 4).requires_grad_()
    g = torch.randn(3, 8, 6, 6)
    (got,) = torch.autograd.grad(ours(inplace=True)(x * 1.5), x, g)
    (want,) = torch.autograd.grad(theirs(inplace=True)(x * 1.5), x, g)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_hard_activation_module_backend_is_checked():
    with pytest.raises(ValueError, match="backend"):
        M.Hardswish(backend="nope")


# ----------------------------------------------------------------------------------------------
# Head / tail pair
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_eval_matches_and_keeps_state_dict(backend):
    block = SiblingBlock(act=nn.ReLU(inplace=True)).eval()
    ref = copy.deepcopy(block)
    before = block.state_dict()
    params = {n: p for n, p in block.named_parameters()}
    fuse_block(block, backend)
    after = block.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in block.named_parameters())
    assert isinstance(block.conv_dw, nn.Conv2d) and isinstance(block.bn, nn.BatchNorm2d)
    assert block.conv_dw.tail is block.bn
    assert "C=16" in repr(block.conv_dw) and f"backend={backend!r}" in repr(block.conv_dw)
    for fmt in FORMATS:
        x = torch.randn(2, 16, 14, 14).to(memory_format=fmt)
        with torch.no_grad():
            assert rel_err(block(x), ref(x)) <= 1e-4
    # load_state_dict (in place and assign=True) reaches the fused path.
    other = SiblingBlock(act=nn.ReLU()).eval()
    x = torch.randn(2, 16, 14, 14)
    with torch.no_grad():
        block.load_state_dict(other.state_dict())
        assert rel_err(block(x), other(x)) <= 1e-4
        other2 = SiblingBlock(act=nn.ReLU()).eval()
        block.load_state_dict(other2.state_dict(), assign=True)
        assert rel_err(block(x), other2(x)) <= 1e-4
        block.bn.running_var.mul_(2.0)
        other2.bn.running_var.mul_(2.0)
        assert rel_err(block(x), other2(x)) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["pointwise", "dense"])
def test_pair_of_each_conv_kind_in_a_flat_sequential(backend, kind):
    # conv -> BN -> ReLU6 -> conv as siblings of one Sequential (MNASNet's layout): the head
    # (chosen by the conv's kind), the tail (taking the activation over) and the slot.
    cin = 16 if kind == "pointwise" else 3
    conv = nn.Conv2d(cin, 24, 1, bias=True) if kind == "pointwise" else nn.Conv2d(cin, 24, 3, 2, 1, bias=False)
    seq = nn.Sequential(conv, random_bn_(nn.BatchNorm2d(24)), nn.ReLU6(inplace=True), nn.Conv2d(24, 8, 1)).eval()
    ref = copy.deepcopy(seq)
    before = seq.state_dict()
    head, tail = M.fused_conv_bn_act_pair(seq[0], seq[1], act=seq[2], backend=backend)
    assert type(head) is M.head_class(conv) is {"pointwise": M.PointwiseConvBNActHead,
                                                 "dense": M.DenseConvBNActHead}[kind]
    assert head.activation == "relu6" and tail.act is seq[2]
    seq[0], seq[1], seq[2] = head, tail, M.ActivationSlot()
    assert list(seq.state_dict()) == list(before)
    assert all(seq.state_dict()[k] is v or torch.equal(seq.state_dict()[k], v) for k, v in before.items())
    x = torch.randn(2, cin, 13, 11) * 3
    for fmt in FORMATS:
        with torch.no_grad():  # the packed kernels
            assert rel_err(seq(x.to(memory_format=fmt)), ref(x.to(memory_format=fmt))) <= 1e-4
    xg, xr = (x.clone().requires_grad_() for _ in range(2))  # the autograd path
    got, want = seq(xg), ref(xr)
    assert rel_err(got, want) <= 1e-4
    got.square().sum().backward()
    want.square().sum().backward()
    assert rel_err(xg.grad, xr.grad) <= 1e-4
    assert rel_err(head.weight.grad, ref[0].weight.grad) <= 1e-4
    seq.train()
    ref.train()
    assert torch.equal(seq(x), ref(x))  # train mode: the original modules, bit for bit
    assert torch.equal(tail.running_mean, ref[1].running_mean)


def test_pair_train_mode_is_exact():
    block = SiblingBlock().train()
    ref = copy.deepcopy(block)
    fuse_block(block)
    for _ in range(2):
        x = torch.randn(4, 16, 8, 8)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = block(xa), ref(xb)
        assert torch.equal(ya, yb)
        ya.sum().backward()
        yb.sum().backward()
        assert torch.equal(xa.grad, xb.grad)
    for k, v in ref.state_dict().items():
        assert torch.equal(block.state_dict()[k], v), k
    for (n, p), q in zip(block.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), n
    # Switching back to eval uses the updated running statistics.
    block.eval()
    ref.eval()
    with torch.no_grad():
        x = torch.randn(2, 16, 8, 8)
        assert rel_err(block(x), ref(x)) <= 1e-4


def test_pair_float64():
    block = SiblingBlock().eval()
    ref = copy.deepcopy(block)
    fuse_block(block)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        # float64 is no fused backend's dtype: "auto" serves it with the reference path.
        block.double()
        ref.double()
        assert rel_err(block(x.double()), ref(x.double())) <= 1e-6  # fold_bn computes in fp32


class ConvThenAct(nn.Module):
    """A 1x1 conv with a bias, an identity, then the activation (timm's classifier head)."""

    def __init__(self):
        super().__init__()
        self.conv_head = nn.Conv2d(48, 80, 1)
        self.norm_head = nn.Identity()
        self.act2 = nn.Hardswish()

    def forward(self, x):
        return self.act2(self.norm_head(self.conv_head(x)))


def test_pair_without_bn_pairs_the_conv_with_its_activation():
    block = ConvThenAct().eval()
    ref = copy.deepcopy(block)
    block.conv_head, block.act2 = M.fused_conv_bn_act_pair(block.conv_head, None, act=block.act2)
    assert isinstance(block.conv_head, M.PointwiseConvBNActHead) and isinstance(block.act2, M.ActivationTail)
    assert list(block.state_dict()) == list(ref.state_dict())
    mnv3_kernels.path_stats(reset=True)
    for shape in [(1, 48, 1, 1), (3, 48, 5, 7)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert rel_err(block(x).double(), copy.deepcopy(ref).double()(x.double())) <= 1e-5
            block.conv_head.weight.mul_(-0.5)  # in place: the packed weights follow
            ref.conv_head.weight.mul_(-0.5)
            assert rel_err(block(x), ref(x)) <= 1e-5
    assert {p for (name, p, _) in mnv3_kernels.path_stats() if name == "PointwiseConvBNActHead"} == {
        "fused" if "cpu" in ops.backends() else "reference"}
    x = torch.randn(2, 48, 3, 3, requires_grad=True)  # eval with autograd: gradients of the fused op
    got = torch.autograd.grad(block(x).sum(), (x, block.conv_head.weight))
    want = torch.autograd.grad(ref(x).sum(), (x, ref.conv_head.weight))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    block.train()
    ref.train()
    assert torch.equal(block(x), ref(x))  # the plain conv, then the activation module
    with pytest.raises(ValueError, match="SiLU"):
        M.fused_conv_bn_act_pair(nn.Conv2d(4, 4, 1), None, act=nn.SiLU())


# ----------------------------------------------------------------------------------------------
# Squeeze-excite
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_se_wrap_matches_and_keeps_state_dict(backend):
    se = SE().eval()
    ref = copy.deepcopy(se)
    before = se.state_dict()
    fused = M.FusedSqueezeExcite.wrap(se, fc1="conv_reduce", fc2="conv_expand", act="act1", gate="gate",
                                      backend=backend)
    assert list(fused.state_dict()) == list(before)
    assert [n for n, _ in fused.named_children()] == [n for n, _ in se.named_children()]
    assert "C=32" in repr(fused) and "squeeze=8" in repr(fused)
    for fmt in FORMATS:
        x = torch.randn(2, 32, 9, 9).to(memory_format=fmt)
        with torch.no_grad():
            assert rel_err(fused(x), ref(x)) <= 1e-4


def test_se_from_modules_train_and_gradients():
    fc1, fc2, act, gate = make_se()
    ref = SE()
    ref.conv_reduce, ref.conv_expand = copy.deepcopy(fc1), copy.deepcopy(fc2)
    fused = M.FusedSqueezeExcite.from_modules(fc1, fc2, act, gate)
    assert [n for n, _ in fused.named_children()] == ["fc1", "fc2", "activation", "scale_activation"]
    x = torch.randn(2, 32, 7, 7)
    # Training mode default: the original modules, bit for bit.
    fused.train()
    ref.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa), ref(xb)
    assert torch.equal(ya, yb)
    # The fused op in training: gradients from its autograd formula match the original's.
    for b in BACKENDS:
        fused.train_fused = True
        fused.backend = b
        fused.zero_grad()
        ref.zero_grad()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        w = torch.randn(2, 32, 7, 7)
        ya, yb = fused(xa), ref(xb)
        assert rel_err(ya, yb) <= 1e-4
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert rel_err(xa.grad, xb.grad) <= 1e-4
        assert rel_err(fused.fc1.weight.grad, ref.conv_reduce.weight.grad) <= 1e-4
        assert rel_err(fused.fc1.bias.grad, ref.conv_reduce.bias.grad) <= 1e-4
        assert rel_err(fused.fc2.weight.grad, ref.conv_expand.weight.grad) <= 1e-4
        assert rel_err(fused.fc2.bias.grad, ref.conv_expand.bias.grad) <= 1e-4


def test_se_unsupported_is_refused():
    fc1, fc2, act, _ = make_se()
    assert "gate" in M.squeeze_excite_unsupported_reason(fc1, fc2, act, nn.Sigmoid())
    assert "inner activation" in M.squeeze_excite_unsupported_reason(fc1, fc2, nn.Hardswish(), nn.Hardsigmoid())
    with pytest.raises(ValueError, match="cannot fuse"):
        M.FusedSqueezeExcite(fc1, fc2, act, nn.Sigmoid())
    with pytest.raises(ValueError, match="cannot fuse"):
        M.FusedSqueezeExcite(nn.Conv2d(32, 8, 3), fc2)


# ----------------------------------------------------------------------------------------------
# Copying and compiling
# ----------------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        conv, bn, act = make_dw(c=16, act="hardswish")
        self.dw = M.FusedDepthwiseConvBNAct(conv, bn, act)
        self.block = fuse_block(SiblingBlock(c=16, k=5, stride=2))
        se = SE(16, 8)
        self.se = M.FusedSqueezeExcite.wrap(se, fc1="conv_reduce", fc2="conv_expand", act="act1", gate="gate")

    def forward(self, x):
        return self.se(self.block(self.dw(x)))


def test_deepcopy_and_pickle():
    model = Tiny().eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        want = model(x)  # fills the caches
        assert "_mnv3_cache" in model.dw.__dict__
        for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert "_mnv3_cache" not in copied.dw.__dict__
            assert copied.block.conv_dw.tail is copied.block.bn
            assert torch.equal(copied(x), want)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert torch.equal(loaded(x), want)


def float64_reference(model, x):
    """The model's math in float64 through mnv3_kernels.reference (no fused kernel)."""
    ref = copy.deepcopy(model).double()
    for m in ref.modules():
        if isinstance(m, M.FusedModule):
            m.backend = "reference"
    with torch.no_grad():
        return ref(x.double())


def test_torch_compile_fullgraph():
    model = Tiny().eval()
    x = torch.randn(2, 16, 12, 12).to(memory_format=torch.channels_last)
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        assert rel_err(compiled(x), float64_reference(model, x)) <= 1e-4
        # Buffers updated in place are seen by the compiled model (the fold is in the graph).
        model.dw[1].running_var.mul_(2.0)
        model.block.bn.running_var.mul_(2.0)
        assert rel_err(compiled(x), float64_reference(model, x)) <= 1e-4


# ----------------------------------------------------------------------------------------------
# Cached folds: which writes are seen, and refresh() for the ones that are not
# ----------------------------------------------------------------------------------------------
def _fused_dw_and_unfused(c=16):
    conv, bn, act = make_dw(c=c, act="hardswish")
    fused = M.FusedDepthwiseConvBNAct(conv, bn, act).eval()
    return fused, lambda x: nn.Sequential.forward(fused, x)  # the original modules, unfused


def test_writes_through_data_need_refresh():
    import mnv3_kernels

    fused, unfused = _fused_dw_and_unfused()
    block = fuse_block(SiblingBlock(c=16)).eval()
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        before, block_before = fused(x), block(x)  # fills the caches
        fused[1].weight.data.mul_(2.0)
        fused[0].weight.data.copy_(torch.randn_like(fused[0].weight))
        block.bn.running_var.data.mul_(4.0)
        # Not seen: the cached fold is stale (this is what refresh() is for).
        assert torch.equal(fused(x), before)
        assert torch.equal(block(x), block_before)
        assert mnv3_kernels.refresh(fused) is fused
        assert mnv3_kernels.refresh(block) is block
        assert rel_err(fused(x), unfused(x)) <= 1e-4
        block.bn.eval()
        want = block.pw(block.bn.apply_unfused(block.conv_dw._conv_forward(x, block.conv_dw.weight, None)))
        assert rel_err(block(x), want) <= 1e-4


def test_writes_the_cache_sees():
    fused, unfused = _fused_dw_and_unfused()
    conv, bn = fused[0], fused[1]
    x = torch.randn(2, 16, 9, 9)

    def check():
        with torch.no_grad():
            assert rel_err(fused(x), unfused(x)) <= 1e-4

    check()
    with torch.no_grad():  # in-place ops
        bn.weight.mul_(-1.5)
        bn.running_var.mul_(3.0)
    check()
    state = {k: v.clone() for k, v in fused.state_dict().items()}
    state["1.running_mean"].add_(2.0)
    fused.load_state_dict(state)  # load_state_dict
    check()
    opt = torch.optim.SGD(fused.parameters(), lr=0.5)  # optimizer step
    for p in fused.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    check()
    bn.bias = nn.Parameter(torch.randn(16))  # replacing a parameter
    check()
    fused.double().float()  # .to(): new tensors
    check()


# ----------------------------------------------------------------------------------------------
# Which path ran
# ----------------------------------------------------------------------------------------------
def test_path_stats_say_which_path_ran():
    import mnv3_kernels

    fused, _ = _fused_dw_and_unfused()
    fc1, fc2, act, gate = make_se(c=16, r=8)
    se = M.FusedSqueezeExcite(fc1, fc2, act, gate).eval()
    x = torch.randn(2, 16, 9, 9)
    mnv3_kernels.path_stats(reset=True)
    with torch.no_grad():
        fused(x)
        se(x)
        fused.backend = "reference"
        fused(x)
        fused.train()
        fused(x)
        se.train()
        se(x)
    stats = mnv3_kernels.path_stats(reset=True)
    name = "FusedDepthwiseConvBNAct"
    want = {
        (name, "reference", "backend='reference' requested"): 1,
        (name, "unfused", "BatchNorm in training mode"): 1,
        ("FusedSqueezeExcite", "unfused", "training mode"): 1,
    }
    if "cpu" in ops.backends():
        want[(name, "fused", "cpu")] = want[("FusedSqueezeExcite", "fused", "cpu")] = 1
    else:
        want[(name, "reference", "the compiled library is not loaded")] = 1
        want[("FusedSqueezeExcite", "reference", "the compiled library is not loaded")] = 1
    assert stats == want
    assert mnv3_kernels.path_stats() == {}


# ----------------------------------------------------------------------------------------------
# Autocast: the fused path still runs, with the documented dtypes
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_autocast_cpu_runs_the_fused_kernels_in_float32():
    import mnv3_kernels

    tiny = Tiny().eval()
    # Fused modules only (a plain conv would compute in bfloat16 under autocast).
    model = nn.Sequential(tiny.dw, tiny.block.conv_dw, tiny.block.bn, tiny.se)
    x = torch.randn(2, 16, 12, 12).to(torch.bfloat16)  # as an autocast conv before it returns
    with torch.no_grad():
        want = model(x.float())  # same kernels, same float32 inputs
        mnv3_kernels.path_stats(reset=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    stats = mnv3_kernels.path_stats(reset=True)
    assert stats == {("FusedDepthwiseConvBNAct", "fused", "cpu"): 1, ("DepthwiseConvBNActHead", "fused", "cpu"): 1,
                     ("FusedSqueezeExcite", "fused", "cpu"): 1}
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
