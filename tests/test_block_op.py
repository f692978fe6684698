"""The whole-block operator mnv3::inverted_residual[_packed] (CPU: row bands with the expanded
rows in a per-thread buffer, or channel parts on small images; blocks without an expand conv
reading x in place; squeeze-excite per sample, or in two phases when a sample is split over
threads), against the layer-by-layer reference in float64, on every ISA, over MobileNetV3's
blocks and awkward shapes."""
import pytest
import torch

from mnv3_kernels import _extension, ops, reference

from conftest import folded_dw_params, rel_err, se_params, with_layout

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")

# (N, Cin, expand or None, Cout, H, W, k, stride, dilation, se, expand act, dw act)
BLOCKS = [
    # MobileNetV3-Large at 224 (a selection covering every kind of block)
    (1, 16, None, 16, 112, 112, 3, 1, 1, False, "none", "relu"),
    (1, 16, 64, 24, 112, 112, 3, 2, 1, False, "relu", "relu"),
    (1, 24, 72, 40, 56, 56, 5, 2, 1, True, "relu", "relu"),
    (1, 40, 120, 40, 28, 28, 5, 1, 1, True, "relu", "relu"),
    (1, 80, 200, 80, 14, 14, 3, 1, 1, False, "hardswish", "hardswish"),
    (1, 112, 672, 160, 14, 14, 5, 2, 1, True, "hardswish", "hardswish"),
    (1, 160, 960, 160, 7, 7, 5, 1, 1, True, "hardswish", "hardswish"),
    # Small's first block: no expand, squeeze-excite, stride 2
    (2, 16, None, 16, 56, 56, 3, 2, 1, True, "none", "relu"),
    # segmentation backbones' last stage: dilation 2
    (1, 160, 960, 160, 9, 9, 5, 1, 2, True, "hardswish", "hardswish"),
    # awkward: channels not multiples of 8, odd sizes, stride 2 on odd H/W, H or W = 1, batch 3
    (3, 5, 13, 5, 9, 11, 3, 1, 1, True, "hardswish", "relu"),
    (2, 7, 9, 11, 1, 1, 3, 1, 1, True, "relu", "hardswish"),
    (2, 7, 33, 11, 5, 1, 3, 2, 1, False, "relu", "none"),
    (1, 7, 9, 7, 13, 17, 5, 1, 2, False, "none", "relu"),
    (4, 3, None, 3, 6, 7, 3, 1, 1, True, "none", "hardswish"),
    # no expand, a shape without compile-time kernels (dilation 3): rows copied, not read in place
    (2, 10, None, 10, 11, 9, 3, 1, 3, False, "none", "relu6"),
    (1, 12, 40, 12, 10, 10, 3, 1, 1, False, "relu6", "relu6"),  # MobileNetV2's activation
    (1, 24, 200, 24, 15, 13, 5, 1, 1, False, "relu", "relu"),  # channel parts on 2 threads
    # the row buffer's padded pixel stride: 88 -> 112 floats; 24 -> 48 with padding columns
    # stored (dilation 3 has no compile-time kernels)
    (2, 24, 88, 24, 28, 28, 3, 1, 1, True, "relu", "relu"),
    (1, 12, 24, 12, 11, 9, 3, 1, 3, False, "hardswish", "relu"),
    # squeeze-excite weights larger than a sample's depthwise output: whole samples in chunks
    # whose gates are computed together (2 threads: 2 + 2 + 1 samples)
    (5, 16, 120, 16, 5, 5, 3, 1, 1, True, "hardswish", "hardswish"),
    # squeeze-excite where the depthwise kernels sum their outputs (above) and, dilation 3 (no
    # compile-time kernels), where a pass over each group's output does
    (2, 12, 40, 12, 11, 9, 3, 1, 3, True, "hardswish", "relu"),
]


def _block(n, cin, ce, cout, k, se):
    """Folded random weights of a block (values as BN folding leaves them)."""
    e = ce if ce is not None else cin
    ew = torch.randn(e, cin) / cin ** 0.5 if ce is not None else None
    eb = torch.randn(e) * 0.5 if ce is not None else None
    dw, db = folded_dw_params(e, k)
    sew = se_params(e, max(1, e // 4)) if se else None
    pw, pb = torch.randn(cout, e) / e ** 0.5, torch.randn(cout) * 0.5
    return ew, eb, dw, db, sew, pw, pb


def _want(x, ew, eb, eact, dw, db, s, p, d, dact, sew, pw, pb, residual):
    dbl = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.inverted_residual(dbl(x), dbl(ew), dbl(eb), eact, dbl(dw), dbl(db), [s, s], [p, p],
                                       [d, d], dact, None if sew is None else [t.double() for t in sew],
                                       dbl(pw), dbl(pb), residual)


def _check(spec, layout, threads):
    n, cin, ce, cout, h, w, k, s, d, se, eact, dact = spec
    ew, eb, dw, db, sew, pw, pb = _block(n, cin, ce, cout, k, se)
    p = d * (k - 1) // 2
    residual = cin == cout and s == 1
    x = with_layout(torch.randn(n, cin, h, w), layout)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got = ops.inverted_residual(x, dw, pw, expand_weight=ew, expand_bias=eb, expand_activation=eact,
                                        dw_bias=db, stride=s, padding=p, dilation=d, dw_activation=dact,
                                        se=sew, project_bias=pb, residual=residual, backend="cpu")
    finally:
        torch.set_num_threads(before)
    want = _want(x, ew, eb, eact, dw, db, s, p, d, dact, sew, pw, pb, residual)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    if want.numel():
        assert rel_err(got.double(), want) < 1e-5


@pytest.mark.parametrize("spec", BLOCKS, ids=lambda s: "x".join(map(str, s[:9])) + ("-se" if s[9] else ""))
def test_block_matches_reference(spec, isa):
    _check(spec, "nhwc", 2)


@pytest.mark.parametrize("layout", ["nchw", "sliced"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("spec", [BLOCKS[3], BLOCKS[9], BLOCKS[16], BLOCKS[19]],
                         ids=["28-se", "odd-se", "parts", "se-chunks"])
def test_block_layouts_and_threads(spec, layout, threads):
    _check(spec, layout, threads)


@pytest.mark.parametrize("threads", [2, 3])
def test_channel_parts_split_inside_a_panel(threads, isa):
    # 48 expanded channels = 3 steps of 16: each thread's part starts or ends in the middle of a
    # 32-channel weight panel, so its GEMM computes only that half of the panel's columns.
    _check((1, 24, 48, 24, 10, 10, 3, 1, 1, True, "relu", "hardswish"), "nhwc", threads)
    _check((1, 40, 112, 24, 7, 7, 5, 1, 1, False, "hardswish", "relu"), "nhwc", threads)
    # 240 = 7.5 panels: the parts end inside panel 3 (2 threads) or 2 and 4 (3), and the last
    # part ends in a panel and a half (one tile of three vectors)
    _check((1, 40, 240, 40, 7, 7, 3, 1, 1, False, "hardswish", "hardswish"), "nhwc", threads)
    # 184 expanded channels written as 192 (two whole panels at the end): the last part's
    # GEMM runs to the panel's end
    _check((1, 40, 184, 40, 7, 7, 3, 1, 1, True, "relu", "relu"), "nhwc", threads)
    # a 24-channel panel cut at 16 (2 threads): two pair vectors and one
    _check((1, 8, 24, 8, 7, 7, 3, 1, 1, True, "hardswish", "relu"), "nhwc", threads)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("spec", [
    (1, 40, 96, 40, 7, 7, 5, 1, 1, True, "hardswish", "hardswish"),   # residual, 8-channel slice
    (1, 24, 48, 40, 7, 7, 3, 1, 1, True, "relu", "relu"),             # parts inside a panel
    (1, 24, 80, 24, 7, 7, 5, 1, 1, False, "relu", "hardswish"),       # no gate
    (1, 112, 672, 160, 14, 14, 5, 2, 1, True, "hardswish", "hardswish"),
], ids=["residual-se", "mid-panel", "no-se", "large-14"])
def test_one_sample_projected_by_channel_parts(spec, threads, isa):
    # One sample split by channels: each thread projects its own channels (a partial sum, the
    # first from the bias, the others from zero) and the partial sums and x are added after.
    _check(spec, "nhwc", threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("spec", [
    (9, 16, None, 16, 112, 112, 3, 1, 1, False, "none", "relu"),        # 7.2 MB out, residual
    (6, 16, 32, 32, 80, 80, 3, 1, 1, True, "relu", "hardswish"),        # 4.9 MB, SE per sample
    (1, 16, 48, 32, 200, 200, 3, 1, 1, True, "hardswish", "relu"),      # 5.1 MB, SE in two phases
    (4, 16, 48, 24, 96, 96, 3, 1, 1, True, "relu", "hardswish"),        # 3.5 MB, rows not aligned
], ids=["residual", "se-per-sample", "se-two-phase", "unaligned"])
def test_outputs_larger_than_the_caches(spec, threads, isa, streaming):
    # Outputs of several MB: streamed (where the rows are whole vectors; plain stores otherwise,
    # 24 channels), and as the cache rule decides on this host.
    _check(spec, "nhwc", threads)


def test_block_batch_zero():
    _check((0, 8, 16, 8, 7, 9, 3, 1, 1, True, "relu", "relu"), "nhwc", 2)


def test_block_bands_match_at_every_thread_count():
    """Bands of rows (batch 1: one per thread), channel parts, whole samples: the same numbers."""
    spec = (3, 24, 72, 24, 28, 28, 5, 1, 1, True, "relu", "hardswish")
    ew, eb, dw, db, sew, pw, pb = _block(3, 24, 72, 24, 5, True)
    x = torch.randn(3, 24, 28, 28).contiguous(memory_format=torch.channels_last)
    outs = []
    before = torch.get_num_threads()
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        with torch.no_grad():
            outs.append(ops.inverted_residual(x, dw, pw, expand_weight=ew, expand_bias=eb, expand_activation="relu",
                                              dw_bias=db, padding=2, dw_activation="hardswish", se=sew,
                                              project_bias=pb, residual=True, backend="cpu"))
    torch.set_num_threads(before)
    want = _want(x, ew, eb, "relu", dw, db, 1, 2, 1, "hardswish", sew, pw, pb, True)
    for got in outs:
        assert rel_err(got.double(), want) < 1e-5
    assert spec[0] == 3


@pytest.mark.parametrize("spec", [
    (8, 24, 72, 24, 14, 14, 3, 1, 1, True, "relu", "hardswish"),   # whole samples, SE per sample
    (7, 16, 120, 24, 5, 5, 3, 1, 1, True, "hardswish", "relu"),    # chunks of samples (3, 3, 1)
    (7, 24, 72, 24, 14, 14, 5, 1, 1, True, "relu", "hardswish"),   # channel parts (2 per sample)
    (1, 40, 96, 40, 7, 7, 5, 1, 1, True, "relu", "hardswish"),     # one sample's parts, partial sums
    (3, 24, 72, 40, 28, 28, 3, 2, 1, True, "relu", "relu"),        # bands, SE in two phases
    (5, 16, None, 16, 20, 20, 3, 1, 1, False, "none", "relu"),     # bands read in place, no SE
], ids=["per-sample", "sample-chunks", "channel-parts", "one-sample-parts", "two-phase", "in-place"])
def test_block_items_taken_in_any_order_give_the_same_bits(spec):
    # The threads claim items (samples, bands, channel parts) as they get free: which thread
    # runs which item changes from call to call, the output must not.
    n, cin, ce, cout, h, w, k, s, d, se, eact, dact = spec
    ew, eb, dw, db, sew, pw, pb = _block(n, cin, ce, cout, k, se)
    x = torch.randn(n, cin, h, w).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            outs = [ops.inverted_residual(x, dw, pw, expand_weight=ew, expand_bias=eb, expand_activation=eact,
                                          dw_bias=db, stride=s, padding=k // 2, dw_activation=dact, se=sew,
                                          project_bias=pb, residual=cin == cout and s == 1, backend="cpu")
                    for _ in range(6)]
    finally:
        torch.set_num_threads(before)
    want = _want(x, ew, eb, eact, dw, db, s, k // 2, d, dact, sew, pw, pb, cin == cout and s == 1)
    assert rel_err(outs[0].double(), want) < 1e-5
    for got in outs[1:]:
        assert torch.equal(got, outs[0])


def test_packed_op_matches_functional_op():
    ew, eb, dw, db, sew, pw, pb = _block(2, 16, 48, 24, 3, True)
    x = torch.randn(2, 16, 20, 20)
    ep, pp = ops.pack_pointwise_weight(ew, eb), ops.pack_pointwise_weight(pw, pb)
    with torch.no_grad():
        a = torch.ops.mnv3.inverted_residual_packed(x, ep, 48, "hardswish", dw, db, [2, 2], [1, 1], [1, 1],
                                                    "relu", *sew, pp, 24, False)
        b = torch.ops.mnv3.inverted_residual(x, ew, eb, "hardswish", dw, db, [2, 2], [1, 1], [1, 1], "relu",
                                             *sew, pw, pb, False)
    assert torch.equal(a, b)


def test_block_gradients_through_the_decomposition():
    ew, eb, dw, db, sew, pw, pb = _block(2, 8, 24, 8, 3, True)
    params = [ew, eb, dw, db, *sew, pw, pb]
    x = torch.randn(2, 8, 9, 10)
    for t in params + [x]:
        t.requires_grad_(True)
    got = ops.inverted_residual(x, dw, pw, expand_weight=ew, expand_bias=eb, expand_activation="hardswish",
                                dw_bias=db, padding=1, dw_activation="relu", se=sew, project_bias=pb,
                                residual=True, backend="cpu")
    g = torch.randn_like(got)
    grads = torch.autograd.grad(got, [x] + params, g)
    want = reference.inverted_residual(x, ew, eb, "hardswish", dw, db, [1, 1], [1, 1], [1, 1], "relu", sew, pw, pb,
                                       True)
    wgrads = torch.autograd.grad(want, [x] + params, g)
    assert rel_err(got.detach().double(), want.detach().double()) < 1e-5
    for a, b in zip(grads, wgrads):
        assert rel_err(a.double(), b.double()) < 1e-4


def test_packed_op_refuses_to_be_tracked():
    ew, eb, dw, db, sew, pw, pb = _block(1, 8, 16, 8, 3, False)
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    with pytest.raises(RuntimeError, match="computes no gradients"):
        torch.ops.mnv3.inverted_residual_packed(x, ops.pack_pointwise_weight(ew, eb), 16, "relu", dw, db, [1, 1],
                                                [1, 1], [1, 1], "relu", None, None, None, None,
                                                ops.pack_pointwise_weight(pw, pb), 8, True)


def test_block_opcheck():
    ew, eb, dw, db, sew, pw, pb = _block(2, 8, 24, 8, 3, True)
    x = torch.randn(2, 8, 9, 10)
    torch.library.opcheck(torch.ops.mnv3.inverted_residual.default,
                          (x, ew, eb, "hardswish", dw, db, [1, 1], [1, 1], [1, 1], "relu", *sew, pw, pb, True))
    ep, pp = ops.pack_pointwise_weight(ew, eb), ops.pack_pointwise_weight(pw, pb)
    torch.library.opcheck(torch.ops.mnv3.inverted_residual_packed.default,
                          (x, ep, 24, "hardswish", dw, db, [2, 2], [1, 1], [1, 1], "relu", *sew, pp, 8, False))


def test_block_reference_backend_off_the_cpu_kernel_dtypes():
    ew, eb, dw, db, sew, pw, pb = (t.double() if t is not None else None for t in _block(1, 8, 16, 8, 3, False)[:4]
                                   + (None,) + _block(1, 8, 16, 8, 3, False)[5:])
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    got = ops.inverted_residual(x, dw, pw, expand_weight=ew, expand_bias=eb, dw_bias=db, padding=1,
                                project_bias=pb)
    want = reference.inverted_residual(x, ew, eb, "none", dw, db, [1, 1], [1, 1], [1, 1], "none", None, pw, pb,
                                       False)
    assert torch.equal(got, want)


@pytest.mark.parametrize("change, match", [
    (dict(expand_weight=torch.randn(16, 5)), "expand_weight has 5 input channels but x has 8"),
    (dict(expand_bias=torch.randn(15)), r"expand_bias must be \(16,\)"),
    (dict(dw_weight=torch.randn(15, 1, 3, 3)), r"dw_weight must be \(16, 1, kh, kw\)"),
    (dict(dw_bias=torch.randn(3)), r"dw_bias must be \(16,\)"),
    (dict(project_weight=torch.randn(8, 15)), "project_weight has 15 input channels but the expansion has 16"),
    (dict(project_bias=torch.randn(9)), r"project_bias must be \(8,\)"),
    (dict(se=se_params(15, 4)), "se: fc1_weight must be"),
    (dict(se=se_params(16, 4)[:3]), "se must be"),
    (dict(expand_activation="gelu"), "expand_activation must be one of"),
    (dict(dw_activation="swish"), "dw_activation must be one of"),
    (dict(stride=2, residual=True), "residual needs the output's shape"),
    (dict(project_weight=torch.randn(4, 16), project_bias=None, residual=True), "residual needs the output.s shape"),
    (dict(dw_weight=torch.randn(16, 1, 9, 9)), "smaller than the dilated kernel"),
    (dict(residual=1), "residual must be a bool"),
    (dict(expand_weight=torch.randn(16, 8, dtype=torch.float64)), "expand_weight has dtype"),
    (dict(x=torch.randn(8, 5, 5)), "x must be 4-D"),
])
def test_block_bad_input_names_the_argument(change, match):
    ew, eb, dw, db, sew, pw, pb = _block(1, 8, 16, 8, 3, True)
    args = dict(x=torch.randn(1, 8, 5, 5), dw_weight=dw, project_weight=pw, expand_weight=ew, expand_bias=eb,
                dw_bias=db, padding=1, se=sew, project_bias=pb, residual=False)
    args.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        ops.inverted_residual(args.pop("x"), args.pop("dw_weight"), args.pop("project_weight"), backend="cpu", **args)


@pytest.mark.parametrize("call, match", [
    (lambda a: a.update(expand_channels=40), r"expand_packed must be \(2, 9, 32\)"),
    (lambda a: a.update(expand_packed=None), "without expand_packed, expand_channels must equal"),
    (lambda a: a.update(se_fc2_bias=None), "go together"),
    (lambda a: a.update(out_channels=40), r"project_packed must be \(2, 17, 32\)"),
    (lambda a: a.update(residual=True, out_channels=8, stride=[2, 2]), "residual needs"),
])
def test_packed_op_bad_input_is_refused(call, match):
    ew, eb, dw, db, sew, pw, pb = _block(1, 8, 16, 8, 3, True)
    a = dict(x=torch.randn(1, 8, 6, 6), expand_packed=ops.pack_pointwise_weight(ew, eb), expand_channels=16,
             expand_activation="relu", dw_weight=dw, dw_bias=db, stride=[1, 1], padding=[1, 1], dilation=[1, 1],
             dw_activation="relu", se_fc1_weight=sew[0], se_fc1_bias=sew[1], se_fc2_weight=sew[2],
             se_fc2_bias=sew[3], project_packed=ops.pack_pointwise_weight(pw, pb), out_channels=8, residual=False)
    call(a)
    with torch.no_grad(), pytest.raises(ValueError, match=match):
        torch.ops.mnv3.inverted_residual_packed(*a.values())
