"""Convert a torchvision MobileNetV3 to the fused kernels, check it, and time it.

    python examples/convert_mobilenetv3.py [--model large|small] [--backend auto|cpu|cuda|triton]
                                           [--batch 1] [--channels-last] [--pretrained]

--pretrained loads torchvision's ImageNet weights (downloaded once by torchvision); without it the
weights are random and the BatchNorm statistics are randomized so that BN folding is exercised.
"""
import argparse
import copy
import statistics
import time

import torch
import torchvision

import mnv3_kernels


def median_ms(model, x, runs=30):
    times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:  # the first calls are warm-up
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("large", "small"), default="large")
    ap.add_argument("--backend", default="auto", help=f"one of auto, {', '.join(mnv3_kernels.backends())}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--pretrained", action="store_true")
    args = ap.parse_args()

    device = "cuda" if args.backend in ("cuda", "triton") or (args.backend == "auto" and torch.cuda.is_available()) else "cpu"
    build = getattr(torchvision.models, f"mobilenet_v3_{args.model}")
    model = build(weights="DEFAULT" if args.pretrained else None)
    if not args.pretrained:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model = model.eval().to(device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)

    # The user-facing flow: one call, in place, on a copy here so the original can be compared.
    fused = mnv3_kernels.convert(copy.deepcopy(model), backend=args.backend)
    print(fused.mnv3_report)

    x = torch.randn(args.batch, 3, 224, 224, device=device).contiguous(memory_format=fmt)
    with torch.no_grad():
        ref, out = model(x), fused(x)
        err = float((out - ref).abs().max() / ref.abs().max())
        print(f"\nmax relative error vs the original model: {err:.2e}")
        print(f"original {median_ms(model, x):.2f} ms, converted {median_ms(fused, x):.2f} ms "
              f"(median, batch {args.batch}, {device}, {torch.get_num_threads()} threads)")
    # The converted model keeps the original's state_dict keys, so checkpoints load either way.
    assert fused.state_dict().keys() == model.state_dict().keys()


if __name__ == "__main__":
    main()
