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


def random_bn_(bn: torch.nn.modules.batchnorm._BatchNorm, in_network: bool = False) -> torch.nn.Module:
    """Give a BatchNorm non-trivial affine parameters and running statistics, with the states
    trained networks have: negative scales, dead channels (running variance near zero, so the
    fold multiplies by up to 1/sqrt(eps)) and large running means.

    in_network: for every BN of a whole network. A trained network's dead channels see a
    constant input (x - mean ~ 0); random inputs do not, and 1/sqrt(eps) per layer would grow
    without bound over the depth, so there the dead channels' scales are small too."""
    n = bn.num_features
    with torch.no_grad():
        if bn.weight is not None:
            sign = torch.where(torch.rand(n) < 0.25, -1.0, 1.0)
            bn.weight.copy_(sign * torch.empty(n).uniform_(0.5, 1.5))
            bn.bias.uniform_(-0.5, 0.5)
        mean = torch.empty(n).uniform_(-0.5, 0.5)
        large = torch.rand(n) < 0.125
        mean[large] = torch.empty(int(large.sum())).uniform_(5.0, 20.0) * torch.sign(torch.randn(int(large.sum())))
        var = torch.empty(n).uniform_(0.5, 2.0)
        dead = torch.rand(n) < 0.125
        var[dead] = torch.empty(int(dead.sum())).uniform_(0.0, 1e-4)
        # Every kind present whatever the draw (channel 0 negative scale, 1 dead, 2 large mean).
        if bn.weight is not None and n >= 3:
            bn.weight[0] = -bn.weight[0].abs()
        if n >= 3:
            var[1], mean[2] = 1e-5, 12.0
            dead[1] = True
        if in_network and bn.weight is not None:
            bn.weight[dead] *= 1e-3
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(7)
    return bn


def randomize_model_bn_(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            random_bn_(m, in_network=True)
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


# Every CPU ISA this machine supports (each implies the ones after it), for the kernel tests.
_ALL_ISAS = ["avx512", "avx2", "portable"]


def cpu_isas() -> list:
    from mnv3_kernels import _extension

    best = _extension.BUILD_INFO.get("cpu_isa_supported", "portable") if _extension.LOADED else "portable"
    return _ALL_ISAS[_ALL_ISAS.index(best):]


@pytest.fixture(params=cpu_isas())
def isa(request):
    """Runs the test once per supported CPU ISA, with the kernels switched to it."""
    from mnv3_kernels import _extension

    before = _extension._C.build_info()["cpu_isa"]
    _extension._C._set_cpu_isa(request.param)
    assert _extension._C.build_info()["cpu_isa"] == request.param
    yield request.param
    _extension._C._set_cpu_isa(before)


@pytest.fixture(params=["streamed", "cache-rule"])
def streaming(request):
    """Runs the test with outputs of 1 MB and more written as streaming stores, then with the
    library's own rule (which, on a host with a large L3, streams none of a test's outputs)."""
    from mnv3_kernels import _extension

    if not _extension.LOADED:
        pytest.skip("compiled library not loaded")
    _extension._C._set_stream_threshold(1 << 20 if request.param == "streamed" else -1)
    yield request.param
    _extension._C._set_stream_threshold(-1)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x as NCHW ("nchw"), channels_last ("nhwc"), or a view dense in neither ("sliced")."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "nhwc":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.randn(x.shape[0], x.shape[1] + 3, x.shape[2] + 2, x.shape[3] * 2)
        view = big[:, 1:1 + x.shape[1], 2:, ::2]
        view.copy_(x)
        return view
    raise ValueError(layout)

