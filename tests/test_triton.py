"""Triton backend against the reference path.

Runs on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1 in the environment of the
pytest process, read at import) and on CUDA tensors when a GPU is present (`gpu` marker). The
interpreter executes every program in Python, so CPU cases use reduced spatial sizes.

    TRITON_INTERPRET=1 python -m pytest -q tests/test_triton.py   # CPU, interpreter
    python -m pytest -q tests/test_triton.py                       # GPU (skips without one)
"""
import pytest
import torch

pytest.importorskip("triton")

import mnv3_kernels.triton as mt  # noqa: E402
from mnv3_kernels import layers, ops, reference  # noqa: E402

from conftest import TRITON_INTERPRET, folded_dw_params, se_params  # noqa: E402

if not mt.AVAILABLE:
    pytest.skip(f"Triton backend unavailable: {mt.UNAVAILABLE_REASON}", allow_module_level=True)

CPU = pytest.param("cpu", marks=pytest.mark.skipif(not TRITON_INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1"))
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    TRITON_INTERPRET, reason="with TRITON_INTERPRET=1 the Triton ops take CPU tensors")])
DEVICES = [CPU, CUDA]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: dict(atol=1e-4, rtol=1e-4), F16: dict(atol=1e-2, rtol=1e-2), BF16: dict(atol=5e-2, rtol=5e-2)}
# Every dtype on the GPU; under the interpreter fp32 plus a few half-precision cases.
DTYPES = [pytest.param(F32, id="fp32"),
          pytest.param(F16, id="fp16", marks=pytest.mark.gpu),
          pytest.param(BF16, id="bf16", marks=pytest.mark.gpu)]


def _dtype_ok(device, dtype):
    if device == "cpu" and dtype != F32:
        pytest.skip("half precision is covered by dedicated interpreter cases")


def _check(out, expected, dtype, x):
    assert out.dtype == dtype
    assert out.shape == expected.shape
    fmt = ops.output_memory_format(x)
    assert out.is_contiguous(memory_format=fmt), f"output strides {out.stride()} not in {fmt}"
    torch.testing.assert_close(out.float(), expected.float(), **TOL[dtype])


def _ref_dw(x, w, b, stride, padding, dilation, act):
    # fp32 reference from the same (rounded) inputs.
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return reference.dwconv_bn_act(x.float(), w.float(), None if b is None else b.float(),
                                   pair(stride), pair(padding), pair(dilation), act)


def _run_dw(x, w, b, stride, padding, dilation, act):
    out = ops.dwconv_bn_act(x, w, b, stride, padding, dilation, act, backend="triton")
    _check(out, _ref_dw(x, w, b, stride, padding, dilation, act), x.dtype, x)
    return out


# ----------------------------------------------------------------------------------------------
# Depthwise conv + BN + activation
# ----------------------------------------------------------------------------------------------
def _model_layers(device):
    """One k3 s1, k3 s2, k5 s2 and k5 s1 layer of MobileNetV3 (channels as in the model)."""
    picked = []
    for k, s in ((3, 1), (3, 2), (5, 2), (5, 1)):
        layer = next(L for L in layers.LARGE if L.kernel == k and L.stride == s)
        picked.append(layer)
    return picked


MODEL_LAYERS = _model_layers(None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", MODEL_LAYERS, ids=[L.name for L in MODEL_LAYERS])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_dwconv_model_layers(device, dtype, layer, channels_last):
    _dtype_ok(device, dtype)
    size = min(layer.size, 14) if device == "cpu" else layer.size
    batch = 2 if device == "cpu" else 4
    x = torch.randn(batch, layer.channels, size, size, device=device).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = folded_dw_params(layer.channels, layer.kernel, dtype, device)
    _run_dw(x, w, b, layer.stride, layer.padding, 1, layer.activation)


# (N, C, H, W, kernel (kh, kw), stride, padding, dilation, activation, bias)
AWKWARD = {
    "odd-hw-s2": (2, 24, 9, 11, (3, 3), 2, 1, 1, "hardswish", True),
    "h1": (2, 16, 1, 9, (3, 3), 1, 1, 1, "relu", True),
    "w1": (1, 16, 7, 1, (5, 5), 2, 2, 1, "hardswish", True),
    "c13": (2, 13, 8, 8, (3, 3), 1, 1, 1, "relu", True),
    "batch0": (0, 16, 8, 8, (3, 3), 1, 1, 1, "relu", True),
    "dilation2": (1, 24, 10, 10, (3, 3), 1, 2, 2, "hardswish", True),
    "k7": (1, 16, 9, 9, (7, 7), 1, 3, 1, "none", True),
    "kh3-kw5": (1, 16, 8, 9, (3, 5), (1, 2), (1, 2), 1, "relu", True),
    "k1x3-nopad": (2, 8, 5, 6, (1, 3), 1, 0, 1, "none", False),
    "no-bias-s2-pad0": (1, 32, 9, 9, (3, 3), 2, 0, 1, "hardswish", False),
    "k5-stride3-dil-mixed": (1, 8, 12, 11, (5, 3), (3, 1), (2, 0), (1, 2), "relu", True),
    "relu6-odd-hw-s2": (2, 24, 9, 11, (3, 3), 2, 1, 1, "relu6", True),
    "relu6-no-bias-k5": (1, 20, 8, 7, (5, 5), 1, 2, 1, "relu6", False),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_dwconv_awkward(device, layout, case):
    n, c, h, w_, (kh, kw), stride, padding, dilation, act, has_bias = AWKWARD[case]
    scale = 8 if act == "relu6" else 1  # relu6 meets both of its bounds
    if layout == "strided":
        # Every other column of a wider tensor: neither NCHW- nor NHWC-contiguous.
        x = (torch.randn(n, c, h, 2 * w_, device=device) * scale)[..., ::2]
    else:
        x = torch.randn(n, c, h, w_, device=device) * scale
        if layout == "nhwc":
            x = x.to(memory_format=torch.channels_last)
    w, b = folded_dw_params(c, kh, F32, device, kernel_w=kw)
    out = _run_dw(x, w, b if has_bias else None, stride, padding, dilation, act)
    if act == "relu6" and out.numel():
        assert (out == 6).any() and (out == 0).any() and ((out > 0) & (out < 6)).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [pytest.param(F16, id="fp16"), pytest.param(BF16, id="bf16")])
def test_dwconv_half(device, dtype):
    x = torch.randn(2, 24, 7, 9, device=device).to(dtype).to(memory_format=torch.channels_last)
    w, b = folded_dw_params(24, 3, dtype, device)
    _run_dw(x, w, b, 2, 1, 1, "hardswish")
    _run_dw(x.contiguous(), w, b, 1, 1, 1, "relu")


@pytest.mark.skipif(not TRITON_INTERPRET, reason="the int32 overflow checker only runs in the interpreter")
def test_dwconv_int32_indexing_under_overflow_checker(monkeypatch):
    # Interpreter runs use int64 indices for speed; this runs the GPU's int32 path once.
    monkeypatch.setattr(mt._ops.K, "FORCE_IDX64", False)
    x = torch.randn(1, 8, 6, 5).to(memory_format=torch.channels_last)
    w, b = folded_dw_params(8, 3)
    _run_dw(x, w, b, 1, 1, 1, "hardswish")
    _run_dw(x.contiguous(), w, b, 2, 1, 1, "relu")


# ----------------------------------------------------------------------------------------------
# Squeeze-excite
# ----------------------------------------------------------------------------------------------
def _model_se(device):
    picked = [layers.SE_LAYERS[0], layers.SE_LAYERS[-1]]  # smallest and largest channel counts
    if device == "cuda":
        picked = layers.SE_LAYERS
    return picked


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_se_model_layers(device, dtype, channels_last):
    _dtype_ok(device, dtype)
    for se in _model_se(device):
        size = min(se.size, 7) if device == "cpu" else se.size
        x = torch.randn(2, se.channels, size, size, device=device).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        p = se_params(se.channels, se.squeeze, dtype, device)
        out = ops.squeeze_excite(x, *p, backend="triton")
        _check(out, reference.squeeze_excite(x.float(), *[t.float() for t in p]), dtype, x)


SE_AWKWARD = {
    # (N, C, R, H, W)
    "c13-r5": (2, 13, 5, 5, 3),
    "hw1": (3, 24, 8, 1, 1),
    "batch0": (0, 16, 8, 4, 4),
    "large-plane": (1, 8, 8, 40, 30),  # several pixel splits in the pooling pass
    "r-over-128": (1, 160, 136, 2, 2),  # hidden layer spans several blocks
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("case", list(SE_AWKWARD), ids=list(SE_AWKWARD))
def test_se_awkward(device, layout, case):
    n, c, r, h, w = SE_AWKWARD[case]
    if layout == "strided":
        x = torch.randn(n, h, w, 2 * c, device=device).permute(0, 3, 1, 2)[:, ::2]
    else:
        x = torch.randn(n, c, h, w, device=device)
        if layout == "nhwc":
            x = x.to(memory_format=torch.channels_last)
    w1, b1, w2, b2 = se_params(c, r, F32, device)
    # fc weights as (out, in, 1, 1), as nn.Conv2d stores them.
    out = ops.squeeze_excite(x, w1[:, :, None, None], b1, w2[:, :, None, None], b2, backend="triton")
    _check(out, reference.squeeze_excite(x, w1, b1, w2, b2), F32, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [pytest.param(F16, id="fp16"), pytest.param(BF16, id="bf16")])
def test_se_half(device, dtype):
    x = torch.randn(2, 40, 5, 6, device=device).to(dtype).to(memory_format=torch.channels_last)
    p = se_params(40, 16, dtype, device)
    out = ops.squeeze_excite(x, *p, backend="triton")
    _check(out, reference.squeeze_excite(x.float(), *[t.float() for t in p]), dtype, x)


# ----------------------------------------------------------------------------------------------
# Fused depthwise + SE pooling (Triton-only entry points)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_dwconv_pool_then_se(device, channels_last):
    x = torch.randn(2, 40, 11, 9, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = folded_dw_params(40, 5, F32, device)
    out, sums = mt.dwconv_bn_act_pool(x, w, b, 2, 2, 1, "hardswish")
    expected = _ref_dw(x, w, b, 2, 2, 1, "hardswish")
    _check(out, expected, F32, x)
    assert sums.shape == (2, 40) and sums.dtype == F32
    torch.testing.assert_close(sums, expected.sum((2, 3)), atol=1e-3, rtol=1e-4)
    p = se_params(40, 16, F32, device)
    se = mt.squeeze_excite_from_sums(out, sums, *p)
    _check(se, reference.squeeze_excite(expected, *p), F32, out)


# ----------------------------------------------------------------------------------------------
# Elementwise activations
# ----------------------------------------------------------------------------------------------
def _elementwise_inputs(device, dtype):
    base = torch.randn(2, 12, 5, 7, device=device) * 4  # covers all three pieces of h-swish
    yield "nchw", base
    yield "nhwc", base.to(memory_format=torch.channels_last)
    yield "permuted", base.permute(3, 1, 0, 2)  # dense, unusual order: kept by empty_like
    yield "sliced", base[:, 1::3, :, ::2]  # not dense: output contiguous
    yield "1d-odd", torch.randn(1001, device=device) * 4
    yield "empty", torch.randn(0, 3, device=device)
    yield "scalar", torch.tensor(1.5, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [pytest.param(F32, id="fp32"), pytest.param(F16, id="fp16"),
                                   pytest.param(BF16, id="bf16")])
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_elementwise(device, dtype, name):
    for label, x in _elementwise_inputs(device, dtype):
        x = x.to(dtype)
        out = getattr(ops, name)(x, backend="triton")
        assert out.stride() == torch.empty_like(x).stride(), label
        torch.testing.assert_close(out.float(), getattr(reference, name)(x.float()), **TOL[dtype], msg=label)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [pytest.param(F32, id="fp32"), pytest.param(F16, id="fp16"),
                                   pytest.param(BF16, id="bf16")])
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_elementwise_in_place(device, dtype, name):
    base = (torch.randn(2, 12, 6, 8, device=device) * 4).to(dtype)
    views = {"nchw": lambda t: t, "permuted": lambda t: t.permute(0, 2, 3, 1),
             "sliced": lambda t: t[:, 1::3, :, ::2]}
    for label, pick in [*views.items(), ("nhwc", views["nchw"])]:
        x = base.clone(memory_format=torch.channels_last if label == "nhwc" else torch.contiguous_format)
        want = x.clone()
        pick(want).copy_(getattr(reference, name)(pick(want).float()).to(dtype))
        assert getattr(ops, name + "_")(pick(x), backend="triton") is not None
        # The view's elements are written, nothing else.
        torch.testing.assert_close(x.float(), want.float(), **TOL[dtype], msg=label)
    x = torch.randn(4, device=device, requires_grad=True) * 1
    with pytest.raises(RuntimeError, match="requires grad"):
        getattr(ops, name + "_")(x, backend="triton")


# ----------------------------------------------------------------------------------------------
# Autograd, operator checks, torch.compile
# ----------------------------------------------------------------------------------------------
def _grads(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    torch.manual_seed(0)
    (out * torch.randn_like(out)).sum().backward()
    return [t.grad for t in inputs]


@pytest.mark.parametrize("device", DEVICES)
def test_autograd(device):
    x = torch.randn(1, 8, 5, 6, device=device)
    w, b = folded_dw_params(8, 3, F32, device)
    for act, scale in (("relu", 1), ("hardswish", 1), ("relu6", 8)):
        got = _grads(lambda x, w, b: ops.dwconv_bn_act(x, w, b, 2, 1, 1, act, backend="triton"), [x * scale, w, b])
        want = _grads(lambda x, w, b: reference.dwconv_bn_act(x, w, b, [2, 2], [1, 1], [1, 1], act),
                      [x * scale, w, b])
        for g, r in zip(got, want):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    p = se_params(8, 8, F32, device)
    got = _grads(lambda *a: ops.squeeze_excite(*a, backend="triton"), [x, *p])
    want = _grads(reference.squeeze_excite, [x, *p])
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    for name in ("hardswish", "hardsigmoid"):
        got = _grads(lambda t: getattr(ops, name)(t, backend="triton"), [x * 4])
        want = _grads(getattr(reference, name), [x * 4])
        torch.testing.assert_close(got[0], want[0])


def _opcheck_cases(device):
    x = torch.randn(1, 8, 5, 5, device=device)
    w, b = folded_dw_params(8, 3, F32, device)
    p = se_params(8, 8, F32, device)
    return {
        "dwconv_bn_act": (x, w, b, [1, 1], [1, 1], [1, 1], "hardswish"),
        "squeeze_excite": (x.to(memory_format=torch.channels_last), *p),
        "hardswish": (x,),
        "hardsigmoid": (x,),
        "hardswish_": (x.clone() * 4,),
        "hardsigmoid_": (x.clone() * 4,),
    }


# Under the interpreter each opcheck sub-test reruns the kernels in Python: the schema and fake
# tensor checks are the ones that matter there; the GPU runs opcheck's full default set.
_INTERPRET_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["dwconv_bn_act", "squeeze_excite", "hardswish", "hardsigmoid",
                                  "hardswish_", "hardsigmoid_"])
def test_opcheck(device, name):
    args = _opcheck_cases(device)[name]
    op = getattr(torch.ops.mnv3_triton, name).default
    kwargs = {"test_utils": _INTERPRET_OPCHECK} if device == "cpu" else {}
    torch.library.opcheck(op, args, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    # Under the interpreter the ops are opaque custom ops (the interpreter cannot run on fake
    # tensors), so CPU compiles with aot_eager; on the GPU Inductor sees the Triton kernels.
    backend = "aot_eager" if device == "cpu" else "inductor"
    x = torch.randn(1, 16, 7, 7, device=device).to(memory_format=torch.channels_last)
    w, b = folded_dw_params(16, 3, F32, device)
    p = se_params(16, 8, F32, device)

    def block(x):
        y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "hardswish", backend="triton")
        if device == "cpu":  # keep the interpreted run short
            return y * 2.0
        y = ops.squeeze_excite(y, *p, backend="triton")
        return ops.hardswish(y * 2.0, backend="triton")

    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    out = compiled(x)
    expected = _ref_dw(x, w, b, 1, 1, 1, "hardswish")
    if device == "cpu":
        expected = expected * 2.0
    else:
        expected = reference.hardswish(reference.squeeze_excite(expected, *p) * 2.0)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Direct operator calls fail cleanly on bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_direct_call_errors(device):
    dw = torch.ops.mnv3_triton.dwconv_bn_act
    x = torch.randn(1, 8, 5, 5, device=device)
    w, b = folded_dw_params(8, 3, F32, device)
    with pytest.raises(ValueError, match="weight has 4 channels"):
        dw(x, w[:4], b, [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(ValueError, match="activation"):
        dw(x, w, b, [1, 1], [1, 1], [1, 1], "gelu")
    with pytest.raises(ValueError, match="stride"):
        dw(x, w, b, [0, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(ValueError, match="padded input height"):
        dw(x[:, :, :1], w, b, [1, 1], [0, 0], [1, 1], "relu")
    with pytest.raises(ValueError, match="bias"):
        dw(x, w, b[:3], [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(TypeError, match="dtype"):
        dw(x.double(), w.double(), b.double(), [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(TypeError, match="weight has dtype"):
        dw(x, w.half(), b, [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(ValueError, match="x must be 4-D"):
        dw(x[0], w, b, [1, 1], [1, 1], [1, 1], "relu")
    p = se_params(8, 4, F32, device)
    with pytest.raises(ValueError, match="fc2_weight"):
        torch.ops.mnv3_triton.squeeze_excite(x, p[0], p[1], p[2][:, :3], p[3])
    with pytest.raises(ValueError, match="fc1_bias"):
        torch.ops.mnv3_triton.squeeze_excite(x, p[0], p[1][:2], p[2], p[3])
    wrong = "cuda" if device == "cpu" else "cpu"
    if wrong == "cpu" or torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs"):
            torch.ops.mnv3_triton.hardswish(torch.randn(4, device=wrong))


# ----------------------------------------------------------------------------------------------
# NaN propagates as in PyTorch (relu/relu6/hardsigmoid/hardswish keep NaN)
# ----------------------------------------------------------------------------------------------
def _with_nans(x):
    """x with NaN, +inf and -inf at a few spread positions (samples, channels, borders)."""
    x = x.clone()
    flat = x.view(-1) if x.is_contiguous() else None
    idx = torch.linspace(0, x.numel() - 1, 7).long()
    vals = torch.tensor([float("nan"), float("inf"), float("nan"), -float("inf"), float("nan"), 1.0, float("nan")])
    if flat is None:
        y = x.contiguous()
        y.view(-1)[idx] = vals.to(device=x.device, dtype=x.dtype)
        x.copy_(y)
    else:
        flat[idx] = vals.to(device=x.device, dtype=x.dtype)
    return x


def _assert_same_nans(got, want, msg=""):
    assert got.isnan().any(), f"{msg}: no NaN in the output, so nothing was checked"
    torch.testing.assert_close(got.float(), want.float(), atol=1e-4, rtol=1e-4, equal_nan=True, msg=msg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act", reference.ACTIVATIONS)
def test_nan_dwconv(device, channels_last, act):
    x = _with_nans(torch.randn(2, 16, 7, 6, device=device))
    # A NaN bias channel: every output of that channel is NaN whatever the activation.
    w, b = folded_dw_params(16, 3, F32, device)
    b[5] = float("nan")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    want = _ref_dw(x, w, b, 1, 1, 1, act)
    got = ops.dwconv_bn_act(x, w, b, 1, 1, 1, act, backend="triton")
    _assert_same_nans(got, want, f"dwconv {act}")
    out, sums = mt.dwconv_bn_act_pool(x, w, b, 2, 1, 1, act)
    want = _ref_dw(x, w, b, 2, 1, 1, act)
    _assert_same_nans(out, want, f"dwconv_pool {act}")
    _assert_same_nans(sums, want.sum((2, 3)), f"dwconv_pool sums {act}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_nan_squeeze_excite(device, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 24, 5, 4, device=device).contiguous(memory_format=fmt)
    x[1, 3, 2, 1] = float("nan")  # sample 1: the mean, hence every gate, is NaN
    w1, b1, w2, b2 = se_params(24, 8, F32, device)
    _assert_same_nans(ops.squeeze_excite(x, w1, b1, w2, b2, backend="triton"),
                      reference.squeeze_excite(x, w1, b1, w2, b2), "NaN input")
    x = torch.randn(2, 24, 5, 4, device=device).contiguous(memory_format=fmt)
    b1 = b1.clone()
    b1[2] = float("nan")  # the hidden ReLU must keep it: every gate NaN
    _assert_same_nans(ops.squeeze_excite(x, w1, b1, w2, b2, backend="triton"),
                      reference.squeeze_excite(x, w1, b1, w2, b2), "NaN hidden unit")
    b1 = se_params(24, 8, F32, device)[1]
    b2 = b2.clone()
    b2[7] = float("nan")  # the gate's hardsigmoid must keep it: channel 7 NaN
    _assert_same_nans(ops.squeeze_excite(x, w1, b1, w2, b2, backend="triton"),
                      reference.squeeze_excite(x, w1, b1, w2, b2), "NaN gate")
    # Given sums with a NaN (sample 0): that sample's gates, hence its output, are all NaN.
    w1, b1, w2, b2 = se_params(24, 8, F32, device)
    sums = x.sum((2, 3))
    sums[0, 4] = float("nan")
    got = mt.squeeze_excite_from_sums(x, sums, w1, b1, w2, b2)
    assert got[0].isnan().all() and not got[1].isnan().any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_nan_elementwise(device, name):
    x = _with_nans(torch.randn(3, 8, 5, 5, device=device) * 4)
    want = getattr(torch.nn.functional, name)(x)
    _assert_same_nans(getattr(ops, name)(x, backend="triton"), want, name)
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = x.clone(memory_format=fmt)
        getattr(ops, name + "_")(y, backend="triton")
        _assert_same_nans(y, want, name + "_")


# ----------------------------------------------------------------------------------------------
# Autotuning: every config really benchmarked (as on a GPU), keys, the one-config switch
# ----------------------------------------------------------------------------------------------
def _autotuned_kernels():
    from triton.runtime.autotuner import Autotuner
    return {name: k for name, k in vars(mt._ops.K).items() if isinstance(k, Autotuner)}


@pytest.fixture
def gpu_autotuning(monkeypatch):
    """Every autotuned kernel gets its full GPU config list and a benchmark that runs each config
    on the real arguments twice (a warm-up and a timed run, as triton.testing.do_bench does),
    reporting times that rank the configs in a fixed but arbitrary order. Yields the number of
    benchmark calls so far (a list, one entry per call)."""
    calls = []
    for name, kernel in _autotuned_kernels().items():
        assert len(kernel.gpu_configs) > 1, name
        monkeypatch.setattr(kernel, "configs", list(kernel.gpu_configs))
        monkeypatch.setattr(kernel, "cache", {})

        def bench(kernel_call, quantiles=None, _name=name, **kwargs):
            calls.append(_name)
            kernel_call()
            kernel_call()
            t = float((len(calls) * 7) % 5)
            return [t] * (len(quantiles) if quantiles else 1)

        monkeypatch.setitem(kernel.__dict__, "do_bench", bench)  # (do_bench is a cached property)
    yield calls


@pytest.mark.skipif(not TRITON_INTERPRET, reason="stubs the autotuner's benchmark (interpreter only)")
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_in_place_survives_autotuning(gpu_autotuning, name):
    # On a GPU the autotuner benchmarks every config of a kernel on its real arguments: an
    # in-place launch through an autotuned kernel would apply the activation once per run.
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = (torch.randn(2, 12, 6, 8) * 4).contiguous(memory_format=fmt)
        want = getattr(reference, name)(x)
        getattr(ops, name + "_")(x, backend="triton")
        torch.testing.assert_close(x, want, msg=str(fmt))
        # The out-of-place op on the same input is benchmarked (once per key), and still right.
        y = (torch.randn(2, 12, 6, 8) * 4).contiguous(memory_format=fmt)
        torch.testing.assert_close(getattr(ops, name)(y, backend="triton"), getattr(reference, name)(y))
    assert gpu_autotuning.count("elementwise") == len(mt._ops.K.elementwise.gpu_configs)


@pytest.mark.skipif(not TRITON_INTERPRET, reason="stubs the autotuner's benchmark (interpreter only)")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_autotuned_ops_survive_autotuning(gpu_autotuning, channels_last):
    # Each autotuned op, benchmarked over all its GPU configs, still returns the right result
    # (and the pooled variant's sums, written by every benchmarked config, are right too).
    x = torch.randn(2, 24, 9, 7)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w, b = folded_dw_params(24, 3)
    _run_dw(x, w, b, 2, 1, 1, "hardswish")
    out, sums = mt.dwconv_bn_act_pool(x, w, b, 1, 1, 1, "relu")
    want = _ref_dw(x, w, b, 1, 1, 1, "relu")
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sums, want.sum((2, 3)), atol=1e-3, rtol=1e-4)
    p = se_params(24, 8)
    torch.testing.assert_close(ops.squeeze_excite(x, *p, backend="triton"), reference.squeeze_excite(x, *p),
                               atol=1e-4, rtol=1e-4)
    assert set(gpu_autotuning) >= {"dwconv_nhwc" if channels_last else "dwconv_nchw",
                                   "dwconv_pool_nhwc" if channels_last else "dwconv_pool_nchw",
                                   "se_scale_nhwc" if channels_last else "se_scale_nchw"}


def test_tune_bucket():
    bucket = mt._ops.K.tune_bucket
    assert [bucket(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 256, 257)] == [1, 1, 2, 4, 4, 8, 8, 16, 256, 512]


@pytest.mark.skipif(not TRITON_INTERPRET, reason="stubs the autotuner's benchmark (interpreter only)")
def test_autotune_keys(monkeypatch):
    # One tuning per (channels, batch bucket, plane bucket, kernel shape, layout): batches 3 and
    # 4 share one; batch 1 and batch 16 each get their own; so does another channel count.
    K = mt._ops.K
    for kernel in (K.dwconv_nhwc, K.elementwise):
        monkeypatch.setattr(kernel, "configs", list(kernel.gpu_configs))
        monkeypatch.setattr(kernel, "cache", {})
        monkeypatch.setitem(kernel.__dict__, "do_bench", lambda call, quantiles=None, **kw: [1.0] * len(quantiles or [0]))
    w, b = folded_dw_params(16, 3)

    def run(n, c=16, h=6):
        x = torch.randn(n, c, h, h).to(memory_format=torch.channels_last)
        ww, bb = (w, b) if c == 16 else folded_dw_params(c, 3)
        ops.dwconv_bn_act(x, ww, bb, 1, 1, 1, "relu", backend="triton")
        return len(K.dwconv_nhwc.cache)

    assert run(3) == 1
    assert run(4) == 1      # same bucket as 3
    assert run(1) == 2      # batch 1: its own tile choice
    assert run(16) == 3
    assert run(4, h=7) == 3  # 36 and 49 pixels: one plane bucket
    assert run(4, c=24) == 4  # channels are in the key as they are
    for n in (1000, 1001, 1024):
        ops.hardswish(torch.randn(n), backend="triton")
    assert len(K.elementwise.cache) == 1
    ops.hardswish(torch.randn(1025), backend="triton")
    assert len(K.elementwise.cache) == 2


@pytest.mark.parametrize("setting,expect_all", [("0", False), ("1", True)])
def test_autotune_switch(setting, expect_all):
    # MNV3_TRITON_AUTOTUNE=0 leaves one config per autotuned kernel (GPU tests); read at import.
    import subprocess
    import sys
    code = (
        "from triton.runtime.autotuner import Autotuner\n"
        "import mnv3_kernels.triton.kernels as K\n"
        "ks = {n: k for n, k in vars(K).items() if isinstance(k, Autotuner)}\n"
        "assert len(ks) >= 7, sorted(ks)\n"
        "for n, k in ks.items():\n"
        "    names = [str(c) for c in k.configs]\n"
        "    full = [str(c) for c in k.gpu_configs]\n"
        "    assert set(names) <= set(full), n\n"
        "    print(n, len(names), len(full))\n"
        "    assert (names == full) if ALL else len(names) == 1, (n, names)\n"
    ).replace("ALL", str(expect_all))
    import os
    env = dict(os.environ, MNV3_TRITON_AUTOTUNE=setting, TRITON_INTERPRET="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------------------
# Launches happen on the input's device
# ----------------------------------------------------------------------------------------------
def test_launches_guarded_by_input_device(monkeypatch):
    # Triton launches on the current device: every launch must sit inside a guard for x's device.
    active = []
    entered = []

    @__import__("contextlib").contextmanager
    def guard(device):
        entered.append(device)
        active.append(device)
        try:
            yield
        finally:
            active.pop()

    real_wrap = mt._ops.wrap_triton
    launches = []

    def wrap(kernel):
        launcher = real_wrap(kernel)

        class Checked:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append(active[-1] if active else None)
                    return launcher[grid](*args, **kwargs)
                return launch
        return Checked()

    monkeypatch.setattr(mt._ops, "_device_guard", guard)
    monkeypatch.setattr(mt._ops, "wrap_triton", wrap)
    device = "cpu" if TRITON_INTERPRET else "cuda"
    x = torch.randn(2, 8, 5, 5, device=device)
    w, b = folded_dw_params(8, 3, F32, device)
    p = se_params(8, 4, F32, device)
    ops.dwconv_bn_act(x, w, b, 1, 1, 1, "relu", backend="triton")
    out, sums = mt.dwconv_bn_act_pool(x, w, b, 1, 1, 1, "relu")
    ops.squeeze_excite(x, *p, backend="triton")
    mt.squeeze_excite_from_sums(out, sums, *p)
    ops.hardswish(x, backend="triton")
    ops.hardsigmoid_(x.clone(), backend="triton")
    assert len(launches) == 1 + 1 + 3 + 2 + 1 + 1
    assert launches == [x.device] * len(launches)


def test_device_guard_targets_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    g = mt._ops._device_guard(torch.device("cuda", 1))
    assert isinstance(g, torch.cuda.device) and g.idx == 1
    for current in (torch.device("cuda", 0), torch.device("cpu")):  # nothing to switch
        assert not isinstance(mt._ops._device_guard(current), torch.cuda.device)


@pytest.mark.gpu
@pytest.mark.skipif(TRITON_INTERPRET, reason="needs CUDA tensors")
def test_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    dev = torch.device("cuda", 1)
    assert torch.cuda.current_device() == 0
    x = torch.randn(2, 16, 9, 9, device=dev).to(memory_format=torch.channels_last)
    w, b = folded_dw_params(16, 3, F32, dev)
    p = se_params(16, 8, F32, dev)
    _run_dw(x, w, b, 1, 1, 1, "hardswish")
    _run_dw(x.contiguous(), w, b, 2, 1, 1, "relu")
    torch.testing.assert_close(ops.squeeze_excite(x, *p, backend="triton"), reference.squeeze_excite(x, *p),
                               atol=1e-4, rtol=1e-4)
    y = x.clone()
    ops.hardswish_(y, backend="triton")
    torch.testing.assert_close(y, reference.hardswish(x))
    torch.cuda.synchronize(dev)
    assert torch.cuda.current_device() == 0


# ----------------------------------------------------------------------------------------------
# More than 2^31 elements (fp16, ~4 GiB per tensor) on every kernel: 64-bit offsets where needed
# (IDX64 per sample, int64 sample bases). Checked on the first, middle and last samples (rows).
# ----------------------------------------------------------------------------------------------
BIG_ELEMS = 2**31 + 2**22
GPU_ONLY = pytest.mark.skipif(TRITON_INTERPRET, reason="4 GiB tensors: GPU only")


@pytest.fixture
def _free_cuda_memory():
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _big(n, c, h, w, channels_last):
    assert n * c * h * w > 2**31
    if channels_last:
        return torch.empty(n, h, w, c, device="cuda", dtype=F16).normal_().permute(0, 3, 1, 2)
    return torch.empty(n, c, h, w, device="cuda", dtype=F16).normal_()


def _samples(n):
    return sorted({0, n // 2, n - 1})


@pytest.mark.gpu
@pytest.mark.slow
@GPU_ONLY
@pytest.mark.usefixtures("_free_cuda_memory")
@pytest.mark.parametrize("pool", [False, True], ids=["dwconv", "dwconv_pool"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_big_dwconv(channels_last, pool):
    x = _big(2100, 64, 112, 144, channels_last)
    w, b = folded_dw_params(64, 3, F16, "cuda")
    if pool:
        y, sums = mt.dwconv_bn_act_pool(x, w, b, 1, 1, 1, "hardswish")
    else:
        y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "hardswish", backend="triton")
    for i in _samples(x.shape[0]):
        want = _ref_dw(x[i:i + 1], w, b, 1, 1, 1, "hardswish")
        torch.testing.assert_close(y[i:i + 1].float(), want, **TOL[F16], msg=f"sample {i}")
        if pool:
            torch.testing.assert_close(sums[i:i + 1], want.sum((2, 3)), rtol=1e-2, atol=1.0)


@pytest.mark.gpu
@pytest.mark.slow
@GPU_ONLY
@pytest.mark.usefixtures("_free_cuda_memory")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_big_one_sample(channels_last):
    # One sample over 2^31 elements: the kernels' IDX64 path (dwconv and SE).
    x = _big(1, 16, 11600, 11600, channels_last)
    w, b = folded_dw_params(16, 3, F16, "cuda")
    y = ops.dwconv_bn_act(x, w, b, 1, 1, 1, "relu", backend="triton")
    rows = 4  # the last rows, from the input rows that produce them plus one halo row
    want = _ref_dw(x[:, :, -rows - 1:], w, b, 1, 1, 1, "relu")
    torch.testing.assert_close(y[:, :, -rows:].float(), want[:, :, 1:], **TOL[F16])
    del y
    p = se_params(16, 8, F16, "cuda")
    out = ops.squeeze_excite(x, *p, backend="triton")
    gate = torch.nn.functional.hardsigmoid(torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x.float().mean((2, 3)), p[0].float(), p[1].float())),
        p[2].float(), p[3].float()))
    torch.testing.assert_close(out[:, :, -rows:].float(), x[:, :, -rows:].float() * gate[:, :, None, None],
                               **TOL[F16])


@pytest.mark.gpu
@pytest.mark.slow
@GPU_ONLY
@pytest.mark.usefixtures("_free_cuda_memory")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_big_squeeze_excite(channels_last):
    x = _big(45700, 960, 7, 7, channels_last)
    p = se_params(960, 240, F16, "cuda")
    y = ops.squeeze_excite(x, *p, backend="triton")
    for i in _samples(x.shape[0]):
        want = reference.squeeze_excite(x[i:i + 1].float(), *[t.float() for t in p])
        torch.testing.assert_close(y[i:i + 1].float(), want, **TOL[F16], msg=f"sample {i}")


@pytest.mark.gpu
@pytest.mark.slow
@GPU_ONLY
@pytest.mark.usefixtures("_free_cuda_memory")
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid"])
def test_big_elementwise(name):
    x = torch.empty(BIG_ELEMS, device="cuda", dtype=F16).normal_().mul_(4)
    checks = [slice(0, 4096), slice(2**31 - 2048, 2**31 + 2048), slice(BIG_ELEMS - 4096, BIG_ELEMS)]
    want = [getattr(reference, name)(x[s].float()) for s in checks]
    y = getattr(ops, name)(x, backend="triton")
    for s, wv in zip(checks, want):
        torch.testing.assert_close(y[s].float(), wv, **TOL[F16])
    del y
    getattr(ops, name + "_")(x, backend="triton")
    for s, wv in zip(checks, want):
        torch.testing.assert_close(x[s].float(), wv, **TOL[F16])

