#!/usr/bin/env python
"""Checks a CUDA build of mnv3_kernels._C on a machine without a GPU.

    python .ci/check_cuda_build.py path/to/_C.cpython-*.so [--arch sm_90]

1. `cuobjdump --list-elf` (from CUDA_HOME/bin, else PATH, else the copy Triton ships) must list
   a cubin for the wanted arch.
2. In a fresh Python process, `torch.ops.load_library(path)` must register a CUDA and a CPU
   kernel for every mnv3 operator.
Exits non-zero with a message saying what is missing.
"""
import argparse
import os
import shutil
import subprocess
import sys
import textwrap

OPS = ("dwconv_bn_act", "squeeze_excite", "hardswish", "hardsigmoid", "hardswish_", "hardsigmoid_")
KEYS = ("CUDA", "CPU")


def _cuobjdump():
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for home in homes:
        if home:
            exe = os.path.join(home, "bin", "cuobjdump")
            if os.path.isfile(exe):
                return exe
    exe = shutil.which("cuobjdump")
    if exe:
        return exe
    import glob
    import importlib.util

    found = sorted(glob.glob("/usr/local/cuda-*/bin/cuobjdump"), reverse=True)
    if found:
        return found[0]
    # A bare toolkit (nvcc only) has no cuobjdump; Triton wheels ship one.
    spec = importlib.util.find_spec("triton")
    for root in (spec.submodule_search_locations or []) if spec else []:
        exe = os.path.join(root, "backends", "nvidia", "bin", "cuobjdump")
        if os.path.isfile(exe):
            return exe
    return None


def check_cubin(path, arch):
    exe = _cuobjdump()
    if exe is None:
        return [f"cuobjdump not found (set CUDA_HOME); cannot check for an {arch} cubin"]
    proc = subprocess.run([exe, "--list-elf", path], capture_output=True, text=True)
    listing = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return [f"`{exe} --list-elf {path}` failed (exit {proc.returncode}):\n{listing.strip()}"]
    elves = [line.strip() for line in listing.splitlines() if ".cubin" in line]
    print(f"cuobjdump: {len(elves)} cubin(s)")
    for line in elves[:20]:
        print(f"  {line}")
    if not any(f".{arch}." in line or line.endswith(f"{arch}.cubin") for line in elves):
        return [f"no {arch} cubin in {path} (cubins: {elves or 'none'})"]
    return []


def check_registration(path):
    code = textwrap.dedent(
        f"""
        import sys, torch
        torch.ops.load_library({path!r})
        missing = []
        for op in {OPS!r}:
            for key in {KEYS!r}:
                if not torch._C._dispatch_has_kernel_for_dispatch_key("mnv3::" + op, key):
                    missing.append(f"mnv3::{{op}} has no {{key}} kernel")
        print("\\n".join(missing) if missing else "all ops registered for " + ", ".join({KEYS!r}))
        sys.exit(1 if missing else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    out = (proc.stdout + proc.stderr).strip()
    print(out)
    if proc.returncode != 0:
        return [f"operator registration check failed (exit {proc.returncode}):\n{out}"]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library", help="path of the built mnv3_kernels/_C*.so")
    parser.add_argument("--arch", default="sm_90", help="cubin arch that must be present (default sm_90)")
    args = parser.parse_args()
    if not os.path.isfile(args.library):
        print(f"FAIL: {args.library} does not exist", file=sys.stderr)
        return 2
    errors = check_cubin(args.library, args.arch) + check_registration(os.path.abspath(args.library))
    if errors:
        for e in errors:
            print(f"FAIL: {e}", file=sys.stderr)
        return 1
    print(f"OK: {args.library} holds an {args.arch} cubin and registers CUDA+CPU kernels for {len(OPS)} ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
