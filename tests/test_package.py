"""Package-level behaviour: build info, backend listing, and the fallback without the library."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mnv3_kernels
from mnv3_kernels import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_backends_lists_reference_last():
    found = mnv3_kernels.backends()
    assert found[-1] == "reference"
    assert set(found) <= {"cpu", "cuda", "triton", "reference"}
    assert ("cuda" in found) == (torch.cuda.is_available() and mnv3_kernels.build_info().get("cuda_built") == "true")


@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_build_info_from_compiled_library():
    info = mnv3_kernels.build_info()
    assert info["compiled"] == "true"
    assert info["version"] == mnv3_kernels.__version__
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cuda_built"] in ("true", "false")
    assert info["cpu_isa"] in ("avx512", "avx2", "portable")


@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_cpu_isa_can_be_forced_from_the_environment():
    code = "import mnv3_kernels; print(mnv3_kernels.build_info()['cpu_isa'])"
    env = dict(os.environ, MNV3_CPU_ISA="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "portable"


def test_package_imports_and_falls_back_without_compiled_library():
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["mnv3_kernels._C"] = None  # as if the library were missing
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mnv3_kernels
        assert any("compiled library could not be loaded" in str(w.message) for w in caught), caught
        import torch
        from mnv3_kernels import ops, reference
        assert "cpu" not in mnv3_kernels.backends()
        assert mnv3_kernels.build_info()["compiled"] == "false"
        x = torch.randn(1, 8, 7, 7); w = torch.randn(8, 1, 3, 3); b = torch.randn(8)
        y = ops.dwconv_bn_act(x, w, b, 1, 1)
        torch.testing.assert_close(y, reference.dwconv_bn_act(x, w, b, (1, 1), (1, 1), (1, 1), "hardswish"))
        try:
            ops.dwconv_bn_act(x, w, b, 1, 1, backend="cpu")
        except RuntimeError as e:
            assert "backend 'cpu' is not available" in str(e), e
        else:
            raise AssertionError("backend='cpu' without the library must raise")
        print("fallback ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MNV3_REQUIRE_COMPILED"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout


def test_require_compiled_makes_a_missing_library_fail_the_import():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["mnv3_kernels._C"] = None  # as if the library were missing
        try:
            import mnv3_kernels
        except ImportError as e:
            assert "MNV3_REQUIRE_COMPILED=1" in str(e), e
            print("import refused")
        """
    )
    env = dict(os.environ, MNV3_REQUIRE_COMPILED="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "import refused" in out.stdout


@pytest.mark.skipif("cpu" not in ops.backends(), reason="compiled CPU library not loaded")
def test_cpu_isa_typo_warns_and_uses_the_best():
    code = textwrap.dedent(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import mnv3_kernels
        print([str(w.message) for w in caught if "MNV3_CPU_ISA" in str(w.message)])
        info = mnv3_kernels.build_info()
        print(info["cpu_isa"], info["cpu_isa_supported"])
        """
    )
    env = dict(os.environ, MNV3_CPU_ISA="avx3")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    warned, isas = out.stdout.strip().splitlines()
    assert "MNV3_CPU_ISA='avx3'" in warned
    active, best = isas.split()
    assert active == best
