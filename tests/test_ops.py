"""Every public op against the unfused reference, on CPU tensors, for each compiled CPU backend."""
import pytest
import torch
import torch.nn.functional as F

from mnv3_kernels import ops, reference
from mnv3_kernels.layers import DW_LAYERS, SE_LAYERS

from conftest import folded_dw_params, se_params

CPU_BACKENDS = [b for b in ("cpu",) if b in ops.backends()]
needs_cpu = pytest.mark.skipif(not CPU_BACKENDS, reason="compiled CPU library not loaded")
LAYOUTS = ["nchw", "channels_last"]


def _layout(x, layout):
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


def _assert_close(got, want, rtol=1e-4, atol=1e-5):
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def _check_dwconv(backend, x, weight, bias, stride, padding, dilation, activation):
    got = ops.dwconv_bn_act(x, weight, bias, stride, padding, dilation, activation, backend=backend)
    want = reference.dwconv_bn_act(
        x, weight, bias, ops._pair(stride, "stride", 1), ops._pair(padding, "padding", 0),
        ops._pair(dilation, "dilation", 1), activation,
    )
    _assert_close(got, want)
    assert got.dtype == x.dtype
    return got


# ---------------------------------------------------------------------------------------------
# dwconv_bn_act
# ---------------------------------------------------------------------------------------------
_DISTINCT = {(l.channels, l.kernel, l.stride, l.size, l.activation): l for l in DW_LAYERS}.values()


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layer", list(_DISTINCT), ids=lambda l: l.name)
def test_dwconv_mobilenet_layers(backend, layout, batch, layer):
    x = _layout(torch.randn(batch, layer.channels, layer.size, layer.size), layout)
    w, b = folded_dw_params(layer.channels, layer.kernel)
    y = _check_dwconv(backend, x, w, b, layer.stride, layer.padding, 1, layer.activation)
    assert y.shape[-1] == layer.out_size
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


# (N, C, H, W, kh, kw, stride, padding, dilation)
AWKWARD = [
    (2, 13, 15, 17, 3, 3, 2, 1, 1),     # odd H/W with stride 2, C not a multiple of 8
    (1, 24, 7, 9, 5, 5, 2, 2, 1),
    (2, 8, 1, 11, 3, 3, 1, 1, 1),       # H = 1
    (2, 8, 11, 1, 3, 3, 2, 1, 1),       # W = 1
    (1, 5, 1, 1, 3, 3, 1, 1, 1),        # H = W = 1
    (1, 33, 14, 14, 3, 3, 1, 2, 2),     # dilation 2 (segmentation backbones)
    (1, 17, 13, 13, 5, 5, 1, 4, 2),
    (2, 9, 12, 10, 7, 7, 1, 3, 1),      # k = 7
    (1, 10, 9, 12, 3, 5, (1, 2), (1, 2), 1),  # kh != kw, per-axis stride
    (1, 12, 10, 10, 3, 3, 3, 0, 1),     # stride 3, no padding
    (1, 7, 6, 6, 1, 1, 1, 0, 1),        # 1x1 depthwise
    (1, 16, 8, 8, 3, 3, 1, 3, 1),       # padding larger than the kernel radius
    (3, 1, 9, 9, 3, 3, 2, 1, 1),        # C = 1
    (1, 16, 9, 9, 3, 3, 1, (0, 2), (2, 1)),
]


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("case", AWKWARD, ids=str)
def test_dwconv_awkward(backend, layout, activation, case):
    n, c, h, w, kh, kw, stride, padding, dilation = case
    x = _layout(torch.randn(n, c, h, w) * 3, layout)
    weight, bias = folded_dw_params(c, kh, kernel_w=kw)
    _check_dwconv(backend, x, weight, bias, stride, padding, dilation, activation)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dwconv_without_bias(backend):
    x = torch.randn(2, 20, 11, 11)
    weight, _ = folded_dw_params(20, 3)
    _check_dwconv(backend, x, weight, None, 1, 1, 1, "hardswish")


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_batch_zero(backend, layout):
    x = _layout(torch.randn(0, 16, 9, 9), layout)
    weight, bias = folded_dw_params(16, 3)
    y = ops.dwconv_bn_act(x, weight, bias, 2, 1, backend=backend)
    assert y.shape == (0, 16, 5, 5)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("view", ["slice_w", "slice_c", "transposed_hw", "strided_batch"])
def test_dwconv_non_contiguous(backend, view):
    base = torch.randn(4, 24, 16, 18)
    x = {
        "slice_w": base[..., 1:15],
        "slice_c": base[:, 3:19],
        "transposed_hw": base.transpose(2, 3),
        "strided_batch": base[::2],
    }[view]
    assert not x.is_contiguous()
    weight, bias = folded_dw_params(x.shape[1], 3)
    _check_dwconv(backend, x, weight, bias, 2, 1, 1, "hardswish")


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dwconv_non_contiguous_weight(backend):
    x = torch.randn(1, 16, 10, 10)
    weight = torch.randn(16, 1, 5, 3).transpose(2, 3)
    bias = torch.randn(32)[::2]
    _check_dwconv(backend, x, weight, bias, 1, 1, 1, "relu")


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_gradients(backend, activation, layout):
    x = _layout(torch.randn(2, 12, 9, 9) * 3, layout).requires_grad_()
    weight, bias = folded_dw_params(12, 3)
    weight.requires_grad_()
    bias.requires_grad_()
    y = ops.dwconv_bn_act(x, weight, bias, 2, 1, 1, activation, backend=backend)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, weight, bias), g)
    want_y = reference.dwconv_bn_act(x, weight, bias, (2, 2), (1, 1), (1, 1), activation)
    want = torch.autograd.grad(want_y, (x, weight, bias), g)
    for a, b in zip(got, want):
        _assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("wanted", ["x", "weight", "bias", "x-no-bias"])
def test_dwconv_partial_gradients(backend, wanted):
    # Only some inputs require grad (frozen weights, or a frozen input): the others get none.
    x = torch.randn(2, 9, 7, 8) * 3
    weight, bias = folded_dw_params(9, 5)
    if wanted == "x-no-bias":
        bias = None
    target = {"x": x, "x-no-bias": x, "weight": weight, "bias": bias}[wanted].requires_grad_()
    y = ops.dwconv_bn_act(x, weight, bias, 1, 2, 1, "hardswish", backend=backend)
    assert y.requires_grad
    g = torch.randn_like(y)
    (got,) = torch.autograd.grad(y, target, g)
    want_y = reference.dwconv_bn_act(x, weight, bias, (1, 1), (2, 2), (1, 1), "hardswish")
    (want,) = torch.autograd.grad(want_y, target, g)
    _assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_relu6_clamps_at_both_bounds(backend, layout):
    # Inputs wide enough that every op's relu6 meets both bounds: exactly 0 and 6 there (as
    # F.relu6), the reference everywhere, and NaN kept.
    x = _layout(torch.randn(2, 24, 9, 11) * 8, layout)
    x[1, 3, 4, 5] = float("nan")
    w, b = folded_dw_params(24, 3)
    pw, pb = torch.randn(40, 24) / 24 ** 0.5, torch.randn(40)
    dw_, db = torch.randn(16, 24, 3, 3) / (24 * 9) ** 0.5, torch.randn(16)
    cases = [
        (ops.dwconv_bn_act(x, w, b, 2, 1, 1, "relu6", backend=backend),
         reference.dwconv_bn_act(x, w, b, [2, 2], [1, 1], [1, 1], "relu6")),
        (ops.pointwise_conv_bn_act(x, pw, pb, "relu6", backend=backend),
         reference.pointwise_conv_bn_act(x, pw, pb, "relu6")),
        (ops.dense_conv_bn_act(x, dw_, db, 1, 1, 1, "relu6", backend=backend),
         reference.dense_conv_bn_act(x, dw_, db, [1, 1], [1, 1], [1, 1], "relu6")),
    ]
    for got, want in cases:
        assert (want == 0).any() and (want == 6).any() and ((want > 0) & (want < 6)).any()
        assert want.isnan().any()
        assert torch.equal(got == 0, want == 0) and torch.equal(got == 6, want == 6)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, equal_nan=True)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_graph_without_grad(backend):
    # No input requires grad, or grad mode is off: the output is a plain tensor.
    x = torch.randn(1, 8, 6, 6)
    weight, bias = folded_dw_params(8, 3)
    assert ops.dwconv_bn_act(x, weight, bias, 1, 1, 1, "relu", backend=backend).grad_fn is None
    with torch.no_grad():
        y = ops.dwconv_bn_act(x.requires_grad_(), weight, bias, 1, 1, 1, "relu", backend=backend)
        assert y.grad_fn is None and not y.requires_grad
    assert ops.hardswish(torch.randn(5), backend=backend).grad_fn is None


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_double_backward(backend):
    # The backward formulas are ATen ops, so they are differentiable themselves.
    x = (torch.randn(2, 6, 5, 5) * 3).requires_grad_()
    weight, bias = folded_dw_params(6, 3)
    for fused, ref in (
        (lambda t: ops.dwconv_bn_act(t, weight, bias, 1, 1, 1, "hardswish", backend=backend),
         lambda t: reference.dwconv_bn_act(t, weight, bias, (1, 1), (1, 1), (1, 1), "hardswish")),
        (lambda t: ops.hardswish(t, backend=backend), reference.hardswish),
    ):
        (g1,) = torch.autograd.grad(fused(x).square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g1.sum(), x)
        (r1,) = torch.autograd.grad(ref(x).square().sum(), x, create_graph=True)
        (rr,) = torch.autograd.grad(r1.sum(), x)
        _assert_close(g1, r1, rtol=1e-4, atol=1e-4)
        _assert_close(gg, rr, rtol=1e-4, atol=1e-4)


@needs_cpu
@pytest.mark.parametrize("activation", ["relu", "hardswish"])
def test_dwconv_opcheck(activation):
    x = torch.randn(2, 12, 9, 9).requires_grad_()
    weight, bias = folded_dw_params(12, 3)
    args = (x, weight.requires_grad_(), bias.requires_grad_(), [2, 2], [1, 1], [1, 1], activation)
    torch.library.opcheck(torch.ops.mnv3.dwconv_bn_act.default, args)
    cl = (x.detach().contiguous(memory_format=torch.channels_last), weight.detach(), None, [1, 1], [2, 2], [2, 2], activation)
    torch.library.opcheck(torch.ops.mnv3.dwconv_bn_act.default, cl)


# ---------------------------------------------------------------------------------------------
# squeeze_excite
# ---------------------------------------------------------------------------------------------
def _check_se(backend, x, params, **tol):
    got = ops.squeeze_excite(x, *params, backend=backend)
    want = reference.squeeze_excite(x, *params)
    _assert_close(got, want, **tol)
    return got


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("layer", SE_LAYERS, ids=lambda l: l.name)
def test_se_mobilenet_layers(backend, layout, batch, layer):
    x = _layout(torch.randn(batch, layer.channels, layer.size, layer.size), layout)
    y = _check_se(backend, x, se_params(layer.channels, layer.squeeze))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 13, 1, 1), (1, 33, 5, 7), (3, 8, 1, 9), (0, 16, 4, 4), (2, 1, 3, 3)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_se_awkward(backend, shape, layout):
    x = _layout(torch.randn(*shape), layout)
    _check_se(backend, x, se_params(shape[1], max(1, shape[1] // 4)))


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_se_conv_shaped_weights_and_non_contiguous_input(backend):
    x = torch.randn(2, 40, 9, 11)[:, :, 1:8, ::2]
    w1, b1, w2, b2 = se_params(40, 16)
    got = ops.squeeze_excite(x, w1[:, :, None, None], b1, w2[:, :, None, None], b2, backend=backend)
    _assert_close(got, reference.squeeze_excite(x, w1, b1, w2, b2))


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_se_gradients(backend):
    x = torch.randn(2, 24, 5, 5).requires_grad_()
    params = [p.requires_grad_() for p in se_params(24, 8)]
    y = ops.squeeze_excite(x, *params, backend=backend)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, *params), g)
    want = torch.autograd.grad(reference.squeeze_excite(x, *params), (x, *params), g)
    for a, b in zip(got, want):
        _assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_cpu
def test_se_opcheck():
    x = torch.randn(2, 24, 5, 5).requires_grad_()
    params = [p.requires_grad_() for p in se_params(24, 8)]
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, (x, *params))
    x_cl = x.detach().contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.mnv3.squeeze_excite.default, (x_cl, *[p.detach() for p in params]))


# ---------------------------------------------------------------------------------------------
# hardswish / hardsigmoid
# ---------------------------------------------------------------------------------------------
_ACTS = {"hardswish": (ops.hardswish, F.hardswish), "hardsigmoid": (ops.hardsigmoid, F.hardsigmoid)}


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(_ACTS))
@pytest.mark.parametrize("shape", [(1, 16, 112, 112), (8, 960, 7, 7), (3, 5, 7), (0, 4), (1,), ()], ids=str)
def test_activation_values(backend, name, shape):
    fused, ref = _ACTS[name]
    x = torch.randn(shape) * 4
    _assert_close(fused(x, backend=backend), ref(x), rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(_ACTS))
def test_activation_breakpoints(backend, name):
    fused, ref = _ACTS[name]
    x = torch.tensor([-1e9, -3.0001, -3.0, -2.9999, -1.0, 0.0, 1.0, 2.9999, 3.0, 3.0001, 1e9])
    _assert_close(fused(x, backend=backend), ref(x), rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(_ACTS))
@pytest.mark.parametrize("view", ["channels_last", "transposed", "sliced"])
def test_activation_layouts(backend, name, view):
    fused, ref = _ACTS[name]
    base = torch.randn(2, 12, 10, 14) * 4
    x = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(1, 3),
        "sliced": base[:, ::2, 1:9],
    }[view]
    y = fused(x, backend=backend)
    _assert_close(y, ref(x), rtol=1e-6, atol=1e-6)
    if view == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@needs_cpu
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(_ACTS))
def test_activation_gradients(backend, name):
    fused, ref = _ACTS[name]
    x = (torch.randn(3, 8, 5, 5) * 4).requires_grad_()
    g = torch.randn(3, 8, 5, 5)
    (got,) = torch.autograd.grad(fused(x, backend=backend), x, g)
    (want,) = torch.autograd.grad(ref(x), x, g)
    _assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("name", list(_ACTS))
def test_activation_opcheck(name):
    op = getattr(torch.ops.mnv3, name).default
    x = (torch.randn(2, 8, 5, 5) * 4).requires_grad_()
    torch.library.opcheck(op, (x,))
    torch.library.opcheck(op, (x.detach().contiguous(memory_format=torch.channels_last),))


# ---------------------------------------------------------------------------------------------
# hardswish_ / hardsigmoid_ (in place)
# ---------------------------------------------------------------------------------------------
_IN_PLACE = {"hardswish_": (ops.hardswish_, F.hardswish), "hardsigmoid_": (ops.hardsigmoid_, F.hardsigmoid)}
IN_PLACE_BACKENDS = CPU_BACKENDS + ["reference"]


@pytest.mark.parametrize("backend", IN_PLACE_BACKENDS)
@pytest.mark.parametrize("name", list(_IN_PLACE))
@pytest.mark.parametrize("shape", [(1, 16, 112, 112), (8, 960, 7, 7), (3, 5, 7), (0, 4), (1,), ()], ids=str)
def test_in_place_values(backend, name, shape):
    fused_, ref = _IN_PLACE[name]
    x = torch.randn(shape) * 4
    want = ref(x)
    ptr, version = x.data_ptr(), x._version
    assert fused_(x, backend=backend) is x
    assert x.data_ptr() == ptr and x._version > version
    _assert_close(x, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", IN_PLACE_BACKENDS)
@pytest.mark.parametrize("name", list(_IN_PLACE))
@pytest.mark.parametrize("view", ["channels_last", "transposed", "sliced", "column"])
def test_in_place_views_write_only_their_elements(backend, name, view):
    fused_, ref = _IN_PLACE[name]
    base = torch.randn(2, 12, 10, 14) * 4
    pick = {
        "channels_last": lambda t: t,
        "transposed": lambda t: t.transpose(1, 3),
        "sliced": lambda t: t[:, ::2, 1:9],
        "column": lambda t: t[:, :, :, 3],
    }[view]
    if view == "channels_last":
        base = base.contiguous(memory_format=torch.channels_last)
    want = base.clone()
    pick(want).copy_(ref(pick(want)))
    fused_(pick(base), backend=backend)
    _assert_close(base, want, rtol=1e-6, atol=1e-6)   # the view's elements changed, no others
    if view == "channels_last":
        assert base.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", IN_PLACE_BACKENDS)
@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_refuses_tracked_input(backend, name):
    fused_, _ = _IN_PLACE[name]
    leaf = torch.randn(3, 8, 5, 5, requires_grad=True)
    for x in (leaf, leaf * 2):
        before = x.detach().clone()
        with pytest.raises(RuntimeError, match="x requires grad"):
            fused_(x, backend=backend)
        assert torch.equal(x.detach(), before)
    with torch.no_grad():
        h = leaf * 2
        fused_(h, backend=backend)
    _assert_close(h, _IN_PLACE[name][1](leaf.detach() * 2), rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_operator_refuses_tracked_and_overlapping(name):
    op = getattr(torch.ops.mnv3, name).default
    with pytest.raises(RuntimeError, match="x requires grad"):
        op(torch.randn(4, 4, requires_grad=True) * 1)
    expanded = torch.randn(4, 1).expand(4, 8)
    with pytest.raises(RuntimeError, match="share memory"):
        op(expanded)
    with pytest.raises(TypeError, match="float32"):
        op(torch.randn(4, dtype=torch.float64))


@needs_cpu
@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_bumps_version_for_autograd(name):
    # A tensor saved by another node and then overwritten must make that backward fail, as
    # PyTorch's own in-place ops do.
    w = torch.randn(6, requires_grad=True)
    x = torch.randn(6)
    y = (w * x).sum()          # saves x
    _IN_PLACE[name][0](x, backend="cpu")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("backend", IN_PLACE_BACKENDS)
@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_and_inference_mode(backend, name):
    # As PyTorch's own in-place ops: inference tensors are written inside inference mode and
    # refused outside it (untouched); normal tensors written inside it still bump their version.
    fused_, ref = _IN_PLACE[name]
    x = torch.randn(4, 16, 5, 5) * 4
    want = ref(x)
    with torch.inference_mode():
        xi = x.clone()
        fused_(xi, backend=backend)
    _assert_close(xi, want, rtol=1e-6, atol=1e-6)
    before = xi.clone()
    with pytest.raises(RuntimeError, match="inference tensor"):
        fused_(xi, backend=backend)
    if backend != "reference":   # ATen writes, then refuses; ours refuses first
        assert torch.equal(xi, before)
    y = x.clone()
    version = y._version
    with torch.inference_mode():
        fused_(y, backend=backend)
    assert y._version > version
    _assert_close(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_bad_inputs(name):
    fused_, _ = _IN_PLACE[name]
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fused_([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        fused_(torch.arange(4))
    if CPU_BACKENDS:
        with pytest.raises(TypeError, match="float32"):
            fused_(torch.randn(4, dtype=torch.float64), backend="cpu")
    x = torch.randn(4, dtype=torch.float64) * 4
    want = F.hardswish(x) if name == "hardswish_" else F.hardsigmoid(x)
    _assert_close(fused_(x), want)   # auto: float64 is served by the reference path


@needs_cpu
@pytest.mark.parametrize("name", list(_IN_PLACE))
def test_in_place_opcheck(name):
    op = getattr(torch.ops.mnv3, name).default
    torch.library.opcheck(op, (torch.randn(2, 8, 5, 5) * 4,))
    torch.library.opcheck(op, (torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last),))


@needs_cpu
def test_in_place_under_compile_fullgraph():
    def f(x):
        y = x * 2.0
        ops.hardswish_(y)
        z = y + 1.0
        ops.hardsigmoid_(z)
        return y, z

    x = torch.randn(2, 8, 9, 9) * 3
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    want = f(x)
    for g, w in zip(got, want):
        _assert_close(g, w)
    _assert_close(want[0], F.hardswish(x * 2.0))


# ---------------------------------------------------------------------------------------------
# Backend choice and torch.compile / torch.export
# ---------------------------------------------------------------------------------------------
def test_auto_falls_back_to_reference_for_unsupported_dtype():
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    weight, bias = folded_dw_params(8, 3, dtype=torch.float64)
    assert ops.resolve_backend("auto", x) == "reference"
    _check_dwconv("auto", x, weight, bias, 1, 1, 1, "hardswish")


@needs_cpu
def test_auto_picks_cpu_for_float32():
    assert ops.resolve_backend("auto", torch.randn(1, 8, 4, 4)) == "cpu"


@needs_cpu
def test_compile_fullgraph_matches():
    weight, bias = folded_dw_params(16, 3)
    se = se_params(16, 8)

    def block(x):
        y = ops.dwconv_bn_act(x, weight, bias, 2, 1, 1, "hardswish")
        y = ops.squeeze_excite(y, *se)
        return ops.hardswish(y) + ops.hardsigmoid(y)

    def block64(x):
        y = reference.dwconv_bn_act(x, weight.double(), bias.double(), (2, 2), (1, 1), (1, 1), "hardswish")
        y = reference.squeeze_excite(y, *(t.double() for t in se))
        return reference.hardswish(y) + reference.hardsigmoid(y)

    x = torch.randn(2, 16, 15, 15).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    _assert_close(compiled(x).double(), block64(x.double()))


@needs_cpu
def test_export_sees_the_operators():
    weight, bias = folded_dw_params(8, 3)

    class Block(torch.nn.Module):
        def forward(self, x):
            return ops.dwconv_bn_act(x, weight, bias, 1, 1, 1, "relu")

    x = torch.randn(1, 8, 10, 10)
    exported = torch.export.export(Block(), (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "mnv3.dwconv_bn_act.default" in targets
    _assert_close(exported.module()(x), Block()(x))


# ---------------------------------------------------------------------------------------------
# Autocast: conv-like ops compute in float32 on CPU, in the autocast dtype on CUDA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_autocast_cpu_computes_conv_like_ops_in_float32(backend):
    weight, bias = folded_dw_params(16, 3)
    w1, b1, w2, b2 = se_params(16, 8)
    x = torch.randn(2, 16, 11, 11).to(torch.bfloat16)
    want_dw = reference.dwconv_bn_act(x.double(), weight.double(), bias.double(), (1, 1), (1, 1), (1, 1), "relu")
    want_se = reference.squeeze_excite(x.double(), w1.double(), b1.double(), w2.double(), b2.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dw = ops.dwconv_bn_act(x, weight, bias, 1, 1, 1, "relu", backend=backend)
        se = ops.squeeze_excite(x, w1, b1, w2, b2, backend=backend)
        act = ops.hardswish(x, backend="auto")
    assert dw.dtype == se.dtype == torch.float32
    assert act.dtype == torch.bfloat16  # element-wise ops keep x's dtype, as F.hardswish
    _assert_close(dw.double(), want_dw)
    _assert_close(se.double(), want_se)


@needs_cpu
def test_autocast_kernels_registered_on_the_operators():
    weight, bias = folded_dw_params(8, 3)
    w1, b1, w2, b2 = se_params(8, 4)
    x = torch.randn(1, 8, 9, 9).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dw = torch.ops.mnv3.dwconv_bn_act(x, weight, bias, [1, 1], [1, 1], [1, 1], "hardswish")
        se = torch.ops.mnv3.squeeze_excite(x, w1, b1, w2, b2)
    assert torch.equal(dw, torch.ops.mnv3.dwconv_bn_act(x.float(), weight, bias, [1, 1], [1, 1], [1, 1], "hardswish"))
    assert torch.equal(se, torch.ops.mnv3.squeeze_excite(x.float(), w1, b1, w2, b2))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda_computes_conv_like_ops_in_the_autocast_dtype(dtype):
    weight, bias = folded_dw_params(16, 3, device="cuda")
    w1, b1, w2, b2 = se_params(16, 8, device="cuda")
    x = torch.randn(2, 16, 11, 11, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        dw = ops.dwconv_bn_act(x, weight, bias, 1, 1, 1, "relu")
        se = ops.squeeze_excite(x, w1, b1, w2, b2)
        conv = F.conv2d(x, weight, bias, 1, 1, 1, 16)
    assert dw.dtype == se.dtype == conv.dtype == dtype
    low = [t.to(dtype).double() for t in (x, weight, bias, w1, b1, w2, b2)]
    want_dw = reference.dwconv_bn_act(low[0], low[1], low[2], (1, 1), (1, 1), (1, 1), "relu")
    want_se = reference.squeeze_excite(low[0], *low[3:])
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    _assert_close(dw.double(), want_dw, rtol=tol, atol=tol)
    _assert_close(se.double(), want_se, rtol=tol, atol=tol)
