"""Pointwise (1x1) conv + folded BN + activation (+ residual, + per-sample input scale): the CPU
GEMM kernels on every ISA and layout, against the reference path in float64."""
import pytest
import torch

from mnv3_kernels import _extension, ops, reference
from mnv3_kernels.layers import PW_LAYERS

from conftest import with_layout

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")

ACTS = list(reference.ACTIVATIONS)


def _params(cin, cout, bias=True):
    # Outputs of std ~4: relu6 and hardswish meet both of their bounds.
    w = torch.randn(cout, cin) * 4 / cin ** 0.5
    b = torch.randn(cout) * 0.5 if bias else None
    return w, b


def _want(x, w, b, act, res, scale):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.pointwise_conv_bn_act(d(x), d(w), d(b), act, d(res), d(scale))


def check(x, cout, act="hardswish", bias=True, residual=False, scale=False, packed=False):
    N, cin, H, W = x.shape
    w, b = _params(cin, cout, bias)
    res = with_layout(torch.randn(N, cout, H, W), "nhwc" if ops.output_memory_format(x) == torch.channels_last else "nchw") if residual else None
    s = torch.rand(N, cin) if scale else None
    if packed:
        pk = ops.pack_pointwise_weight(w, b)
        with torch.no_grad():
            got = torch.ops.mnv3.pointwise_conv_bn_act_packed(x, pk, cout, act, res, s)
    else:
        got = ops.pointwise_conv_bn_act(x, w, b, act, res, s, backend="cpu")
    want = _want(x, w, b, act, res, s)
    assert got.shape == want.shape
    assert got.dtype == torch.float32
    assert got.is_contiguous(memory_format=ops.output_memory_format(x))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("cin,cout", [(1, 1), (3, 5), (8, 16), (13, 37), (16, 33), (24, 72), (47, 15), (40, 120)])
@pytest.mark.parametrize("act", ACTS)
def test_channel_residues(isa, layout, cin, cout, act):
    # Every row tail (H*W not a multiple of the tile), panel tail (Cout % 32) and slice tail.
    check(with_layout(torch.randn(2, cin, 5, 7), layout), cout, act)


@pytest.mark.parametrize("cout", [9, 16, 19, 48, 64])
@pytest.mark.parametrize("act", ["relu", "hardswish"])
def test_sixteen_input_channels(isa, cout, act):
    # K = 16 has tiles with K fixed at compile time: every slice width and a row tail on each
    # ISA (45 rows: 7 x 6 + 3, 6 x 7 + 3, 4 x 11 + 1), with the residual and the gate.
    x = torch.randn(3, 16, 5, 3).contiguous(memory_format=torch.channels_last)
    check(x, cout, act, residual=True)
    check(x, cout, act, scale=True, packed=True)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("residual,scale", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("act", ACTS)
def test_residual_and_input_scale(isa, layout, residual, scale, act):
    check(with_layout(torch.randn(3, 20, 6, 9), layout), 44, act, residual=residual, scale=scale)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced"])
@pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 24, 1, 9), (2, 40, 13, 1), (0, 8, 4, 4), (2, 1, 3, 3), (1, 5, 97, 3)])
def test_awkward_shapes(isa, layout, shape):
    check(with_layout(torch.randn(*shape), layout), 19, residual=True, scale=shape[1] > 0)


def test_no_bias(isa):
    check(torch.randn(2, 12, 4, 4).contiguous(memory_format=torch.channels_last), 20, bias=False)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("batch", [1, 3])
def test_mobilenet_layers(isa, layout, batch):
    # Every 1x1 shape of MobileNetV3-Large and -Small (threaded, both work splits).
    for cin, cout, hw in PW_LAYERS:
        x = with_layout(torch.randn(batch, cin, hw, hw), layout)
        check(x, cout, "hardswish", residual=cin == cout, scale=cin > cout, packed=True)


def test_threaded_split_matches_serial(isa):
    # Few rows and many output channels (split over panels) and many rows (split over rows),
    # per-sample scale crossing sample boundaries: one thread and two give the same bits.
    for shape, cout in (((1, 160, 7, 7), 960), ((2, 96, 7, 7), 576), ((2, 16, 56, 56), 64)):
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        w, b = _params(shape[1], cout)
        s = torch.rand(shape[0], shape[1])
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = ops.pointwise_conv_bn_act(x, w, b, "relu", None, s, backend="cpu")
            torch.set_num_threads(2)
            two = ops.pointwise_conv_bn_act(x, w, b, "relu", None, s, backend="cpu")
        finally:
            torch.set_num_threads(before)
        torch.testing.assert_close(one, two, rtol=0, atol=0)


def _check_tiles(cin, cout, hw):
    """Residual + gate + hardswish, no bias + relu6 (against float64), and a one-row-per-sample
    call on 1 and 2 threads (the threads split the panels): the same bits."""
    x = torch.randn(2, cin, *hw).contiguous(memory_format=torch.channels_last)
    check(x, cout, "hardswish", residual=True, scale=True, packed=True)
    check(x, cout, "relu6", bias=False)
    w, b = _params(cin, cout)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.pointwise_conv_bn_act(x[:1], w, b, "none", backend="cpu")
        torch.set_num_threads(2)
        two = ops.pointwise_conv_bn_act(x[:1], w, b, "none", backend="cpu")
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize("cin", [16, 37])
@pytest.mark.parametrize("cout", [64, 80, 96, 136, 200])
@pytest.mark.parametrize("hw", [(7, 7), (5, 9), (1, 13), (1, 1)])
def test_two_panel_tiles(isa, cin, cout, hw):
    # AVX-512 runs two whole 32-channel panels as one tile of up to 6 rows (the rows of a call
    # cut into near-equal tiles): pairs of panels with a single panel, a half panel or a pair
    # tile after them, K = 16 (compile-time) and not, 49, 45, 13 and 1 rows.
    _check_tiles(cin, cout, hw)


@pytest.mark.parametrize("cin", [16, 37, 72])
@pytest.mark.parametrize("cout", [24, 40, 56, 104, 120])
@pytest.mark.parametrize("hw", [(7, 7), (2, 5), (1, 1)])
def test_vector_and_pair_tiles(isa, cin, cout, hw):
    # AVX-512 pair vectors (weights interleaved once per call): a 24-channel panel (a whole
    # 24-channel output, the last 24 of 56 and 120) as three pair vectors, a whole panel and 8
    # channels of the next (40; 104 after a two-panel tile) as two vectors and a pair. K odd (37)
    # and even, K = 16, every tile height (49, 10 and 1 rows).
    _check_tiles(cin, cout, hw)


@pytest.mark.parametrize("cin", [16, 37])
@pytest.mark.parametrize("cout", [44, 48, 112, 176, 240])
@pytest.mark.parametrize("hw", [(7, 7), (3, 5), (1, 1)])
def test_panel_and_vector_tiles(isa, cin, cout, hw):
    # AVX-512 runs a whole panel and at most 16 channels of the next as one tile of 8 rows x 3
    # vectors: alone (44, 48), after one or two two-panel tiles (112, 176, 240); 49 rows (six
    # tiles and one row), 15 and 1.
    _check_tiles(cin, cout, hw)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,cout", [((9, 16, 112, 112), 16), ((3, 40, 100, 100), 48), ((4, 16, 96, 96), 24)])
def test_outputs_larger_than_the_caches(isa, streaming, threads, shape, cout):
    # 3.5-7.2 MB outputs, streamed (where the rows are whole vectors, 16 and 48 channels; plain
    # stores otherwise, 24) and as the cache rule decides, with the residual read.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check(torch.randn(*shape).contiguous(memory_format=torch.channels_last), cout, "relu",
              residual=True)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("act", ACTS)
def test_nan_and_inf_propagate(isa, layout, act):
    x = torch.randn(1, 4, 3, 5)
    x[0, 1, 1, 2] = float("nan")
    x[0, 2, 0, 0] = float("inf")
    x[0, 3, 2, 4] = -float("inf")
    x = with_layout(x, layout)
    w = torch.zeros(6, 4)
    w[:, 1] = 1.0  # every output pixel (1, 2) is NaN, whatever the activation
    w[0, 2] = 1.0
    w[1, 3] = 1.0
    got = ops.pointwise_conv_bn_act(x, w, None, act, backend="cpu")
    want = reference.pointwise_conv_bn_act(x, w, None, act)
    assert torch.isnan(got[0, :, 1, 2]).all()
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("cout", [6, 40])
def test_inf_in_the_last_of_an_odd_number_of_channels(isa, cout):
    # AVX-512 runs the last <= 8 output channels as pairs of input channels (k, k + 1); with K
    # odd the last channel is added on its own, where x = inf must give inf * w (NaN where
    # w = 0) in its output channel only.
    x = torch.randn(2, 5, 3, 7).contiguous(memory_format=torch.channels_last)
    x[1, 4, 2, 3] = float("inf")
    w, b = torch.randn(cout, 5), torch.randn(cout)
    w[: cout // 2, 4] = 0.0
    got = ops.pointwise_conv_bn_act(x, w, b, "none", backend="cpu")
    want = reference.pointwise_conv_bn_act(x.double(), w.double(), b.double(), "none")
    assert torch.isnan(got[1, : cout // 2, 2, 3]).all() and torch.isinf(got[1, cout // 2:, 2, 3]).all()
    assert int(torch.isfinite(got).sum()) == got.numel() - cout
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_gradients_match_reference():
    x = torch.randn(2, 6, 4, 5, dtype=torch.float32, requires_grad=True)
    w = torch.randn(9, 6, 1, 1, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    r = torch.randn(2, 9, 4, 5, requires_grad=True)
    s = torch.rand(2, 6, requires_grad=True)
    for act in ACTS:
        got = ops.pointwise_conv_bn_act(x, w, b, act, r, s, backend="cpu")
        want = reference.pointwise_conv_bn_act(x, w, b, act, r, s)
        g = torch.randn_like(want)
        grads = torch.autograd.grad(got, (x, w, b, r, s), g)
        wants = torch.autograd.grad(want, (x, w, b, r, s), g)
        for a, e in zip(grads, wants):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_packed_op_refuses_gradients():
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    pk = ops.pack_pointwise_weight(torch.randn(5, 4))
    with pytest.raises(RuntimeError, match="computes no gradients"):
        torch.ops.mnv3.pointwise_conv_bn_act_packed(x, pk, 5, "none", None, None)


def test_opcheck():
    x = torch.randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last)
    args = (x, torch.randn(7, 6), torch.randn(7), "hardswish", torch.randn(2, 7, 3, 4), torch.rand(2, 6))
    torch.library.opcheck(torch.ops.mnv3.pointwise_conv_bn_act.default, args)
    pk = ops.pack_pointwise_weight(torch.randn(7, 6), torch.randn(7))
    torch.library.opcheck(torch.ops.mnv3.pointwise_conv_bn_act_packed.default,
                          (x, pk, 7, "relu", None, torch.rand(2, 6)),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    torch.library.opcheck(torch.ops.mnv3.pack_pointwise_weight.default, (torch.randn(7, 6, 1, 1), None))


def test_compile_fullgraph_matches_reference():
    x = torch.randn(1, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    w, b = _params(16, 40)

    def f(x):
        return ops.pointwise_conv_bn_act(x, w, b, "hardswish", backend="cpu")

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got.double(), _want(x, w, b, "hardswish", None, None), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad,match", [
    (dict(weight=torch.randn(5, 3)), "input channels"),
    (dict(weight=torch.randn(5, 4, 3, 3)), "weight must be"),
    (dict(bias=torch.randn(4)), "bias must be"),
    (dict(residual=torch.randn(1, 5, 3, 2)), "residual must have"),
    (dict(input_scale=torch.randn(1, 5)), "input_scale must be"),
    (dict(input_scale=torch.randn(4)), "input_scale must be"),
    (dict(activation="gelu"), "activation must be"),
    (dict(x=torch.randn(4, 3, 3)), "x must be 4-D"),
    (dict(residual=torch.randn(1, 5, 3, 3, dtype=torch.float64)), "dtype"),
])
def test_bad_arguments(bad, match):
    kw = dict(x=torch.randn(1, 4, 3, 3), weight=torch.randn(5, 4), bias=None, activation="relu",
              residual=None, input_scale=None)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.pointwise_conv_bn_act(backend="cpu", **kw)


def _packed_layout(w, b):
    """[bias; W^T] with Cout padded to whole panels of 32, cut into (panels, K + 1, 32)."""
    w = w.reshape(w.shape[0], -1)
    cout, k = w.shape
    panels = (cout + 31) // 32
    bias = torch.zeros(cout, dtype=w.dtype) if b is None else b
    rows = torch.cat([bias.reshape(1, cout), w.t()], 0)
    rows = torch.nn.functional.pad(rows, (0, panels * 32 - cout))
    return rows.reshape(k + 1, panels, 32).permute(1, 0, 2).contiguous()


@pytest.mark.parametrize("cout,cin", [(1, 1), (33, 7), (40, 0), (72, 24), (100, 17), (960, 160), (1280, 960)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_pointwise_weight_layout(cout, cin, bias, dtype):
    w = torch.randn(cout, cin, 1, 1, dtype=dtype)
    b = torch.randn(cout, dtype=dtype) if bias else None
    assert torch.equal(ops.pack_pointwise_weight(w, b), _packed_layout(w, b))
    wt = torch.randn(cin, cout, dtype=dtype).t()  # a transposed (non-contiguous) weight
    assert torch.equal(ops.pack_pointwise_weight(wt, b), _packed_layout(wt, b))
    if cin:
        w[cout - 1, cin - 1] = float("nan")  # copied, not computed with
        assert torch.equal(ops.pack_pointwise_weight(w, b).isnan(), _packed_layout(w, b).isnan())


def test_pack_pointwise_weight_refuses_a_bias_elsewhere():
    with pytest.raises(ValueError, match="bias is on meta but weight is on cpu"):
        ops.pack_pointwise_weight(torch.randn(8, 4), torch.randn(8, device="meta"))


def test_packed_op_checks_its_panels():
    pk = ops.pack_pointwise_weight(torch.randn(40, 8))
    with pytest.raises(ValueError, match="packed weight must be"):
        torch.ops.mnv3.pointwise_conv_bn_act_packed(torch.randn(1, 9, 2, 2), pk, 40, "none", None, None)
    with pytest.raises(ValueError, match="packed weight must be"):
        torch.ops.mnv3.pointwise_conv_bn_act_packed(torch.randn(1, 8, 2, 2), pk, 70, "none", None, None)


def test_other_backends_refuse_and_auto_falls_back():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    got = ops.pointwise_conv_bn_act(x, w, None, "relu")  # auto: float64 runs the reference path
    torch.testing.assert_close(got, reference.pointwise_conv_bn_act(x, w, None, "relu"))


# ----------------------------------------------------------------------------------------------
# Dense (stem) conv: the same GEMM tiles over gathered input patches, or the direct kernel
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced"])
@pytest.mark.parametrize("shape,cout,k,stride,padding,dilation", [
    ((1, 3, 224, 224), 16, 3, 2, 1, 1),   # MobileNetV3's stem
    ((2, 3, 97, 131), 16, 3, 2, 1, 1),    # odd sizes, stride 2
    ((1, 5, 9, 1), 7, 3, 1, 1, 1),        # W = 1
    ((2, 4, 9, 45), 20, 3, 1, 1, 1),      # stride 1 with room for vector loads of the rows
    ((3, 2, 11, 10), 33, (3, 5), (1, 2), (2, 1), (2, 1)),
    ((0, 3, 8, 8), 16, 3, 2, 1, 1),
    # the direct kernel (3 channels, 3x3, stride 1 or 2, no dilation, <= 2 vectors of outputs)
    ((2, 3, 17, 23), 24, 3, 1, 1, 1),     # stride 1; two output vectors on AVX-512
    ((2, 3, 9, 40), 13, 3, 1, 1, 1),      # stride 1, one output vector: 14-pixel interior blocks
    ((1, 3, 2, 3), 8, 3, 2, 1, 1),        # every pixel at an edge
    ((1, 3, 12, 13), 5, 3, 2, 0, 1),      # no padding, Cout not a multiple of 8
    ((1, 3, 10, 9), 12, 3, 2, 2, 1),      # padding 2: rows and columns wholly outside
    ((1, 3, 9, 9), 40, 3, 2, 1, 1),       # too many outputs: the gather path
])
@pytest.mark.parametrize("act", ACTS)
def test_dense_conv(isa, layout, shape, cout, k, stride, padding, dilation, act):
    x = with_layout(torch.randn(*shape), layout)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = torch.randn(cout, shape[1], kh, kw) * 4 / (shape[1] * kh * kw) ** 0.5
    b = torch.randn(cout)
    got = ops.dense_conv_bn_act(x, w, b, stride, padding, dilation, act, backend="cpu")
    s, p, d = (ops._pair(v, "v", 0) for v in (stride, padding, dilation))
    want = reference.dense_conv_bn_act(x.double(), w.double(), b.double(), s, p, d, act)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("act", ["relu", "hardswish"])
def test_dense_conv_large_output(isa, streaming, act):
    # 7.2 MB out: streamed, and as the cache rule decides.
    x = torch.randn(9, 3, 224, 224)
    w = torch.randn(16, 3, 3, 3) * 4 / 27 ** 0.5
    b = torch.randn(16)
    got = ops.dense_conv_bn_act(x, w, b, 2, 1, 1, act, backend="cpu")
    want = reference.dense_conv_bn_act(x.double(), w.double(), b.double(), (2, 2), (1, 1), (1, 1), act)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_dense_conv_gradients_opcheck_and_errors():
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    got = ops.dense_conv_bn_act(x, w, b, 2, 1, 1, "hardswish", backend="cpu")
    want = reference.dense_conv_bn_act(x, w, b, [2, 2], [1, 1], [1, 1], "hardswish")
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    xd = x.detach()
    torch.library.opcheck(torch.ops.mnv3.dense_conv_bn_act.default,
                          (xd, w.detach(), b.detach(), [2, 2], [1, 1], [1, 1], "relu"))
    pk = ops.pack_pointwise_weight(w.detach().reshape(6, -1), b.detach())
    torch.library.opcheck(torch.ops.mnv3.dense_conv_bn_act_packed.default,
                          (xd, pk, 6, [3, 3], [2, 2], [1, 1], [1, 1], "relu"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    with pytest.raises(ValueError, match="groups = 1"):
        ops.dense_conv_bn_act(xd, torch.randn(6, 1, 3, 3), None, backend="cpu")
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        ops.dense_conv_bn_act(torch.randn(1, 3, 2, 2), torch.randn(4, 3, 5, 5), None, backend="cpu")
    with pytest.raises(ValueError, match="packed weight must be"):
        torch.ops.mnv3.dense_conv_bn_act_packed(xd, pk, 6, [3, 5], [2, 2], [1, 1], [1, 1], "relu")
