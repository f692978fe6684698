"""Triton kernels: depthwise conv + folded BN + activation, squeeze-excite, h-swish, h-sigmoid.

Only imported when Triton imports (see __init__.py). Every kernel reads its inputs through
explicit strides, so NCHW, channels_last and other strided tensors need no layout copy; the
CHANNELS_LAST flag only picks the tile orientation that keeps the contiguous axis (channels
for NHWC, pixels for NCHW) as the fast, coalesced axis of the tile.

All arithmetic is done in fp32 whatever the storage dtype. Offsets inside one sample are int32
unless IDX64 says a sample spans 2^31 elements or more; the per-sample base is always int64,
because N*C*H*W exceeds 2^31 at large batch.

Autotuning: on a GPU each autotuned kernel benchmarks its configs once per key. Keys hold size
buckets (tune_bucket: next power of two) rather than exact sizes, plus what moves the best tile
(channels, batch bucket, kernel shape, layout), so a new batch size neither retunes nor reuses a
batch-1 tile at batch 256. MNV3_TRITON_AUTOTUNE=0 (read at import) keeps one config per kernel:
no benchmarking, for tests. Kernels that write their own input (in-place activations) are never
autotuned: the autotuner runs every config on the live buffer.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# The interpreter checks every int32 op for overflow (a Python-level pass per op); int64
# indices skip that check and make interpreted tests several times faster. Tests may turn it
# off to run the int32 path under the overflow checker.
FORCE_IDX64 = INTERPRET
# "0": one config per autotuned kernel (its default), no benchmarking.
AUTOTUNE = os.environ.get("MNV3_TRITON_AUTOTUNE", "1") != "0"

# Activation codes (constexpr): the epilogue is specialized per activation. 0-3 are the C++
# kernels' codes (csrc/common/activation.h); h-sigmoid is used only inside this file.
ACT_NONE, ACT_RELU, ACT_HARDSWISH, ACT_RELU6, ACT_HARDSIGMOID = 0, 1, 2, 3, 4
ACT_CODES = {"none": ACT_NONE, "relu": ACT_RELU, "hardswish": ACT_HARDSWISH, "relu6": ACT_RELU6}


def _config(entry):
    kw, warps = entry
    return triton.Config(dict(kw), num_warps=warps, num_stages=1)


def tune_bucket(size) -> int:
    """A size as it enters autotune keys: the next power of two (1, 2, 4, ...), so sizes within
    2x share one tuning while batch 1 and batch 256 do not."""
    return triton.next_power_of_2(max(int(size), 1))


def _autotuned(fn, key, entries, default, interpret_entry):
    """fn autotuned over entries on a GPU; one config (default, or a single large tile under the
    interpreter, which pays per program and per op, hardly per element) otherwise.

    The full GPU list stays reachable as .gpu_configs, so tests can make the autotuner
    benchmark every config under the interpreter."""
    if INTERPRET:
        chosen = [interpret_entry]
    elif not AUTOTUNE:
        chosen = [default]
    else:
        chosen = entries
    kernel = triton.autotune(configs=[_config(e) for e in chosen], key=key)(fn)
    kernel.gpu_configs = [_config(e) for e in entries]
    return kernel


# ----------------------------------------------------------------------------------------------
# Shared device helpers
# ----------------------------------------------------------------------------------------------
# NaN in, NaN out, as PyTorch: clamps are selects that replace a value only when a comparison
# holds (never for NaN). tl.maximum/tl.minimum would not do: they return the other operand for
# NaN (maxnum semantics; the interpreter too: tl.maximum(nan, 0) == 0).
@triton.jit
def _hardsigmoid(y):
    # clamp(y/6 + 1/2, 0, 1), without a divide.
    t = y * (1.0 / 6.0) + 0.5
    t = tl.where(t < 0.0, 0.0, t)
    return tl.where(t > 1.0, 1.0, t)


@triton.jit
def _activate(y, ACT: tl.constexpr):
    # ACT: the ACT_* codes above (a jitted function reads no plain Python globals).
    if ACT == 1:  # relu
        y = tl.where(y < 0.0, 0.0, y)
    elif ACT == 2:  # hardswish
        y = y * _hardsigmoid(y)
    elif ACT == 3:  # relu6
        y = tl.where(y < 0.0, 0.0, y)
        y = tl.where(y > 6.0, 6.0, y)
    elif ACT == 4:  # hardsigmoid
        y = _hardsigmoid(y)
    return y


@triton.jit
def _tile_coords(pb, cb, P, C, IDX64: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pixel and channel indices of one tile, shaped to broadcast to the tile.

    NHWC tiles are [pixels x channels] (channels fastest); NCHW tiles are [channels x pixels]
    (pixels fastest). Either way the last axis is the one contiguous in memory.
    """
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    if IDX64:
        p = p.to(tl.int64)
        c = c.to(tl.int64)
    if CHANNELS_LAST:
        p2 = p[:, None]
        c2 = c[None, :]
    else:
        p2 = p[None, :]
        c2 = c[:, None]
    return p2, c2, p2 < P, c2 < C


@triton.jit
def _dw_row(acc, x_row, row_ok, w_row, iw0, j, dw, W, sxw, sww, wmask):
    # One tap of one kernel row: the row pointer and row mask are hoisted out of the j loop.
    iw = iw0 + j * dw
    # Masked load = zero padding; lanes outside the image are never dereferenced.
    xv = tl.load(x_row + iw * sxw, mask=row_ok & (iw >= 0) & (iw < W), other=0.0)
    wv = tl.load(w_row + j * sww, mask=wmask, other=0.0)
    return acc + xv.to(tl.float32) * wv.to(tl.float32)


# ----------------------------------------------------------------------------------------------
# Depthwise conv + folded BN (bias) + activation
# ----------------------------------------------------------------------------------------------
# NHWC tiles: channels along the lanes, so a warp reads whole 128-bit vectors of contiguous
# channels; several pixels per thread reuse each weight register. BLOCK_C 16 serves C = 16.
_DW_NHWC = [
    ({"BLOCK_P": 8, "BLOCK_C": 128}, 4),
    ({"BLOCK_P": 16, "BLOCK_C": 128}, 4),
    ({"BLOCK_P": 32, "BLOCK_C": 128}, 8),
    ({"BLOCK_P": 16, "BLOCK_C": 64}, 4),
    ({"BLOCK_P": 32, "BLOCK_C": 64}, 4),
    ({"BLOCK_P": 64, "BLOCK_C": 64}, 8),
    ({"BLOCK_P": 64, "BLOCK_C": 32}, 4),
    ({"BLOCK_P": 128, "BLOCK_C": 16}, 4),
    ({"BLOCK_P": 64, "BLOCK_C": 16}, 2),
]
# NCHW tiles: a few channel planes, pixels (row-major, W fastest) along the lanes. BLOCK_C
# starts at 2 rather than 1 to stay clear of size-1 tile dimensions.
_DW_NCHW = [
    ({"BLOCK_C": 2, "BLOCK_P": 128}, 4),
    ({"BLOCK_C": 2, "BLOCK_P": 512}, 8),
    ({"BLOCK_C": 2, "BLOCK_P": 256}, 4),
    ({"BLOCK_C": 4, "BLOCK_P": 128}, 4),
    ({"BLOCK_C": 4, "BLOCK_P": 256}, 8),
    ({"BLOCK_C": 8, "BLOCK_P": 64}, 4),
    ({"BLOCK_C": 16, "BLOCK_P": 64}, 8),
]
# The pooled variant writes one row of partial channel sums per pixel block, so its pixel
# block is fixed (rows must not depend on the tuned config) and only channels/warps are tuned.
POOL_BLOCK_P_NHWC = 32
POOL_BLOCK_P_NCHW = 128
_DW_POOL_NHWC = [
    ({"BLOCK_P": POOL_BLOCK_P_NHWC, "BLOCK_C": 32}, 4),
    ({"BLOCK_P": POOL_BLOCK_P_NHWC, "BLOCK_C": 64}, 4),
    ({"BLOCK_P": POOL_BLOCK_P_NHWC, "BLOCK_C": 128}, 8),
]
_DW_POOL_NCHW = [
    ({"BLOCK_C": 8, "BLOCK_P": POOL_BLOCK_P_NCHW}, 8),
    ({"BLOCK_C": 2, "BLOCK_P": POOL_BLOCK_P_NCHW}, 4),
    ({"BLOCK_C": 4, "BLOCK_P": POOL_BLOCK_P_NCHW}, 4),
]
# tune_n / tune_p: tune_bucket of the batch and of the output plane (key only, unused by the
# kernel, never specialized on).
_DW_KEY = ["C", "tune_n", "tune_p", "KH", "KW", "SH", "SW", "STATIC", "CHANNELS_LAST", "IDX64"]


@triton.jit(do_not_specialize=["tune_n", "tune_p"])
def _dwconv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, sums_ptr,
    C, H, W, OW, OHW, sums_rows, tune_n, tune_p,
    sxn, sxc, sxh, sxw,
    swc, swh, sww, sb,
    son, soc, sop,
    ph, pw, dh, dw,
    kh, kw, sh, sw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    STATIC: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, IDX64: tl.constexpr, POOL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Axis 0 enumerates (sample, pixel block) so the batch is not bound by the 65535 limit of
    # grid axes 1/2; neighbouring programs share a channel block and their input halo in L2.
    num_pb = tl.cdiv(OHW, BLOCK_P)
    pid = tl.program_id(0)
    n = pid // num_pb
    pb = pid % num_pb
    cb = tl.program_id(1)
    p, c, pmask, cmask = _tile_coords(pb, cb, OHW, C, IDX64, CHANNELS_LAST, BLOCK_P, BLOCK_C)
    oh = p // OW
    ow = p % OW

    x_base = x_ptr + n.to(tl.int64) * sxn
    x_c = c * sxc
    w_c = c * swc
    if CHANNELS_LAST:
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    if STATIC:
        ih0 = oh * SH - ph
        iw0 = ow * SW - pw
    else:
        ih0 = oh * sh - ph
        iw0 = ow * sw - pw
    ok = pmask & cmask
    if STATIC:
        # Hot shapes (k in {3,5}, stride in {1,2}): taps and strides are compile-time constants,
        # the tap loop is fully unrolled and each weight vector is loaded once per program.
        for i in tl.static_range(KH):
            ih = ih0 + i * dh
            x_row = x_base + x_c + ih * sxh
            row_ok = ok & (ih >= 0) & (ih < H)
            for j in tl.static_range(KW):
                acc = _dw_row(acc, x_row, row_ok, w_ptr + w_c + i * swh, iw0, j, dw, W, sxw, sww, cmask)
    else:
        # Any kernel size / stride: runtime loops, same tile and masking.
        for i in range(kh):
            ih = ih0 + i * dh
            x_row = x_base + x_c + ih * sxh
            row_ok = ok & (ih >= 0) & (ih < H)
            for j in range(kw):
                acc = _dw_row(acc, x_row, row_ok, w_ptr + w_c + i * swh, iw0, j, dw, W, sxw, sww, cmask)

    if HAS_BIAS:
        acc += tl.load(b_ptr + c * sb, mask=cmask, other=0.0).to(tl.float32)
    acc = _activate(acc, ACT)
    # The output is dense NCHW or NHWC, so its pixel index is flat: offset = p * sop.
    o = out_ptr + n.to(tl.int64) * son + c * soc + p * sop
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=pmask & cmask)

    if POOL:
        # SE's global pool, taken from the activated tile while it is still in registers.
        s = tl.where(pmask & cmask, acc, 0.0)
        if CHANNELS_LAST:
            part = tl.sum(s, axis=0)
        else:
            part = tl.sum(s, axis=1)
        cv = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        row = n.to(tl.int64) * sums_rows + pb
        tl.store(sums_ptr + row * C + cv, part, mask=cv < C)


dwconv_nhwc = _autotuned(_dwconv_kernel, _DW_KEY, _DW_NHWC, _DW_NHWC[4], ({"BLOCK_P": 128, "BLOCK_C": 128}, 4))
dwconv_nchw = _autotuned(_dwconv_kernel, _DW_KEY, _DW_NCHW, _DW_NCHW[2], ({"BLOCK_C": 64, "BLOCK_P": 256}, 4))
dwconv_pool_nhwc = _autotuned(_dwconv_kernel, _DW_KEY, _DW_POOL_NHWC, _DW_POOL_NHWC[1], _DW_POOL_NHWC[2])
dwconv_pool_nchw = _autotuned(_dwconv_kernel, _DW_KEY, _DW_POOL_NCHW, _DW_POOL_NCHW[2],
                              ({"BLOCK_C": 64, "BLOCK_P": POOL_BLOCK_P_NCHW}, 4))


# ----------------------------------------------------------------------------------------------
# Squeeze-excite: (1) partial channel sums, (2) tiny MLP -> gate, (3) channel-wise scale
# ----------------------------------------------------------------------------------------------
@triton.jit
def _se_sum_kernel(
    x_ptr, part_ptr,
    C, HW, W, chunk, split,
    sxn, sxc, sxh, sxw,
    X_FLAT: tl.constexpr, CHANNELS_LAST: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Each program sums `chunk` pixels of one channel block of one sample and writes its own row
    # of partials: deterministic, no atomics, no zero-initialised buffer.
    pid = tl.program_id(0)
    n = pid // split
    s = pid % split
    cb = tl.program_id(1)
    x_base = x_ptr + n.to(tl.int64) * sxn
    start = s * chunk
    end = tl.minimum(start + chunk, HW)
    if CHANNELS_LAST:
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p, c, pmask, cmask = _tile_coords(0, cb, end - p0, C, IDX64, CHANNELS_LAST, BLOCK_P, BLOCK_C)
        p = p + p0
        if X_FLAT:
            off = p * sxw
        else:
            off = (p // W) * sxh + (p % W) * sxw
        acc += tl.load(x_base + c * sxc + off, mask=pmask & cmask, other=0.0).to(tl.float32)
    if CHANNELS_LAST:
        part = tl.sum(acc, axis=0)
    else:
        part = tl.sum(acc, axis=1)
    cv = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(part_ptr + (n.to(tl.int64) * split + s) * C + cv, part, mask=cv < C)


@triton.jit
def _se_gate_kernel(
    part_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, gate_ptr,
    C, R, split, inv_hw,
    s1r, s1c, sb1, s2c, s2r, sb2,
    BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_CO: tl.constexpr,
):
    # gate[n, co] = hardsigmoid(b2 + W2 relu(b1 + W1 mean)) for one block of output channels.
    # The hidden layer (R <= C/4) is recomputed per block: a few hundred kFLOP, all from L2.
    n = tl.program_id(0)
    co = tl.program_id(1) * BLOCK_CO + tl.arange(0, BLOCK_CO)
    comask = co < C
    srow = tl.arange(0, BLOCK_S)
    part_base = part_ptr + n.to(tl.int64) * split * C
    out = tl.zeros([BLOCK_CO], dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < R
        h = tl.zeros([BLOCK_R], dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < C
            pp = tl.load(part_base + srow[:, None] * C + k[None, :],
                         mask=(srow[:, None] < split) & kmask[None, :], other=0.0)
            pooled = tl.sum(pp, axis=0) * inv_hw
            w1 = tl.load(w1_ptr + r[:, None] * s1r + k[None, :] * s1c,
                         mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
            h += tl.sum(w1 * pooled[None, :], axis=1)
        h = _activate(h + tl.load(b1_ptr + r * sb1, mask=rmask, other=0.0).to(tl.float32), 1)  # ACT_RELU
        # Rows past R must add exactly 0 (their sum is 0 * pooled, NaN when pooled is inf).
        h = tl.where(rmask, h, 0.0)
        w2 = tl.load(w2_ptr + co[:, None] * s2c + r[None, :] * s2r,
                     mask=comask[:, None] & rmask[None, :], other=0.0).to(tl.float32)
        out += tl.sum(w2 * h[None, :], axis=1)
    out += tl.load(b2_ptr + co * sb2, mask=comask, other=0.0).to(tl.float32)
    gate = _activate(out, 4)  # ACT_HARDSIGMOID
    tl.store(gate_ptr + n.to(tl.int64) * C + co, gate, mask=comask)


_SCALE_NHWC = [
    ({"BLOCK_P": 16, "BLOCK_C": 128}, 4),
    ({"BLOCK_P": 32, "BLOCK_C": 128}, 8),
    ({"BLOCK_P": 32, "BLOCK_C": 64}, 4),
    ({"BLOCK_P": 64, "BLOCK_C": 64}, 8),
    ({"BLOCK_P": 128, "BLOCK_C": 16}, 4),
]
_SCALE_NCHW = [
    ({"BLOCK_C": 2, "BLOCK_P": 256}, 4),
    ({"BLOCK_C": 2, "BLOCK_P": 512}, 8),
    ({"BLOCK_C": 4, "BLOCK_P": 256}, 4),
    ({"BLOCK_C": 8, "BLOCK_P": 128}, 4),
]
_SCALE_KEY = ["C", "tune_n", "tune_p", "CHANNELS_LAST", "X_FLAT", "IDX64"]


@triton.jit(do_not_specialize=["tune_n", "tune_p"])
def _se_scale_kernel(
    x_ptr, gate_ptr, out_ptr,
    C, HW, W, tune_n, tune_p,
    sxn, sxc, sxh, sxw, son, soc, sop,
    X_FLAT: tl.constexpr, CHANNELS_LAST: tl.constexpr, IDX64: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    num_pb = tl.cdiv(HW, BLOCK_P)
    pid = tl.program_id(0)
    n = pid // num_pb
    pb = pid % num_pb
    cb = tl.program_id(1)
    p, c, pmask, cmask = _tile_coords(pb, cb, HW, C, IDX64, CHANNELS_LAST, BLOCK_P, BLOCK_C)
    if X_FLAT:
        off = p * sxw
    else:
        off = (p // W) * sxh + (p % W) * sxw
    mask = pmask & cmask
    xv = tl.load(x_ptr + n.to(tl.int64) * sxn + c * sxc + off, mask=mask, other=0.0)
    g = tl.load(gate_ptr + n.to(tl.int64) * C + c, mask=cmask, other=0.0)
    y = xv.to(tl.float32) * g
    tl.store(out_ptr + n.to(tl.int64) * son + c * soc + p * sop, y.to(out_ptr.dtype.element_ty), mask=mask)


se_scale_nhwc = _autotuned(_se_scale_kernel, _SCALE_KEY, _SCALE_NHWC, _SCALE_NHWC[2], ({"BLOCK_P": 128, "BLOCK_C": 128}, 4))
se_scale_nchw = _autotuned(_se_scale_kernel, _SCALE_KEY, _SCALE_NCHW, _SCALE_NCHW[0], ({"BLOCK_C": 64, "BLOCK_P": 256}, 4))
se_sum = _se_sum_kernel
se_gate = _se_gate_kernel


# ----------------------------------------------------------------------------------------------
# Elementwise h-swish / h-sigmoid over a dense buffer
# ----------------------------------------------------------------------------------------------
_ELEMENTWISE = [
    ({"BLOCK": 1024}, 4),
    ({"BLOCK": 2048}, 4),
    ({"BLOCK": 4096}, 8),
    ({"BLOCK": 8192}, 8),
]


@triton.jit(do_not_specialize=["tune_numel"])
def _elementwise_kernel(x_ptr, out_ptr, numel, tune_numel, ACT: tl.constexpr, BLOCK: tl.constexpr):
    # x_ptr may equal out_ptr (in place): each element is read before the same lane writes it.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _activate(x, ACT).to(out_ptr.dtype.element_ty), mask=mask)


elementwise = _autotuned(_elementwise_kernel, ["tune_numel", "ACT"], _ELEMENTWISE, _ELEMENTWISE[2], _ELEMENTWISE[3])
# In place: one fixed config, never autotuned (benchmarking N configs on the live buffer would
# apply the activation N times over).
elementwise_inplace = _elementwise_kernel
ELEMENTWISE_INPLACE_META = dict(BLOCK=8192 if INTERPRET else 4096, num_warps=8)
