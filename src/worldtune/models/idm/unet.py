"""`MaskUNet`: the U-Net that predicts the IDM's mask logits (upstream `idm/idm/unet.py`, `UNet`).

Parameter names follow upstream so that `idm.pt` loads: `in_conv`, `downs.{i}.1` (index 0 is the
max-pool), `ups.{i}.conv`, `out`; every double conv is `Sequential(conv, BN, ReLU, conv, BN, ReLU)`,
so its weights sit at indices 0, 1, 3, 4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def double_conv(in_channels: int, out_channels: int, mid_channels: int | None = None) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU. The convs have no bias: the BN that follows has one."""
    mid = out_channels if mid_channels is None else mid_channels
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def down(in_channels: int, out_channels: int) -> nn.Sequential:
    """Halve the resolution (2x2 max-pool), then a double conv."""
    return nn.Sequential(nn.MaxPool2d(2, stride=2), double_conv(in_channels, out_channels))


class Up(nn.Module):
    """Upsample to the skip's size, concatenate [upsampled, skip], double conv.

    Upstream caches an `nn.Upsample` built with the first call's size, so a later input of another
    size would be resized wrongly; this interpolates to each call's skip size instead (no parameters
    involved, and the same numbers at a fixed input size).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = double_conv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([x, skip], dim=1))


def _level_channels(base: int, num_layers: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(in, out) channels of each down and up block, as upstream lays them out.

    Down i goes base*2**i -> base*2**(i+1), except the deepest, which keeps its width; so the first
    up block sees two equal-width maps, and each up block's output (in / 4) matches the width of the
    next skip it is concatenated with. The last up block ends at `base` for the 1x1 output conv.
    """
    downs, ups = [], []
    for i in range(num_layers):
        width = base * 2**i
        downs.append((width, width * 2 if i < num_layers - 1 else width))
        up_in = base * 2 ** (num_layers - i)
        ups.append((up_in, up_in // 4 if i < num_layers - 1 else base))
    return downs, ups


class MaskUNet(nn.Module):
    """`[B, in_channels, H, W] -> [B, out_channels, H, W]` logits; H and W need not be powers of two
    (each up block resizes to its skip) but must be at least 2**num_layers."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channel: int = 64,
                 num_layers: int = 5) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        down_sizes, up_sizes = _level_channels(base_channel, num_layers)
        self.in_conv = double_conv(in_channels, base_channel)
        self.downs = nn.Sequential(*(down(i, o) for i, o in down_sizes))
        self.ups = nn.Sequential(*(Up(i, o) for i, o in up_sizes))
        self.out = nn.Conv2d(base_channel, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        smallest = 2**self.num_layers
        if min(x.shape[-2:]) < smallest:
            raise ValueError(f"MaskUNet with {self.num_layers} levels needs frames of at least "
                             f"{smallest}x{smallest}, got {tuple(x.shape[-2:])}")
        skips = [self.in_conv(x)]
        for block in self.downs:
            skips.append(block(skips[-1]))
        x = skips.pop()  # the deepest map starts the decoder; the others are its skips, deepest first
        for block in self.ups:
            x = block(x, skips.pop())
        return self.out(x)
