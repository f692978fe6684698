"""Bad input gets a clear Python exception naming the argument, never a crash or a wrong answer."""
import pytest
import torch

from mnv3_kernels import ops

from conftest import folded_dw_params, se_params

BACKENDS = [b for b in ("cpu", "reference") if b in ops.backends()]


def _dw_args(c=8, k=3):
    x = torch.randn(1, c, 8, 8)
    w, b = folded_dw_params(c, k)
    return x, w, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda x, w, b: (x[0], w, b), ValueError, "x must be 4-D"),
        (lambda x, w, b: (x, w[:, 0], b), ValueError, "weight must be (C, 1, kh, kw)"),
        (lambda x, w, b: (x, w[:4], b), ValueError, "weight has 4 channels but x has 8"),
        (lambda x, w, b: (x, w.repeat(1, 2, 1, 1), b), ValueError, "weight must be (C, 1, kh, kw)"),
        (lambda x, w, b: (x, w, b[:3]), ValueError, "bias must be (C,)"),
        (lambda x, w, b: (x.long(), w, b), TypeError, "x must be a floating-point tensor"),
        (lambda x, w, b: (x, w.double(), b), TypeError, "weight has dtype torch.float64"),
        (lambda x, w, b: (x, w, b.half()), TypeError, "bias has dtype torch.float16"),
        (lambda x, w, b: (x, w.to("meta"), b), ValueError, "weight is on meta"),
        (lambda x, w, b: (x, w, b.to("meta")), ValueError, "bias is on meta"),
        (lambda x, w, b: (x.numpy(), w, b), TypeError, "x must be a torch.Tensor"),
        (lambda x, w, b: (x[:, :, :1, :1], w, b), ValueError, "smaller than the dilated kernel"),
    ],
)
def test_dwconv_bad_tensors(backend, mutate, exc, words):
    x, w, b = mutate(*_dw_args())
    with pytest.raises(exc, match=None) as info:
        ops.dwconv_bn_act(x, w, b, 1, 0, 1, "relu", backend=backend)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(stride=0), ValueError, "stride must be >= 1"),
        (dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
        (dict(stride=1.5), TypeError, "stride must be an int or a pair"),
        (dict(padding=-1), ValueError, "padding must be >= 0"),
        (dict(padding="same"), TypeError, "padding must be an int or a pair"),
        (dict(dilation=0), ValueError, "dilation must be >= 1"),
        (dict(activation="gelu"), ValueError, "activation must be one of"),
        (dict(backend="opencl"), ValueError, "backend must be one of"),
        (dict(backend="cuda"), RuntimeError, "backend 'cuda' is not available"),
    ],
)
def test_dwconv_bad_arguments(kwargs, exc, words):
    x, w, b = _dw_args()
    if kwargs.get("backend") == "cuda" and "cuda" in ops.backends():
        pytest.skip("a CUDA device is present")
    with pytest.raises(exc) as info:
        ops.dwconv_bn_act(x, w, b, **kwargs)
    assert words in str(info.value)


@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_cpu_backend_rejects_unsupported_dtype_clearly():
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    w, b = folded_dw_params(8, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="backend 'cpu' supports x of dtype float32; got float64"):
        ops.dwconv_bn_act(x, w, b, backend="cpu")


@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_direct_operator_calls_are_checked_in_cpp():
    """torch.ops.mnv3.* bypasses the Python checks; the C++ checks must still catch bad input."""
    x, w, b = _dw_args()
    op = torch.ops.mnv3.dwconv_bn_act.default
    with pytest.raises(ValueError, match="weight has 4 output channels but x has 8 channels"):
        op(x, w[:4], b, [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        op(x, w, b, [1, 1], [1, 1], [1, 1], "gelu")
    with pytest.raises(ValueError, match="stride must be >= 1"):
        op(x, w, b, [0, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(TypeError, match="x must be float32"):
        op(x.double(), w.double(), b.double(), [1, 1], [1, 1], [1, 1], "relu")
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        op(x, w, b, [1, 1], [0, 0], [9, 9], "relu")
    w1, b1, w2, b2 = se_params(8, 4)
    with pytest.raises(ValueError, match="fc2_weight must be"):
        torch.ops.mnv3.squeeze_excite.default(x, w1, b1, w2.t().contiguous(), b2)
    with pytest.raises(TypeError, match="x must be float32"):
        torch.ops.mnv3.hardswish.default(x.half())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "mutate, exc, words",
    [
        (lambda x, p: (x[0], *p), ValueError, "x must be 4-D"),
        (lambda x, p: (x, p[0][:, :5], *p[1:]), ValueError, "fc1_weight must be (R, C)"),
        (lambda x, p: (x, p[0], p[1][:2], *p[2:]), ValueError, "fc1_bias must be (4,)"),
        (lambda x, p: (x, *p[:2], p[2].t(), p[3]), ValueError, "fc2_weight must be (C, R)"),
        (lambda x, p: (x, *p[:3], p[3][:3]), ValueError, "fc2_bias must be (8,)"),
        (lambda x, p: (x, p[0][None], *p[1:]), ValueError, "fc1_weight must be (out, in) or (out, in, 1, 1)"),
        (lambda x, p: (x, p[0].double(), *p[1:]), TypeError, "fc1_weight has dtype torch.float64"),
        (lambda x, p: (x, *p[:3], p[3].to("meta")), ValueError, "fc2_bias is on meta"),
        (lambda x, p: (x.int(), *p), TypeError, "x must be a floating-point tensor"),
    ],
)
def test_se_bad_input(backend, mutate, exc, words):
    x = torch.randn(2, 8, 5, 5)
    args = mutate(x, se_params(8, 4))
    with pytest.raises(exc) as info:
        ops.squeeze_excite(*args, backend=backend)
    assert words in str(info.value)


@pytest.mark.parametrize("fn", [ops.hardswish, ops.hardsigmoid])
def test_activation_bad_input(fn):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fn([1.0, 2.0])
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        fn(torch.arange(4))
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(torch.randn(4), backend="fast")
