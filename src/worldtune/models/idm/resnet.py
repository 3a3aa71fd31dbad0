"""`ResNetRegressor`: the IDM's ResNet-50-style action regressor (upstream `idm/idm/resnet.py`, `ResNet`).

Written here because torchvision does not install beside the CPU torch, and because upstream's
block differs from torchvision's (below). Names follow upstream so that `idm.pt` loads: `conv1`
(stem: conv, BN, ReLU, max-pool), `conv2_x` ... `conv5_x` (stages of bottlenecks, each with
`residual_function` and, where the shape changes, `shortcut`), `fc`.

Upstream's bottleneck has no ReLU after its first 1x1 conv + BN (`residual_function` is conv, BN,
conv, BN, ReLU, conv, BN: weights at indices 0, 1, 2, 3, 5, 6). It is kept: the released weights
were trained with it, and adding the ReLU would both change their outputs and shift the indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4  # a bottleneck's output is 4x its inner width


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus a shortcut; ReLU after the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * EXPANSION
        self.residual_function = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        # Upstream projects only when the width changes; a stride alone also needs one (it cannot
        # happen at the published sizes, where every stage's first block changes the width).
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual_function(x) + self.shortcut(x))


def _stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """A stage: the first block changes width (and resolution, via `stride`), the rest keep it."""
    blocks = [BottleneckBlock(in_channels, channels, stride)]
    blocks += [BottleneckBlock(channels * EXPANSION, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNetRegressor(nn.Module):
    """`[B, input_channels, H, W] -> [B, output_dim]`, trained from scratch (no ImageNet weights)."""

    def __init__(self, output_dim: int = 14, input_channels: int = 3, stem_channels: int = 64,
                 stage_channels: tuple[int, ...] = (64, 128, 256, 512),
                 blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        if len(stage_channels) != 4 or len(blocks) != 4:
            raise ValueError(f"ResNetRegressor has 4 stages (conv2_x..conv5_x); got widths {stage_channels}, "
                             f"blocks {blocks}")
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, stem_channels, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        widths_in = [stem_channels] + [c * EXPANSION for c in stage_channels[:-1]]
        strides = (1, 2, 2, 2)  # the stem already quartered the resolution
        stages = [_stage(i, c, n, s) for i, c, n, s in zip(widths_in, stage_channels, blocks, strides, strict=True)]
        self.conv2_x, self.conv3_x, self.conv4_x, self.conv5_x = stages
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stage_channels[-1] * EXPANSION, output_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector `[B, 4 * stage_channels[-1]]` the head regresses from."""
        x = self.conv1(x)
        for stage in (self.conv2_x, self.conv3_x, self.conv4_x, self.conv5_x):
            x = stage(x)
        return self.avg_pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
