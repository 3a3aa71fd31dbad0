"""Sim-Physics' spatio-temporal heads: the motion / depth head with attention across frames.

The original (`Windsao/Sim4VideoGen`, `spatiotemporal_depth_head.py`, after Video Depth Anything)
has two kinds, chosen by `--use_spatiotemporal_{motion,depth}` and
`--spatiotemporal_{motion,depth}_type`:

- **simple**: the plain head's non-affine norm and adaLN modulation, then a temporal module (2
  blocks of temporal-only attention with RoPE over frames and a GEGLU feed-forward, between two
  1x1 projections, the last zero-initialised so the module starts as the identity), then the
  linear layer to `channels x patch` values.
- **full**: after the norm and modulation, four 1x1 projections to `features` channels at 1, 1/2,
  1/4 and 1/8 of the token grid, a temporal module at each scale, DPT fusion from the coarsest to
  the finest, and a small convolutional output.

Ours keep those structures, with three fixes: the rotary tables are computed in float32 when used
(the original stored a complex buffer that a bf16 cast turned into cos alone); the full head ends in
`channels x patch` values per token like every other head, so it decodes to the latent grid (the
original's ended at the token grid, 1/32 of the pixels, and was upsampled from there); its unused
transposed convolutions are not built. Parameters stay float32 (the model keeps them so).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from worldtune.models.wan.layers import FP32LayerNorm
from worldtune.models.wan.rope import apply_rope, rope_1d

SCALES = (1, 2, 4, 8)  # the full head's pyramid: token grid divided by these


class TemporalAttention(nn.Module):
    """Attention across frames, each spatial position on its own: x [N, T, dim] -> [N, T, dim]."""

    def __init__(self, dim: int, heads: int = 8, head_dim: int = 64) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_1d(x.shape[1], self.head_dim, x.device)
        split = (self.heads, self.head_dim)
        q = apply_rope(self.to_q(x).unflatten(-1, split), cos, sin)
        k = apply_rope(self.to_k(x).unflatten(-1, split), cos, sin)
        v = self.to_v(x).unflatten(-1, split)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(value * F.gelu(gate))


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TemporalAttention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class TemporalModule(nn.Module):
    """x [B, C, T, H, W] -> the same, plus what attention across frames adds (zero at the start:
    `proj_out` is zero-initialised)."""

    def __init__(self, channels: int, blocks: int = 2, heads: int = 8, head_dim: int = 64) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TemporalBlock(channels, heads, head_dim) for _ in range(blocks))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)  # one sequence of frames per position
        seq = self.proj_in(seq)
        for block in self.blocks:
            seq = block(seq)
        seq = self.proj_out(seq)
        return x + seq.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class ConvBlock(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU())


class FusionBlock(nn.Module):
    """DPT fusion: the coarser map refined, brought to the finer one's size, added, refined again."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = ConvBlock(features, features)
        self.conv2 = ConvBlock(features, features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.conv1(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=True)
        return self.out_conv(self.conv2(x + fine))


class SpatioTemporalHead(nn.Module):
    """tokens [B, L, dim] with the time embedding e [B, 1 or L, dim] -> [B, L, channels x patch],
    like `layers.Head`, on the token grid `grid` (frames, rows, columns)."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6,
                 kind: str = "full", features: int = 256, temporal_blocks: int = 2, heads: int = 8,
                 head_dim: int = 64) -> None:
        super().__init__()
        if kind not in ("simple", "full"):
            raise ValueError(f"spatio-temporal head type must be simple or full, got {kind!r}")
        self.kind = kind
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))
        outputs = math.prod(patch_size) * out_dim
        if kind == "simple":
            self.temporal = TemporalModule(dim, temporal_blocks, heads, head_dim)
            self.head = nn.Linear(dim, outputs)
            return
        self.proj_layers = nn.ModuleList(nn.Linear(dim, features) for _ in SCALES)
        self.temporal_modules = nn.ModuleList(TemporalModule(features, temporal_blocks, heads, head_dim)
                                              for _ in SCALES)
        self.fusion_blocks = nn.ModuleList(FusionBlock(features) for _ in SCALES[1:])
        self.output_conv = nn.Sequential(ConvBlock(features, features // 2), nn.Conv2d(features // 2, outputs, 1))

    def forward(self, x: torch.Tensor, e: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(0) + e.float().unsqueeze(2)).unbind(2)
        h = self.norm(x).float() * (1 + scale) + shift  # [B, L, dim]
        if self.kind == "simple":
            return self.head(self.temporal(self._map(h, grid)).flatten(2).transpose(1, 2))
        return self._pyramid(h, grid)

    def _pyramid(self, h: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        f, rows, cols = grid
        maps = []
        for factor, proj, temporal in zip(SCALES, self.proj_layers, self.temporal_modules, strict=True):
            x = self._map(proj(h), grid)  # [B, features, F, rows, cols]
            if factor > 1:
                size = (max(1, rows // factor), max(1, cols // factor))
                x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=size, mode="bilinear",
                                  align_corners=False).unflatten(0, (h.shape[0], f)).transpose(1, 2)
            maps.append(temporal(x).transpose(1, 2).flatten(0, 1))  # [B*F, features, r, c]
        fused = maps[-1]
        for block, finer in zip(self.fusion_blocks[::-1], maps[-2::-1], strict=True):
            fused = block(fused, finer)
        out = self.output_conv(fused)  # [B*F, outputs, rows, cols]
        return out.unflatten(0, (h.shape[0], f)).permute(0, 1, 3, 4, 2).flatten(1, 3)

    @staticmethod
    def _map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, C] in (frame, row, column) order -> [B, C, F, rows, cols]."""
        return tokens.transpose(1, 2).unflatten(2, grid)

    def init_rule(self, module_name: str, attr: str):
        """How each of the head's tensors starts (module_name relative to the head), or None for the
        model's default rule: zero modulation and biases; the temporal modules' `proj_out` zero
        (each starts as the identity); the last layer small (xavier, gain 0.01), as the plain heads."""
        if attr == "modulation" or attr == "bias" or module_name.endswith("proj_out"):
            return lambda t, g: t.zero_()
        module = self.get_submodule(module_name)
        if isinstance(module, nn.LayerNorm):
            return lambda t, g: t.fill_(1.0)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            return None
        last = "head" if self.kind == "simple" else f"output_conv.{len(self.output_conv) - 1}"
        gain = 0.01 if module_name == last else 1.0
        return lambda t, g: nn.init.xavier_uniform_(t.view(t.shape[0], -1), gain=gain, generator=g).view(t.shape)
