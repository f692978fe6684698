"""Global average pool: mnv3::global_avg_pool, ops.global_avg_pool and FusedGlobalAvgPool (what
convert() puts in torchvision MobileNetV3's avgpool), against F.adaptive_avg_pool2d(x, 1)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import mnv3_kernels
from mnv3_kernels import _extension, modules as M, ops

from conftest import randomize_model_bn_, rel_err

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="compiled library not loaded")

SHAPES = [(1, 960, 7, 7), (8, 576, 7, 7), (3, 17, 5, 9), (2, 3, 1, 1), (1, 1, 13, 1), (0, 4, 3, 3)]


def _layouts(x):
    yield "nchw", x.contiguous()
    yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "strided", x.transpose(2, 3).contiguous().transpose(2, 3)  # H, W swapped in memory
    yield "sliced", torch.cat([x, x], 1)[:, ::2]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_op_matches_adaptive_avg_pool(shape):
    base = torch.randn(*shape) * 3 + 1
    for name, x in _layouts(base):
        got = ops.global_avg_pool(x)
        want = F.adaptive_avg_pool2d(x.double(), 1)
        assert got.shape == want.shape, name
        assert got.dtype == torch.float32
        if x.numel():
            assert rel_err(got.double(), want) < 1e-6, name
        # Same memory format rule as the other ops: channels_last in, channels_last out.
        assert got.is_contiguous(memory_format=ops.output_memory_format(x)), name


def test_empty_map_gives_nan_as_pytorch():
    x = torch.randn(2, 3, 0, 4)
    got = ops.global_avg_pool(x)
    assert got.shape == (2, 3, 1, 1) and torch.isnan(got).all()
    assert torch.isnan(F.adaptive_avg_pool2d(x, 1)).all()


def test_gradients_and_opcheck():
    x = torch.randn(2, 5, 7, 9, requires_grad=True)
    (ops.global_avg_pool(x) * torch.arange(5.0).view(1, 5, 1, 1)).sum().backward()
    want = torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 7, 9) / 63
    torch.testing.assert_close(x.grad, want)
    for x in (torch.randn(2, 5, 7, 9), torch.randn(2, 5, 7, 9).contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.mnv3.global_avg_pool.default, (x,))
        torch.library.opcheck(torch.ops.mnv3.global_avg_pool.default, (x.clone().requires_grad_(),))


def test_bad_input():
    with pytest.raises(ValueError, match="4-D"):
        ops.global_avg_pool(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="x"):
        ops.global_avg_pool([1.0, 2.0])
    with pytest.raises(TypeError, match="float32"):
        torch.ops.mnv3.global_avg_pool(torch.randn(1, 2, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="4-D"):
        torch.ops.mnv3.global_avg_pool(torch.randn(2, 3))
    # Other float dtypes take the reference path.
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ops.global_avg_pool(x), F.adaptive_avg_pool2d(x, 1))


def test_module_in_a_converted_model(one_thread):
    model = randomize_model_bn_(torchvision.models.mobilenet_v3_small().eval())
    want = copy.deepcopy(model).double()
    mnv3_kernels.convert(model)
    assert isinstance(model.avgpool, M.FusedGlobalAvgPool)
    assert model.mnv3_report.counts()["pool"]["fused"] == 1
    x = torch.randn(3, 3, 67, 61)
    mnv3_kernels.path_stats(reset=True)
    with torch.inference_mode():
        got = model(x)
    # The model runs as one chain (FusedMobileNetV3), the pool as one of its steps.
    assert mnv3_kernels.path_stats(reset=True) == {("FusedMobileNetV3", "fused", "cpu"): 1}
    assert ("pool",) in model._cache()["chain"][1].describe()
    with torch.no_grad():
        assert rel_err(got.double(), want(x.double())) < 1e-4
        maps = torch.randn(3, 576, 3, 2)
        torch.testing.assert_close(model.avgpool(maps), maps.mean((2, 3), keepdim=True))
    assert mnv3_kernels.path_stats()[("FusedGlobalAvgPool", "fused", "cpu")] == 1
    # Other inputs and backends: the original pool.
    pool = model.avgpool
    for x, backend in ((torch.randn(2, 8, 5, 5, dtype=torch.float64), "auto"), (torch.randn(2, 8, 5, 5), "reference")):
        pool.backend = backend
        torch.testing.assert_close(pool(x), F.adaptive_avg_pool2d(x, 1))
    pool.backend = "auto"
    torch.testing.assert_close(pool(torch.ones(8, 5, 5)), torch.ones(8, 1, 1))  # 3-D: the original
    mnv3_kernels.revert(model)
    assert type(model.avgpool) is nn.AdaptiveAvgPool2d


def test_only_global_pools_are_fused():
    with pytest.raises(ValueError, match="output_size"):
        M.FusedGlobalAvgPool(nn.AdaptiveAvgPool2d(2))
    with pytest.raises(ValueError, match="not an nn.AdaptiveAvgPool2d"):
        M.FusedGlobalAvgPool(nn.AvgPool2d(2))
    model = torchvision.models.mobilenet_v3_small().eval()
    model.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    model.classifier[0] = nn.Linear(576 * 4, 1024)
    mnv3_kernels.convert(model)
    assert type(model.avgpool) is nn.AdaptiveAvgPool2d
    assert model.mnv3_report.counts()["pool"]["skipped"] == 1
