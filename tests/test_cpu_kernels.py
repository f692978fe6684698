"""Kernel-level coverage of the C++ CPU backend: every vector/tail/border code path of each ISA,
checked against mnv3_kernels.reference."""
import pytest
import torch

from mnv3_kernels import _extension, ops, reference
from mnv3_kernels.layers import DW_LAYERS

from conftest import folded_dw_params, se_params, with_layout

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")

RTOL, ATOL = 1e-4, 1e-5


def _expected_format(x):
    return ops.output_memory_format(x)


def check_dw(x, C, kh, kw=None, stride=1, padding=0, dilation=1, act="hardswish", bias=True,
             atol=ATOL):
    w, b = folded_dw_params(C, kh, kernel_w=kw)
    b = b if bias else None
    got = ops.dwconv_bn_act(x, w, b, stride, padding, dilation, act, backend="cpu")
    s, pd, dl = (ops._pair(v, n, m) for v, n, m in ((stride, "s", 1), (padding, "p", 0), (dilation, "d", 1)))
    want = reference.dwconv_bn_act(x, w, b, s, pd, dl, act)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=_expected_format(x))
    torch.testing.assert_close(got, want, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("C", list(range(1, 18)) + [24, 33, 47, 61])
def test_dw_channel_residues(isa, layout, C):
    # Every C mod 8 and mod 16 residue (the vector widths), with output widths on both NHWC
    # paths (padded window up to 8 columns, direct reads beyond) and hitting every pixel-block
    # remainder of its register blocks (8 or 4 pixels, 16 or 8 for single tiles), and heights
    # hitting every row remainder of the NCHW blocks of 8 rows.
    for H, W in ((5, 1), (13, 7), (7, 12), (3, 19), (2, 46)):
        x = with_layout(torch.randn(2, C, H, W), layout)
        check_dw(x, C, 3, stride=1, padding=1, act="relu")
        check_dw(x, C, 5, stride=2, padding=2, act="hardswish")
        check_dw(x * 8, C, 3, stride=2, padding=1, act="relu6")  # both bounds met


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced"])
@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1), (7, 2, 1),
                                   (3, 1, 2), (5, 1, 2)])
@pytest.mark.parametrize("act", ["relu", "hardswish", "relu6"])
def test_dw_fast_shapes(isa, layout, k, s, d, act):
    # The compile-time shapes (k 3/5 at stride 1/2, and dilation 2 at stride 1) and their
    # run-time neighbours (k = 7).
    pad = d * (k - 1) // 2
    for H, W in ((1, 1), (9, 1), (13, 11), (16, 23), (14, 30)):
        if H + 2 * pad < d * (k - 1) + 1 or W + 2 * pad < d * (k - 1) + 1:
            continue
        x = with_layout(torch.randn(2, 27, H, W) * 8, layout)  # relu6 meets both bounds
        check_dw(x, 27, k, stride=s, padding=pad, dilation=d, act=act, atol=1e-4)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize(
    "kh,kw,stride,padding,dilation",
    [
        (3, 5, 1, (1, 2), 1),
        (5, 3, (2, 1), (2, 1), 1),
        (3, 3, 1, 2, 2),
        (3, 3, (1, 3), (0, 4), (2, 1)),
        (1, 1, 1, 0, 1),
        (1, 7, (3, 2), (0, 3), (1, 2)),
        (2, 4, 2, (1, 0), 1),
        (3, 3, 1, 6, 1),        # padding wider than the kernel: whole rows/columns of padding
        (5, 5, 3, 4, 3),
        (4, 4, 4, 0, 1),
    ],
)
def test_dw_generic(isa, layout, kh, kw, stride, padding, dilation):
    for C, H, W in ((11, 17, 15), (24, 6, 31), (3, 9, 9)):
        x = with_layout(torch.randn(2, C, H, W), layout)
        check_dw(x, C, kh, kw, stride, padding, dilation, act="hardswish")
        check_dw(x, C, kh, kw, stride, padding, dilation, act="none", bias=False)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_dw_mobilenet_layers(isa, layout):
    seen = set()
    for layer in DW_LAYERS:
        key = (layer.channels, layer.kernel, layer.stride, layer.size, layer.activation)
        if key in seen:
            continue
        seen.add(key)
        x = with_layout(torch.randn(1, layer.channels, layer.size, layer.size), layout)
        check_dw(x, layer.channels, layer.kernel, stride=layer.stride, padding=layer.padding,
                 act=layer.activation, atol=1e-4)


def test_dw_threaded_and_large(isa):
    # Enough work to cross the threading threshold, odd sizes with stride 2, both layouts.
    for layout in ("nchw", "nhwc"):
        x = with_layout(torch.randn(3, 37, 61, 45), layout)
        check_dw(x, 37, 3, stride=2, padding=1, atol=1e-4)
        check_dw(x, 37, 5, stride=1, padding=2, atol=1e-4)
    # Few planes, tall image: NCHW splits rows into blocks.
    x = torch.randn(1, 2, 300, 20)
    check_dw(x, 2, 3, stride=1, padding=1, atol=1e-4)
    # Very wide rows: NCHW scratch falls back to one row per block.
    x = torch.randn(1, 2, 5, 20000)
    check_dw(x, 2, 5, stride=2, padding=2, atol=1e-4)


@pytest.mark.parametrize("k,s,d", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (5, 1, 2), (4, 3, 1)])
def test_dw_nchw_narrow_planes(isa, k, s, d):
    # Narrow NCHW planes go through channel tiles transposed into an NHWC window: tails of the
    # flat transposes (H*W not a multiple of the vector width), channel tails, row blocks of
    # tall images (window rows below and above the image), and items split across threads.
    pad = d * (k - 1) // 2
    for N, C, H, W in ((2, 40, 7, 7), (1, 19, 14, 14), (3, 16, 9, 5), (1, 33, 300, 7),
                       (1, 16, 61, 3), (2, 23, 1, 8)):
        if H + 2 * pad < d * (k - 1) + 1:
            continue
        x = torch.randn(N, C, H, W)
        check_dw(x, C, k, stride=s, padding=pad, dilation=d, act="hardswish", atol=1e-4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x = torch.randn(1, 16, 200, 7)  # one tile: the threads split its rows
        check_dw(x, 16, k, stride=s, padding=pad, dilation=d, act="relu", atol=1e-4)
    finally:
        torch.set_num_threads(before)


def test_dw_batch0_and_formats(isa):
    w, b = folded_dw_params(16, 3)
    x = torch.randn(0, 16, 8, 8)
    y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "relu", backend="cpu")
    assert y.shape == (0, 16, 8, 8)
    x = torch.randn(0, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    y = ops.dwconv_bn_act(x, w, b, 2, 1, 1, "relu", backend="cpu")
    assert y.shape == (0, 16, 4, 4)
    # NHWC in -> NHWC out; NCHW in -> NCHW out; ambiguous (C == 1) -> NCHW.
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "relu", backend="cpu")
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    y = ops.dwconv_bn_act(x.contiguous(), w, b, 1, 1, 1, "relu", backend="cpu")
    assert y.is_contiguous()
    w1, b1 = folded_dw_params(1, 3)
    x = torch.randn(2, 1, 9, 9)
    check_dw(x.contiguous(memory_format=torch.channels_last), 1, 3, padding=1)


def test_dw_non_float_rejected():
    w, b = folded_dw_params(8, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32"):
        torch.ops.mnv3.dwconv_bn_act(torch.randn(1, 8, 5, 5, dtype=torch.float64), w, b,
                                     [1, 1], [1, 1], [1, 1], "relu")


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "sliced"])
@pytest.mark.parametrize("C,R,H,W", [(1, 8, 1, 1), (5, 3, 1, 1), (13, 8, 3, 5), (24, 8, 7, 7),
                                     (72, 24, 28, 28), (67, 16, 9, 4), (960, 240, 7, 7),
                                     (130, 0, 2, 2)])
def test_squeeze_excite(isa, layout, C, R, H, W):
    x = with_layout(torch.randn(3, C, H, W), layout)
    w1, b1, w2, b2 = se_params(C, R)
    got = ops.squeeze_excite(x, w1, b1, w2, b2, backend="cpu")
    want = reference.squeeze_excite(x, w1, b1, w2, b2)
    assert got.is_contiguous(memory_format=_expected_format(x))
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-5 * max(1.0, (C * H * W) ** 0.5 / 10))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("C,R", [(960, 240), (67, 13), (130, 9), (40, 8), (5, 3)])
def test_squeeze_excite_one_sample_is_the_same_bits_as_in_a_batch(isa, threads, C, R):
    # One sample takes the FC rows several at a time from places apart (row_dots, including
    # the rows left over after whole groups); a batch takes them one by one. Every row is the
    # same dot product either way.
    x = torch.randn(3, C, 5, 4)
    w1, b1, w2, b2 = se_params(C, R)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        batch = ops.squeeze_excite(x, w1, b1, w2, b2, backend="cpu")
        for n in range(3):
            alone = ops.squeeze_excite(x[n:n + 1], w1, b1, w2, b2, backend="cpu")
            assert torch.equal(alone, batch[n:n + 1])
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(batch, reference.squeeze_excite(x, w1, b1, w2, b2), rtol=RTOL,
                               atol=1e-5)


def test_squeeze_excite_empty(isa):
    w1, b1, w2, b2 = se_params(8, 8)
    for shape in ((0, 8, 4, 4), (2, 8, 0, 3)):
        got = ops.squeeze_excite(torch.randn(shape), w1, b1, w2, b2, backend="cpu")
        assert got.shape == shape


@pytest.mark.parametrize("fn", ["hardswish", "hardsigmoid"])
def test_hard_activations(isa, fn):
    ours = getattr(ops, fn)
    ref = getattr(reference, fn)
    special = torch.tensor([-3.0, 0.0, 3.0, -3.0001, -2.9999, 2.9999, 3.0001, -1e30, 1e30,
                            -0.0, 1.5, -1.5, 6.0, -6.0, float("inf"), float("-inf")])
    torch.testing.assert_close(ours(special, backend="cpu"), ref(special), rtol=1e-6, atol=1e-7,
                               equal_nan=True)
    exact = ours(torch.tensor([-3.0, 0.0, 3.0]), backend="cpu")
    assert exact[0].item() == 0.0 and exact[1].item() == (0.0 if fn == "hardswish" else 0.5)
    assert exact[2].item() == (3.0 if fn == "hardswish" else 1.0)
    for n in (0, 1, 7, 8, 9, 100, 70001):
        x = torch.randn(n) * 4
        torch.testing.assert_close(ours(x, backend="cpu"), ref(x), rtol=RTOL, atol=ATOL)
    x = torch.randn(2, 5, 6, 7) * 4
    for inp in (x.contiguous(memory_format=torch.channels_last), x[:, :, ::2, 1:], x.transpose(1, 3)):
        got = ours(inp, backend="cpu")
        torch.testing.assert_close(got, ref(inp), rtol=RTOL, atol=ATOL)
        if ops._non_overlapping_and_dense(inp):
            assert got.stride() == inp.stride()


# NaN and infinities: PyTorch keeps NaN through relu, relu6, hardsigmoid and hardswish (relu(NaN) = NaN),
# so a diverged model stays visibly diverged. Every epilogue and clamp must do the same.
_SPECIALS = (float("nan"), float("inf"), float("-inf"))


def _poison(x, count=6):
    """x with `count` random elements replaced by NaN, +inf and -inf in turn (in place)."""
    flat = x.view(-1) if x.is_contiguous() else x.permute(0, 2, 3, 1).reshape(-1)
    idx = torch.randperm(flat.numel())[:count]
    for j, i in enumerate(idx.tolist()):
        flat[i] = _SPECIALS[j % 3]
    if not x.is_contiguous():
        x.copy_(flat.view(x.shape[0], x.shape[2], x.shape[3], x.shape[1]).permute(0, 3, 1, 2))
    return x


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("act", reference.ACTIVATIONS)
@pytest.mark.parametrize(
    "C,H,W,k,s,d",
    [
        (24, 20, 20, 3, 1, 1),   # wide: NHWC rows in place, NCHW planes (compile-time shape)
        (40, 19, 23, 5, 2, 1),
        (16, 18, 18, 3, 1, 2),   # dilation 2
        (11, 17, 15, 7, 1, 1),   # run-time shape, wide
        (40, 7, 7, 3, 1, 1),     # narrow: NHWC window, NCHW channel tiles
        (19, 14, 14, 5, 2, 1),
        (17, 9, 6, 7, 2, 1),     # run-time shape, narrow
        (3, 9, 9, 3, 1, 1),      # too few channels for NCHW tiles: narrow planes
    ],
)
def test_dw_nan_inf(isa, layout, act, C, H, W, k, s, d):
    pad = d * (k - 1) // 2
    x = _poison(with_layout(torch.randn(2, C, H, W), layout), count=max(3, C * H * W // 40))
    w, b = folded_dw_params(C, k)
    got = ops.dwconv_bn_act(x, w, b, s, pad, d, act, backend="cpu")
    want = reference.dwconv_bn_act(x, w, b, [s, s], [pad, pad], [d, d], act)
    assert want.isnan().any()  # the case must reach the NaN handling
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-4, equal_nan=True)
    # NaN in the bias (a diverged BN): the whole channel is NaN after every activation.
    x = with_layout(torch.randn(2, C, H, W), layout)
    b[C // 2] = float("nan")
    got = ops.dwconv_bn_act(x, w, b, s, pad, d, act, backend="cpu")
    assert got[:, C // 2].isnan().all()
    want = reference.dwconv_bn_act(x, w, b, [s, s], [pad, pad], [d, d], act)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("where", ["x", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"])
def test_squeeze_excite_nan(isa, layout, where):
    C, R = 40, 16
    x = with_layout(torch.randn(3, C, 7, 9), layout)
    params = dict(zip(["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"], se_params(C, R)))
    if where == "x":
        x[1, 5, 2, 3] = float("nan")
        x[2, 7, 0, 0] = float("inf")
    else:
        params[where].view(-1)[3] = float("nan")
    got = ops.squeeze_excite(x, backend="cpu", **params)
    want = reference.squeeze_excite(x, **params)
    assert want.isnan().any()
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("fn", ["hardswish", "hardsigmoid"])
@pytest.mark.parametrize("n", [5, 8, 16, 37, 70001])
def test_hard_activations_nan(isa, fn, n):
    x = torch.randn(n) * 4
    x[torch.randperm(n)[:max(3, n // 50)]] = float("nan")
    x[0], x[-1], x[n // 2] = float("nan"), float("inf"), float("-inf")
    want = getattr(reference, fn)(x)
    torch.testing.assert_close(getattr(ops, fn)(x, backend="cpu"), want, rtol=1e-6, atol=1e-7,
                               equal_nan=True)
    y = x.clone()
    assert getattr(ops, fn + "_")(y, backend="cpu") is y
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-7, equal_nan=True)
