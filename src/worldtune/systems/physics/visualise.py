"""Pictures of motion and depth for sample videos: flow as colours (hue = direction, saturation
= speed, the usual optical-flow colour wheel) and depth as a grey ramp (near = light)."""

from __future__ import annotations

import math

import torch


def flow_colours(motion: torch.Tensor, max_speed: float | None = None) -> torch.Tensor:
    """[B, 2, T, H, W] pixels -> [B, 3, T, H, W] in [-1, 1]."""
    dx, dy = motion[:, 0], motion[:, 1]
    speed = (dx.square() + dy.square()).sqrt()
    top = max_speed or float(speed.max().clamp(min=1e-6))
    hue = (torch.atan2(-dy, -dx) / math.pi + 1) / 2  # [0, 1]
    sat = (speed / top).clamp(0, 1)
    # HSV (value 1) to RGB: channel n = 1 - s * clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1
    k = (hue[:, None] * 6 + torch.tensor([5.0, 3.0, 1.0], device=motion.device).view(1, 3, 1, 1, 1)) % 6
    rgb = 1 - sat[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)
    return rgb * 2 - 1


def depth_grey(depth: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, H, W] metres (0 = invalid) -> [B, 3, T, H, W] in [-1, 1], near light, invalid black."""
    valid = depth > 0
    inv = torch.where(valid, 1 / depth.clamp(min=1e-6), torch.zeros_like(depth))
    top = inv.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1, 1, 1)
    return (inv / top * 2 - 1).where(valid, torch.full_like(inv, -1.0)).expand(-1, 3, -1, -1, -1)


def physics_panels(motion: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Flow colours | depth, side by side: [B, 3, T, H, 2W]."""
    return torch.cat([flow_colours(motion.float()), depth_grey(depth.float())], dim=-1)
