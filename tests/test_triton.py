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
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_dwconv_awkward(device, layout, case):
    n, c, h, w_, (kh, kw), stride, padding, dilation, act, has_bias = AWKWARD[case]
    if layout == "strided":
        # Every other column of a wider tensor: neither NCHW- nor NHWC-contiguous.
        x = torch.randn(n, c, h, 2 * w_, device=device)[..., ::2]
    else:
        x = torch.randn(n, c, h, w_, device=device)
        if layout == "nhwc":
            x = x.to(memory_format=torch.channels_last)
    w, b = folded_dw_params(c, kh, F32, device, kernel_w=kw)
    _run_dw(x, w, b if has_bias else None, stride, padding, dilation, act)


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
    for act in ("relu", "hardswish"):
        got = _grads(lambda x, w, b: ops.dwconv_bn_act(x, w, b, 2, 1, 1, act, backend="triton"), [x, w, b])
        want = _grads(lambda x, w, b: reference.dwconv_bn_act(x, w, b, [2, 2], [1, 1], [1, 1], act), [x, w, b])
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
