"""The depthwise and squeeze-excite layers of MobileNetV3 (torchvision config), at 224x224 input.

Tests and benchmarks run every kernel over these shapes.
"""
from __future__ import annotations

from dataclasses import dataclass


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of divisor, never below 90% of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class DwLayer:
    model: str        # "large" | "small"
    channels: int
    kernel: int
    stride: int
    size: int         # input H = W of the depthwise conv
    activation: str   # "relu" | "hardswish"
    se: bool          # followed by squeeze-excite
    repeat: int = 1   # how many blocks of the model share this shape

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def se_channels(self) -> int:
        return make_divisible(self.channels // 4, 8)

    @property
    def name(self) -> str:
        se = "+se" if self.se else ""
        return f"{self.model}-c{self.channels}-k{self.kernel}-s{self.stride}-{self.size}{se}"


def _layers(model, rows):
    return [DwLayer(model, c, k, s, h, act, se, rep) for (c, k, s, h, act, se, rep) in rows]


LARGE = _layers("large", [
    (16, 3, 1, 112, "relu", False, 1),
    (64, 3, 2, 112, "relu", False, 1),
    (72, 3, 1, 56, "relu", False, 1),
    (72, 5, 2, 56, "relu", True, 1),
    (120, 5, 1, 28, "relu", True, 2),
    (240, 3, 2, 28, "hardswish", False, 1),
    (200, 3, 1, 14, "hardswish", False, 1),
    (184, 3, 1, 14, "hardswish", False, 2),
    (480, 3, 1, 14, "hardswish", True, 1),
    (672, 3, 1, 14, "hardswish", True, 1),
    (672, 5, 2, 14, "hardswish", True, 1),
    (960, 5, 1, 7, "hardswish", True, 2),
])

SMALL = _layers("small", [
    (16, 3, 2, 112, "relu", True, 1),
    (72, 3, 2, 56, "relu", False, 1),
    (88, 3, 1, 28, "relu", False, 1),
    (96, 5, 2, 28, "hardswish", True, 1),
    (240, 5, 1, 14, "hardswish", True, 2),
    (120, 5, 1, 14, "hardswish", True, 1),
    (144, 5, 1, 14, "hardswish", True, 1),
    (288, 5, 2, 14, "hardswish", True, 1),
    (576, 5, 1, 7, "hardswish", True, 2),
])

DW_LAYERS = LARGE + SMALL


@dataclass(frozen=True)
class SeLayer:
    channels: int
    squeeze: int
    size: int         # H = W of the tensor SE scales (the depthwise output)

    @property
    def name(self) -> str:
        return f"se-c{self.channels}-r{self.squeeze}-{self.size}"


def _se_layers():
    seen = {}
    for layer in DW_LAYERS:
        if layer.se:
            se = SeLayer(layer.channels, layer.se_channels, layer.out_size)
            seen.setdefault(se.name, se)
    return list(seen.values())


SE_LAYERS = _se_layers()


# The pointwise (1x1) convs of the inverted-residual blocks and the last conv, (Cin, Cout, H = W),
# at 224x224 input: expand convs at the depthwise input size, projections at its output size.
def _pw_layers():
    seen = {}
    rows = [  # (in, expanded, out) per block shape, torchvision config, with its depthwise layer
        (LARGE, [(16, 16, 16), (16, 64, 24), (24, 72, 24), (24, 72, 40), (40, 120, 40), (40, 240, 80),
                 (80, 200, 80), (80, 184, 80), (80, 480, 112), (112, 672, 112), (112, 672, 160),
                 (160, 960, 160)]),
        (SMALL, [(16, 16, 16), (16, 72, 24), (24, 88, 24), (24, 96, 40), (40, 240, 40), (40, 120, 48),
                 (48, 144, 48), (48, 288, 96), (96, 576, 96)]),
    ]
    for dws, blocks in rows:
        for dw, (cin, exp, cout) in zip(dws, blocks):
            if exp != cin:
                seen.setdefault((cin, exp, dw.size), None)
            seen.setdefault((exp, cout, dw.out_size), None)
    seen.setdefault((160, 960, 7), None)  # Large's last conv
    seen.setdefault((96, 576, 7), None)   # Small's last conv
    return list(seen)


PW_LAYERS = _pw_layers()
