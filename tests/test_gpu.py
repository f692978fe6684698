"""The CUDA backend against the unfused reference, on CUDA tensors (skipped without a GPU).

References run in float64 on the same (rounded) inputs, so the fused kernels are compared with
exact math: fp32 to 1e-4, fp16 to ~1e-2, bf16 to ~5e-2.
"""
import copy

import pytest
import torch

import mnv3_kernels
from mnv3_kernels import ops, reference
from mnv3_kernels.layers import DW_LAYERS, SE_LAYERS

from conftest import folded_dw_params, randomize_model_bn_, se_params

pytestmark = pytest.mark.gpu

DEV = "cuda"
LAYOUTS = ["nchw", "channels_last"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}
ACTS = list(reference.ACTIVATIONS)


def _cuda_ready():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if "cuda" not in ops.backends():
        pytest.fail(f"CUDA device present but backend 'cuda' unusable: {ops._unavailable_reason('cuda')}")


@pytest.fixture(autouse=True)
def _need_cuda_backend():
    _cuda_ready()
    # TF32 would make the fp32 references (cuDNN conv, cuBLAS matmul) the inexact side.
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


def _close(got, want, dtype):
    rtol, atol = TOL[dtype]
    assert got.shape == want.shape, (got.shape, want.shape)
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


def _pairs(stride, padding, dilation):
    return ops._pair(stride, "stride", 1), ops._pair(padding, "padding", 0), ops._pair(dilation, "dilation", 1)


def _check_dw(x, w, b, stride, padding, dilation, act, dtype=None):
    dtype = dtype or x.dtype
    got = ops.dwconv_bn_act(x, w, b, stride, padding, dilation, act, backend="cuda")
    s, p, d = _pairs(stride, padding, dilation)
    want = reference.dwconv_bn_act(
        x.double(), w.double(), None if b is None else b.double(), s, p, d, act)
    _close(got, want, dtype)
    assert got.dtype == x.dtype and got.device == x.device
    assert got.is_contiguous(memory_format=ops.output_memory_format(x))
    return got


def _dw_inputs(n, c, h, w, kh, dtype, layout, kw=None, scale=3.0):
    x = _layout(torch.randn(n, c, h, w, device=DEV) * scale, layout).to(dtype)
    weight, bias = folded_dw_params(c, kh, dtype=dtype, device=DEV, kernel_w=kw)
    return x, weight, bias


# ---------------------------------------------------------------------------------------------
# dwconv_bn_act
# ---------------------------------------------------------------------------------------------
_DISTINCT = list({(l.channels, l.kernel, l.stride, l.size, l.activation): l for l in DW_LAYERS}.values())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", _DISTINCT, ids=lambda l: l.name)
def test_dwconv_mobilenet_layers(layer, batch, layout, dtype):
    x, w, b = _dw_inputs(batch, layer.channels, layer.size, layer.size, layer.kernel, dtype, layout)
    y = _check_dw(x, w, b, layer.stride, layer.padding, 1, layer.activation)
    assert y.shape[-1] == layer.out_size


_BIG = [l for l in _DISTINCT if (l.channels, l.size) in {(16, 112), (64, 112), (120, 28), (960, 7), (672, 14)}]


@pytest.mark.slow  # run last by the GPU check
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [64, 256])
@pytest.mark.parametrize("layer", _BIG, ids=lambda l: l.name)
def test_dwconv_large_batch(layer, batch, layout, dtype):
    x, w, b = _dw_inputs(batch, layer.channels, layer.size, layer.size, layer.kernel, dtype, layout)
    _check_dw(x, w, b, layer.stride, layer.padding, 1, layer.activation)


# (N, C, H, W, kh, kw, stride, padding, dilation)
AWKWARD = [
    (2, 13, 15, 17, 3, 3, 2, 1, 1),     # odd H/W with stride 2, C not a multiple of 8
    (2, 33, 15, 15, 5, 5, 2, 2, 1),     # C = 33
    (1, 24, 7, 9, 5, 5, 2, 2, 1),
    (2, 8, 1, 11, 3, 3, 1, 1, 1),       # H = 1
    (2, 8, 11, 1, 3, 3, 2, 1, 1),       # W = 1
    (1, 5, 1, 1, 3, 3, 1, 1, 1),        # H = W = 1
    (1, 33, 14, 14, 3, 3, 1, 2, 2),     # dilation 2
    (1, 17, 13, 13, 5, 5, 1, 4, 2),
    (2, 9, 12, 10, 7, 7, 1, 3, 1),      # k = 7
    (1, 10, 9, 12, 3, 5, (1, 2), (1, 2), 1),  # kh != kw, per-axis stride
    (1, 12, 10, 10, 3, 3, 3, 0, 1),     # stride 3
    (1, 7, 6, 6, 1, 1, 1, 0, 1),        # 1x1 depthwise
    (1, 16, 8, 8, 3, 3, 1, 3, 1),       # padding larger than the kernel radius
    (3, 1, 9, 9, 3, 3, 2, 1, 1),        # C = 1
    (1, 16, 9, 9, 3, 3, 1, (0, 2), (2, 1)),
    (2, 40, 9, 9, 3, 3, 1, 0, 1),       # no padding, fast path
    (2, 24, 10, 10, 5, 5, 2, 0, 1),
]


# Every activation in fp32; the 16-bit types with hardswish (the dtype does not change the
# epilogue's branch, only the loads and stores).
ACT_DTYPES = [(a, torch.float32) for a in ACTS] + [("hardswish", torch.float16), ("hardswish", torch.bfloat16)]


@pytest.mark.parametrize("activation,dtype", ACT_DTYPES, ids=lambda v: str(v))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_dwconv_awkward(case, layout, activation, dtype):
    n, c, h, w, kh, kw, stride, padding, dilation = case
    x, weight, bias = _dw_inputs(n, c, h, w, kh, dtype, layout, kw=kw)
    _check_dw(x, weight, bias, stride, padding, dilation, activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_without_bias(layout, dtype):
    x, w, _ = _dw_inputs(2, 24, 11, 11, 3, dtype, layout)
    _check_dw(x, w, None, 1, 1, 1, "hardswish")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_batch_zero(layout):
    x, w, b = _dw_inputs(0, 16, 9, 9, 3, torch.float32, layout)
    y = ops.dwconv_bn_act(x, w, b, 2, 1, backend="cuda")
    assert y.shape == (0, 16, 5, 5) and y.device.type == "cuda"
    x, w, b = _dw_inputs(2, 0, 9, 9, 3, torch.float32, layout)
    assert ops.dwconv_bn_act(x, w, b, 1, 1, backend="cuda").shape == (2, 0, 9, 9)


def test_dwconv_empty_rows_with_padding():
    # H = 0 but padding makes the output non-empty: every tap is padding, so y = act(bias).
    # (F.conv2d refuses this input, so the expectation is written out.)
    x = torch.randn(1, 16, 0, 5, device=DEV)
    w, b = folded_dw_params(16, 3, device=DEV)
    y = ops.dwconv_bn_act(x, w, b, 1, 2, 1, "hardswish", backend="cuda")
    assert y.shape == (1, 16, 2, 7)
    torch.testing.assert_close(y, torch.nn.functional.hardswish(b)[None, :, None, None].expand_as(y))


@pytest.mark.parametrize("view", ["slice_w", "slice_c", "transposed_hw", "strided_batch", "cl_slice_c"])
def test_dwconv_non_contiguous(view):
    base = torch.randn(4, 24, 16, 18, device=DEV)
    x = {
        "slice_w": base[..., 1:15],
        "slice_c": base[:, 3:19],
        "transposed_hw": base.transpose(2, 3),
        "strided_batch": base[::2],
        "cl_slice_c": base.contiguous(memory_format=torch.channels_last)[:, 4:20],
    }[view]
    assert not x.is_contiguous()
    w, b = folded_dw_params(x.shape[1], 3, device=DEV)
    _check_dw(x, w, b, 2, 1, 1, "hardswish")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dwconv_misaligned_channels_last(dtype):
    # Dense channels_last view whose data pointer is one element off 16 bytes: the vector path
    # must not be taken.
    n, c, h, w = 2, 32, 9, 9
    flat = torch.randn(n * h * w * c + 1, device=DEV).to(dtype)
    x = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.data_ptr() % 16 != 0
    wt, b = folded_dw_params(c, 3, dtype=dtype, device=DEV)
    _check_dw(x, wt, b, 1, 1, 1, "relu")


def test_dwconv_non_contiguous_weight():
    x = torch.randn(1, 16, 10, 10, device=DEV)
    weight = torch.randn(16, 1, 5, 3, device=DEV).transpose(2, 3)
    bias = torch.randn(32, device=DEV)[::2]
    _check_dw(x, weight, bias, 1, 1, 1, "relu")


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_gradients(activation, layout):
    x = _layout(torch.randn(2, 12, 9, 9, device=DEV) * 3, layout).requires_grad_()
    w, b = folded_dw_params(12, 3, device=DEV)
    w.requires_grad_()
    b.requires_grad_()
    y = ops.dwconv_bn_act(x, w, b, 2, 1, 1, activation, backend="cuda")
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), (x, w, b))
    y_ref = reference.dwconv_bn_act(x, w, b, [2, 2], [1, 1], [1, 1], activation)
    want = torch.autograd.grad((y_ref * g).sum(), (x, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_dwconv_opcheck():
    x = torch.randn(2, 8, 7, 7, device=DEV).requires_grad_()
    w, b = folded_dw_params(8, 3, device=DEV)
    torch.library.opcheck(torch.ops.mnv3.dwconv_bn_act.default,
                          (x, w.requires_grad_(), b.requires_grad_(), [1, 1], [1, 1], [1, 1], "hardswish"))
    xc = torch.randn(2, 8, 7, 7, device=DEV).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.mnv3.dwconv_bn_act.default,
                          (xc, w.detach(), None, [2, 2], [1, 1], [1, 1], "relu"))


def test_dwconv_other_stream_and_device_guard():
    x, w, b = _dw_inputs(2, 32, 14, 14, 3, torch.float32, "channels_last")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "hardswish", backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    want = reference.dwconv_bn_act(x.double(), w.double(), b.double(), [1, 1], [1, 1], [1, 1], "hardswish")
    _close(y, want, torch.float32)


# ---------------------------------------------------------------------------------------------
# squeeze_excite
# ---------------------------------------------------------------------------------------------
def _check_se(x, params, dtype=None):
    dtype = dtype or x.dtype
    got = ops.squeeze_excite(x, *params, backend="cuda")
    want = reference.squeeze_excite(x.double(), *[p.double() for p in params])
    _close(got, want, dtype)
    assert got.dtype == x.dtype
    assert got.is_contiguous(memory_format=ops.output_memory_format(x))
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", SE_LAYERS, ids=lambda l: l.name)
def test_se_mobilenet_layers(layer, batch, layout, dtype):
    x = _layout(torch.randn(batch, layer.channels, layer.size, layer.size, device=DEV) * 2, layout).to(dtype)
    _check_se(x, se_params(layer.channels, layer.squeeze, dtype=dtype, device=DEV))


# Shapes that take each path: large samples at small batch (three kernels), large samples at a
# batch that fills the GPU (one kernel), tiny and ragged channel counts.
SE_CASES = [
    (1, 72, 56, 56, 24),
    (2, 16, 112, 112, 8),
    (1, 2000, 20, 20, 500),
    (200, 72, 28, 28, 24),
    (3, 13, 5, 7, 8),
    (2, 33, 1, 1, 8),
    (1, 1, 3, 3, 1),
    (4, 600, 1, 17, 3),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", SE_CASES, ids=str)
def test_se_paths(case, layout, dtype):
    n, c, h, w, r = case
    x = _layout(torch.randn(n, c, h, w, device=DEV) * 2, layout).to(dtype)
    _check_se(x, se_params(c, r, dtype=dtype, device=DEV))


@pytest.mark.slow  # run last by the GPU check
@pytest.mark.parametrize("layout", LAYOUTS)
def test_se_large_batch(layout):
    for n, c, s, r in [(64, 120, 28, 32), (256, 960, 7, 240), (256, 72, 28, 24)]:
        x = _layout(torch.randn(n, c, s, s, device=DEV), layout)
        _check_se(x, se_params(c, r, device=DEV))


def test_se_batch_zero_and_non_contiguous():
    p = se_params(24, 8, device=DEV)
    assert ops.squeeze_excite(torch.randn(0, 24, 5, 5, device=DEV), *p, backend="cuda").shape == (0, 24, 5, 5)
    base = torch.randn(3, 40, 9, 11, device=DEV)
    _check_se(base[:, 8:32], p)
    _check_se(base[:, 8:32, :, 1:10].transpose(2, 3), p)


def test_se_gradients():
    x = torch.randn(2, 24, 7, 7, device=DEV).contiguous(memory_format=torch.channels_last).requires_grad_()
    params = [t.requires_grad_() for t in se_params(24, 8, device=DEV)]
    y = ops.squeeze_excite(x, *params, backend="cuda")
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), (x, *params))
    want = torch.autograd.grad((reference.squeeze_excite(x, *params) * g).sum(), (x, *params))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_se_opcheck():
    x = torch.randn(2, 16, 5, 5, device=DEV).requires_grad_()
    params = [t.requires_grad_() for t in se_params(16, 8, device=DEV)]
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, (x, *params))


# ---------------------------------------------------------------------------------------------
# hardswish / hardsigmoid
# ---------------------------------------------------------------------------------------------
ELEMENTWISE = [("hardswish", torch.nn.functional.hardswish), ("hardsigmoid", torch.nn.functional.hardsigmoid)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (1001,), (3, 5, 7), (1, 1), (4, 960, 7, 7)], ids=str)
@pytest.mark.parametrize("name,fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise(name, fn, shape, dtype):
    x = (torch.randn(shape, device=DEV) * 4).to(dtype)
    got = getattr(ops, name)(x, backend="cuda")
    _close(got, fn(x.double()), dtype)
    assert got.dtype == dtype and got.stride() == x.stride()


@pytest.mark.parametrize("name,fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_layouts(name, fn):
    op = getattr(ops, name)
    x = (torch.randn(2, 24, 9, 9, device=DEV) * 4).contiguous(memory_format=torch.channels_last)
    y = op(x, backend="cuda")
    assert y.stride() == x.stride()
    _close(y, fn(x.double()), torch.float32)
    xt = torch.randn(6, 10, device=DEV).t()  # dense, transposed: strides kept
    assert op(xt, backend="cuda").stride() == xt.stride()
    _close(op(xt, backend="cuda"), fn(xt.double()), torch.float32)
    xs = torch.randn(4, 20, device=DEV)[:, ::3]  # not dense: packed output
    ys = op(xs, backend="cuda")
    assert ys.is_contiguous()
    _close(ys, fn(xs.double()), torch.float32)
    xm = torch.randn(1027, device=DEV)[1:]  # 4 bytes off 16-byte alignment
    _close(op(xm, backend="cuda"), fn(xm.double()), torch.float32)
    assert op(torch.empty(0, 3, device=DEV), backend="cuda").shape == (0, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_elementwise_in_place(name, fn, dtype):
    op_ = getattr(ops, name + "_")
    base = (torch.randn(2, 24, 9, 9, device=DEV) * 4).to(dtype)
    views = {"nchw": lambda t: t, "sliced": lambda t: t[:, ::3, 1:], "misaligned": lambda t: t.view(-1)[1:]}
    for label, pick in views.items():
        x = base.clone()
        want = x.clone()
        pick(want).copy_(fn(pick(want).double()).to(dtype))
        op_(pick(x), backend="cuda")
        _close(x, want.double(), dtype)   # only the view's elements change
    x = base.clone(memory_format=torch.channels_last)
    op_(x, backend="cuda")
    _close(x, fn(base.double()), dtype)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(getattr(torch.ops.mnv3, name + "_").default, (base.clone(),))


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_elementwise_gradients_and_opcheck(name):
    x = (torch.randn(3, 8, 5, 5, device=DEV) * 4).requires_grad_()
    y = getattr(ops, name)(x, backend="cuda")
    g = torch.randn_like(y)
    (got,) = torch.autograd.grad((y * g).sum(), x)
    (want,) = torch.autograd.grad((getattr(torch.nn.functional, name)(x) * g).sum(), x)
    torch.testing.assert_close(got, want)
    torch.library.opcheck(getattr(torch.ops.mnv3, name).default, (x,))


# ---------------------------------------------------------------------------------------------
# NaN propagates as in PyTorch (relu/hardsigmoid/hardswish keep NaN)
# ---------------------------------------------------------------------------------------------
def _same_nans(got, want, dtype=torch.float32):
    assert got.isnan().any(), "no NaN in the output: nothing was checked"
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=True)


def _nan_input(shape, layout, dtype=torch.float32):
    x = torch.randn(shape, device=DEV) * 3
    flat = x.view(-1)
    idx = torch.linspace(0, x.numel() - 1, 9, device=DEV).long()
    flat[idx] = torch.tensor([float("nan"), float("inf"), float("nan"), -float("inf"), float("nan"), 1.0,
                              float("nan"), 2.0, float("nan")], device=DEV)
    return _layout(x, layout).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(2, 32, 9, 9, 3, 1, 1), (2, 13, 9, 9, 5, 2, 2), (1, 16, 8, 8, 7, 1, 3)], ids=str)
def test_dwconv_relu6_clamps_at_both_bounds(case, layout, dtype):
    # Each kernel path (NHWC vector and scalar, NCHW, generic k7) with inputs wide enough that
    # relu6 meets both bounds: exactly 0 and 6 where F.relu6 gives them.
    n, c, h, w, k, stride, pad = case
    x, weight, bias = _dw_inputs(n, c, h, w, k, dtype, layout, scale=12.0)
    got = ops.dwconv_bn_act(x, weight, bias, stride, pad, 1, "relu6", backend="cuda")
    want = reference.dwconv_bn_act(x.double(), weight.double(), bias.double(), [stride] * 2, [pad] * 2, [1, 1],
                                   "relu6")
    assert (want == 0).any() and (want == 6).any() and ((want > 0) & (want < 6)).any()
    assert got.max().item() == 6.0 and got.min().item() == 0.0
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol)


# Each dwconv kernel path: NHWC vector (C % 8 == 0) and scalar, NCHW fast, generic (k7).
NAN_DW = [(2, 32, 9, 9, 3, 1, 1), (2, 13, 9, 9, 5, 2, 2), (1, 16, 8, 8, 7, 1, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", NAN_DW, ids=str)
def test_nan_dwconv(case, layout, activation, dtype):
    n, c, h, w, k, stride, pad = case
    x = _nan_input((n, c, h, w), layout, dtype)
    weight, bias = folded_dw_params(c, k, dtype=dtype, device=DEV)
    bias[c // 2] = float("nan")  # a whole output channel NaN, whatever the activation
    got = ops.dwconv_bn_act(x, weight, bias, stride, pad, 1, activation, backend="cuda")
    want = reference.dwconv_bn_act(x.double(), weight.double(), bias.double(), [stride] * 2, [pad] * 2, [1, 1],
                                   activation)
    _same_nans(got, want, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(3, 24, 5, 5, 8), (2, 16, 112, 112, 8)], ids=["single-kernel", "three-kernel"])
def test_nan_squeeze_excite(case, layout):
    n, c, h, w, r = case
    x = _layout(torch.randn(n, c, h, w, device=DEV), layout)
    x[1, 3, 2, 1] = float("nan")  # sample 1: every gate NaN
    w1, b1, w2, b2 = se_params(c, r, device=DEV)
    _same_nans(ops.squeeze_excite(x, w1, b1, w2, b2, backend="cuda"), reference.squeeze_excite(x, w1, b1, w2, b2))
    x = _layout(torch.randn(n, c, h, w, device=DEV), layout)
    nan_b1 = b1.clone()
    nan_b1[2] = float("nan")  # the hidden ReLU keeps it: every gate NaN
    _same_nans(ops.squeeze_excite(x, w1, nan_b1, w2, b2, backend="cuda"),
               reference.squeeze_excite(x, w1, nan_b1, w2, b2))
    nan_b2 = b2.clone()
    nan_b2[7] = float("nan")  # the gate's hardsigmoid keeps it: channel 7 NaN
    _same_nans(ops.squeeze_excite(x, w1, b1, w2, nan_b2, backend="cuda"),
               reference.squeeze_excite(x, w1, b1, w2, nan_b2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name,fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_nan_elementwise(name, fn, dtype):
    x = _nan_input((3, 24, 9, 9), "nchw", dtype)
    want = fn(x.double())
    for view in (x, x.view(-1)[1:]):  # vector path, then scalar (misaligned) path
        _same_nans(getattr(ops, name)(view, backend="cuda"), fn(view.double()), dtype)
    y = x.clone()
    getattr(ops, name + "_")(y, backend="cuda")
    _same_nans(y, want, dtype)


# ---------------------------------------------------------------------------------------------
# More than 2^31 elements (fp16, ~4 GiB per tensor): 64-bit offsets on every kernel path.
# Outputs are checked on their first, middle and last samples (or rows) against the reference.
# ---------------------------------------------------------------------------------------------
BIG = 2**31 + 2**22


@pytest.fixture
def _free_memory():
    yield
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _big_x(n, c, h, w, layout):
    assert n * c * h * w > 2**31
    if layout == "channels_last":
        x = torch.empty(n, h, w, c, device=DEV, dtype=torch.float16).permute(0, 3, 1, 2)
    else:
        x = torch.empty(n, c, h, w, device=DEV, dtype=torch.float16)
    return x.normal_()


def _check_big_dw(x, k, stride, pad, activation="hardswish"):
    c = x.shape[1]
    w, b = folded_dw_params(c, k, dtype=torch.float16, device=DEV)
    y = ops.dwconv_bn_act(x, w, b, stride, pad, 1, activation, backend="cuda")
    assert y.is_contiguous(memory_format=ops.output_memory_format(x))
    for i in sorted({0, x.shape[0] // 2, x.shape[0] - 1}):
        want = reference.dwconv_bn_act(x[i:i + 1].float(), w.float(), b.float(), [stride] * 2, [pad] * 2, [1, 1],
                                       activation)
        torch.testing.assert_close(y[i:i + 1].float(), want, rtol=1e-2, atol=1e-2, msg=f"sample {i}")


@pytest.mark.slow
@pytest.mark.usefixtures("_free_memory")
@pytest.mark.parametrize("path", ["nhwc-vector", "nhwc-scalar", "nchw", "generic"])
def test_big_dwconv(path):
    if path == "nhwc-vector":
        _check_big_dw(_big_x(2100, 64, 112, 144, "channels_last"), 3, 1, 1)
    elif path == "nhwc-scalar":
        _check_big_dw(_big_x(2060, 13, 280, 288, "channels_last"), 5, 2, 2)
    elif path == "nchw":
        _check_big_dw(_big_x(2100, 64, 112, 144, "nchw"), 3, 2, 1)
    else:
        _check_big_dw(_big_x(2100, 64, 112, 144, "nchw"), 7, 1, 3, "relu")


@pytest.mark.slow
@pytest.mark.usefixtures("_free_memory")
def test_big_dwconv_one_sample_over_2_31():
    # A single sample larger than 2^31 elements (offsets inside one sample need 64 bits too).
    x = _big_x(1, 16, 11600, 11600, "channels_last")
    w, b = folded_dw_params(16, 3, dtype=torch.float16, device=DEV)
    y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "relu", backend="cuda")
    rows = 4  # the last rows, from the input rows that produce them (plus one halo row)
    want = reference.dwconv_bn_act(x[:, :, -rows - 1:].float(), w.float(), b.float(), [1, 1], [1, 1], [1, 1],
                                   "relu")
    torch.testing.assert_close(y[:, :, -rows:].float(), want[:, :, 1:], rtol=1e-2, atol=1e-2)


@pytest.mark.slow
@pytest.mark.usefixtures("_free_memory")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(45700, 960, 7, 7, 240), (2, 16, 8200, 8200, 8)], ids=["single-kernel", "three-kernel"])
def test_big_squeeze_excite(case, layout):
    n, c, h, w, r = case
    x = _big_x(n, c, h, w, layout)
    p = se_params(c, r, dtype=torch.float16, device=DEV)
    y = ops.squeeze_excite(x, *p, backend="cuda")
    for i in sorted({0, n // 2, n - 1}):
        want = reference.squeeze_excite(x[i:i + 1].float(), *[t.float() for t in p])
        torch.testing.assert_close(y[i:i + 1].float(), want, rtol=1e-2, atol=1e-2, msg=f"sample {i}")


@pytest.mark.slow
@pytest.mark.usefixtures("_free_memory")
@pytest.mark.parametrize("name,fn", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_big_elementwise(name, fn):
    x = torch.empty(BIG, device=DEV, dtype=torch.float16).normal_().mul_(4)
    checks = [slice(0, 4096), slice(2**31 - 2048, 2**31 + 2048), slice(BIG - 4096, BIG)]
    want = [fn(x[s].float()) for s in checks]
    y = getattr(ops, name)(x, backend="cuda")
    for s, wv in zip(checks, want):
        torch.testing.assert_close(y[s].float(), wv, rtol=1e-2, atol=1e-2)
    del y
    # 2 bytes off 16-byte alignment: the scalar path.
    xs = x[1:]
    y = getattr(ops, name)(xs, backend="cuda")
    for s in checks:
        part = slice(max(s.start - 1, 0), s.stop - 1)
        torch.testing.assert_close(y[part].float(), fn(xs[part].float()), rtol=1e-2, atol=1e-2)
    del y, xs
    getattr(ops, name + "_")(x, backend="cuda")
    for s, wv in zip(checks, want):
        torch.testing.assert_close(x[s].float(), wv, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------------------
# torch.compile with CUDA graphs
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # run last by the GPU check
def test_compile_reduce_overhead():
    x, w, b = _dw_inputs(2, 64, 14, 14, 3, torch.float32, "channels_last")
    p = se_params(64, 16, device=DEV)

    def block(x):
        y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "hardswish", backend="cuda")
        y = ops.squeeze_excite(y, *p, backend="cuda")
        return ops.hardswish(y, backend="cuda")

    compiled = torch.compile(block, fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        want = block(x).clone()
        for _ in range(3):  # warm-up runs, then replays of the recorded graph
            got = compiled(x).clone()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad input on CUDA
# ---------------------------------------------------------------------------------------------
def test_bad_input_weight_on_cpu():
    x = torch.randn(1, 8, 6, 6, device=DEV)
    w, b = folded_dw_params(8, 3)
    with pytest.raises((ValueError, RuntimeError), match="weight is on cpu"):
        ops.dwconv_bn_act(x, w, b.to(DEV), 1, 1, backend="cuda")
    with pytest.raises(RuntimeError, match="weight is on cpu"):
        torch.ops.mnv3.dwconv_bn_act(x, w, b.to(DEV), [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(RuntimeError, match="bias is on cpu"):
        torch.ops.mnv3.dwconv_bn_act(x, w.to(DEV), b, [1, 1], [1, 1], [1, 1], "relu")
    p = se_params(8, 8)
    with pytest.raises(RuntimeError, match="fc1_weight is on cpu"):
        torch.ops.mnv3.squeeze_excite(x, *p)


def test_bad_input_dtype():
    x = torch.randn(1, 8, 6, 6, device=DEV, dtype=torch.float64)
    w, b = folded_dw_params(8, 3, dtype=torch.float64, device=DEV)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.mnv3.dwconv_bn_act(x, w, b, [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(TypeError):
        ops.dwconv_bn_act(x, w, b, 1, 1, backend="cuda")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.mnv3.hardswish(x)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        torch.ops.mnv3.squeeze_excite(x, *se_params(8, 8, dtype=torch.float64, device=DEV))
    with pytest.raises(TypeError, match="does not match"):
        torch.ops.mnv3.dwconv_bn_act(x.float(), w, b, [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(TypeError):
        torch.ops.mnv3.hardsigmoid(torch.ones(4, device=DEV, dtype=torch.int32))


def test_bad_input_arguments():
    x = torch.randn(1, 8, 6, 6, device=DEV)
    w, b = folded_dw_params(8, 3, device=DEV)
    with pytest.raises(ValueError, match="activation"):
        torch.ops.mnv3.dwconv_bn_act(x, w, b, [1, 1], [1, 1], [1, 1], "gelu")
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        torch.ops.mnv3.dwconv_bn_act(x[..., :1, :1], w, b, [1, 1], [0, 0], [1, 1], "relu")
    with pytest.raises(ValueError, match="channels"):
        torch.ops.mnv3.dwconv_bn_act(x[:, :4], w, b, [1, 1], [1, 1], [1, 1], "relu")
    torch.cuda.synchronize()  # the process and the device are still fine


# ---------------------------------------------------------------------------------------------
# Converted models
# ---------------------------------------------------------------------------------------------
def _backend_or_skip(backend):
    if backend not in ops.backends():
        pytest.skip(f"backend {backend!r} not available: {ops._unavailable_reason(backend)}")


def _check_converted(model, backend, batch=2, layout="channels_last", dtype=torch.float32):
    randomize_model_bn_(model)
    model = model.eval().to(DEV)
    x = _layout(torch.randn(batch, 3, 224, 224, device=DEV), layout)
    with torch.no_grad():
        want = model(x)
        converted = mnv3_kernels.convert(copy.deepcopy(model), backend=backend).eval()
        if layout == "channels_last":
            converted = converted.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            converted = converted.to(dtype)
            got = converted(x.to(dtype)).float()
            torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)
        else:
            got = converted(x)
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("arch", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_converted_torchvision(arch, backend):
    tv = pytest.importorskip("torchvision")
    _backend_or_skip(backend)
    _check_converted(getattr(tv.models, arch)(), backend)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_converted_torchvision_fp16_nchw(backend):
    tv = pytest.importorskip("torchvision")
    _backend_or_skip(backend)
    _check_converted(tv.models.mobilenet_v3_large(), backend, layout="nchw", dtype=torch.float16)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mnasnet0_5"])
def test_converted_mobilenet_v2_family(arch):
    # "auto": the depthwise layers on the CUDA kernels (relu6 in MobileNetV2), the 1x1 and stem
    # layers, which have CPU kernels only, on the reference path.
    tv = pytest.importorskip("torchvision")
    _backend_or_skip("cuda")
    _check_converted(getattr(tv.models, arch)(), "auto")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_converted_timm(backend):
    timm = pytest.importorskip("timm")
    _backend_or_skip(backend)
    _check_converted(timm.create_model("mobilenetv3_large_100", pretrained=False), backend)
