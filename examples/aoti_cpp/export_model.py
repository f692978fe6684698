"""Compile a converted MobileNetV3 ahead of time (AOTInductor) into a .pt2 package for C++.

    python examples/aoti_cpp/export_model.py --out build/aoti [--size 64]

Writes, into --out: model.pt2 (torch.export of the converted model, compiled by
torch._inductor.aoti_compile_and_package; it calls the mnv3 operators), input.bin (one
1x3xSIZExSIZE float32 image) and expected.bin (the *original*, unconverted model's output on it,
float32). examples/aoti_cpp/main.cpp loads the package with LibTorch and checks its output.
MobileNetV3-Small at a small resolution keeps the compile to a minute or two on 2 cores.
"""
import argparse
import copy
import os

import torch
import torchvision

import mnv3_kernels


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    with torch.no_grad():  # non-trivial BN statistics, as a trained model has
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def compile_package(model: torch.nn.Module, x: torch.Tensor, path: str) -> str:
    """torch.export -> AOTInductor package at `path` (returns it)."""
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    return torch._inductor.aoti_compile_and_package(program, package_path=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--size", type=int, default=64, help="input height = width (default 64)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    original = build_model()
    converted = mnv3_kernels.convert(copy.deepcopy(original))
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = original(x)
    path = compile_package(converted, x, os.path.join(args.out, "model.pt2"))
    x.numpy().tofile(os.path.join(args.out, "input.bin"))
    expected.numpy().tofile(os.path.join(args.out, "expected.bin"))
    print(f"wrote {path} (input 1x3x{args.size}x{args.size}, output {tuple(expected.shape)})")


if __name__ == "__main__":
    main()
