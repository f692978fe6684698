"""Build of mnv3_kernels and its compiled library mnv3_kernels._C.

CPU kernels are always built. CUDA kernels (csrc/cuda) are built when a CUDA toolkit and a CUDA
build of torch are present, or when FORCE_CUDA=1; MNV3_NO_CUDA=1 skips them. No GPU is needed to
build. TORCH_CUDA_ARCH_LIST (default "9.0") and MAX_JOBS are honoured.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """torch looks for nvcc on PATH; a wrapper script there (e.g. /usr/local/bin/nvcc) would make
    it guess /usr/local. Prefer an explicit CUDA_HOME, then the real toolkit folders."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)
    candidates = ["/usr/local/cuda/bin/nvcc"] + candidates
    for nvcc in candidates:
        if os.path.isfile(nvcc):
            return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if os.environ.get("MNV3_NO_CUDA", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and _cuda_home is not None


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extensions():
    with_cuda = _want_cuda()
    sources = (
        _sources("csrc/*.cpp")
        + _sources("csrc/common/*.cpp")
        + _sources("csrc/cpu/*.cpp")
        + _sources("csrc/cpu/kernels/*.cpp")
        + _sources("csrc/python/*.cpp")
    )
    define_macros = [("MNV3_VERSION", f'"{VERSION}"')]
    # -g0: Python's own CFLAGS carry -g, which makes every object slower to build and larger.
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-fvisibility=hidden"]
    extra_link_args = ["-fopenmp"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
        arch_list = os.environ["TORCH_CUDA_ARCH_LIST"]
        define_macros += [("MNV3_WITH_CUDA", None), ("MNV3_CUDA_ARCH_LIST", f'"{arch_list}"')]
        nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
        return [
            CUDAExtension(
                "mnv3_kernels._C",
                sources,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=extra_link_args,
            )
        ]
    return [
        CppExtension(
            "mnv3_kernels._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="mnv3_kernels",
    version=VERSION,
    description="Fused MobileNetV3 kernels (depthwise conv+BN+activation, squeeze-excite, h-swish) for PyTorch",
    packages=find_packages(include=["mnv3_kernels", "mnv3_kernels.*"]),
    python_requires=">=3.9",
    install_requires=["torch"],
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
