import os
import zlib

import pytest
import torch

import mnv3_kernels  # noqa: F401  (registers the operators)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped cleanly without one")
    config.addinivalue_line("markers", "slow: long-running (model-level) test")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    # Model-level tests: OpenMP spinning on an oversubscribed 2-core machine is very slow.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute error relative to the largest magnitude of b."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random inputs per test, reproducible from the test id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


def random_bn_(bn: torch.nn.modules.batchnorm._BatchNorm) -> torch.nn.Module:
    """Give a BatchNorm non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    return bn


def randomize_model_bn_(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            random_bn_(m)
    return model


def folded_dw_params(channels: int, kernel: int, dtype=torch.float32, device="cpu", kernel_w=None):
    """A depthwise weight and bias as BN folding produces them (random, non-trivial)."""
    kw = kernel if kernel_w is None else kernel_w
    weight = torch.randn(channels, 1, kernel, kw, device=device, dtype=torch.float32) / kernel
    bias = torch.randn(channels, device=device, dtype=torch.float32) * 0.5
    return weight.to(dtype), bias.to(dtype)


def se_params(channels: int, squeeze: int, dtype=torch.float32, device="cpu"):
    w1 = torch.randn(squeeze, channels, device=device) / channels**0.5
    b1 = torch.randn(squeeze, device=device) * 0.1
    w2 = torch.randn(channels, squeeze, device=device) / squeeze**0.5
    b2 = torch.randn(channels, device=device) * 0.5
    return [t.to(dtype) for t in (w1, b1, w2, b2)]


TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
