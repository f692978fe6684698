"""The machine's ceilings, measured in the same run as the kernels they are compared with.

    matmul  torch.mm of fp32 square matrices: the achievable FMA peak ("measured matmul peak")
    copy    a large tensor copy: the achievable memory bandwidth (read + write bytes)
The report divides each kernel's GFLOP/s (CPU) or GB/s (GPU) by these.
"""
import pytest
import torch

from benchmarks import common


def _sizes(dev):
    if dev == "cuda":
        return {"matmul": 4096, "copy": 256 * 2**20}   # floats; 1 GiB source
    return {"matmul": 1024, "copy": 16 * 2**20}         # 64 MiB source, beyond the last-level cache


@pytest.mark.parametrize("provider", ["matmul", "copy"])
def test_ceiling(bench, dev, provider):
    size = _sizes(dev)[provider]
    gen_seed = common.seed_of("ceiling", provider)
    if provider == "matmul":
        a = common.make_input((size, size), "nchw", dev, gen_seed)
        b = common.make_input((size, size), "nchw", dev, gen_seed + 1)
        ref = (a[:64].double() @ b.double())

        def fn(a, b):
            return torch.mm(a, b)

        args, flops, nbytes, shape = (a, b), 2 * size**3, 3 * 4 * size * size, (size, size)

        def check(out):
            common.check_close(out[:64], ref, "matmul ceiling", rtol=1e-3)
    else:
        src = common.make_input((size,), "nchw", dev, gen_seed)
        dst = torch.empty_like(src)

        def fn(src):
            return dst.copy_(src)

        args, flops, nbytes, shape = (src,), None, 2 * 4 * size, (size,)

        def check(out):
            assert torch.equal(out, src)
    bench(
        group=f"ceiling {dev}", provider=provider, fn=fn, args=args, kind="ceiling",
        op=provider, baseline=provider, check_fn=check, flops=flops, nbytes=nbytes, shape=shape,
        layer=provider,
    )
