"""Prints the -D arguments CMake needs to find the installed torch with find_package(Torch).

A CUDA build of torch makes find_package(Torch) look for a CUDA toolkit, and for NVRTC, which a
bare toolkit may lack while the torch wheel's own CUDA libraries (nvidia/cu*/lib) have it.
Usage: cmake -S . -B build/cmake $(python cmake/torch_cmake_args.py)
"""
import glob
import os
import shlex
import sys

import torch
import torch.utils

# The Python that has torch: ctest runs it to produce the AOTInductor example's package.
args = [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DPython3_EXECUTABLE={sys.executable}"]
if torch.version.cuda:
    cuda_home = os.environ.get("CUDA_HOME") or next(
        (os.path.dirname(os.path.dirname(p)) for p in sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)),
        None,
    )
    if cuda_home:
        args += [
            f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}",
            f"-DCUDAToolkit_ROOT={cuda_home}",
            f"-DCMAKE_CUDA_COMPILER={cuda_home}/bin/nvcc",
        ]
        has_nvrtc = glob.glob(os.path.join(cuda_home, "lib*", "libnvrtc.so*")) or glob.glob(
            os.path.join(cuda_home, "targets", "*", "lib", "libnvrtc.so*"))
        if not has_nvrtc:
            try:
                import nvidia

                found = sorted(glob.glob(os.path.join(list(nvidia.__path__)[0], "cu*", "lib", "libnvrtc.so.*[0-9]")))
                found = [f for f in found if "builtins" not in f and ".alt." not in f]
                if found:
                    args.append(f"-DCUDA_nvrtc_LIBRARY={found[0]}")
            except ImportError:
                pass
print(" ".join(shlex.quote(a) for a in args))
