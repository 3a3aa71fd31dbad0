"""Building blocks of the Wan DiT, with the original Wan parameter names.

Numerics follow upstream where they matter for parity: non-affine LayerNorms and RMSNorm computed
in float32, q/k RMSNorm across all heads, modulation and residual updates in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worldtune.models.wan.rope import apply_rope

# attend(self_attn, h, rope) -> attention output [B, L, dim] (see WanBlock.forward)
SelfAttend = Callable[["SelfAttention", torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H*D] (scaled dot product, fused kernel).

    `mask`: a boolean `[Lq, Lk]` tensor (True: attend), or a flex-attention `BlockMask` (the causal
    model's on CUDA), which runs flex attention instead."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if mask is not None and not isinstance(mask, torch.Tensor):
        out = _flex_attention(q.device)(q, k, v, block_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


@functools.cache
def _flex_attention(device: torch.device):
    """flex_attention, compiled where it has fused kernels (CUDA); eager elsewhere (correct, slow)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """Rotated queries and keys, and values, each [B, L, H, D] (the causal model caches k, v)."""
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, heads), *rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, heads), *rope)
        return q, k, self.v(x).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x, rope)
        return self.o(attention(q, k, v, mask).type_as(x))


class CrossAttention(SelfAttention):
    """Attention from video tokens to the text context (and, for i2v, to CLIP image tokens); the
    same q / k / v / o projections and q / k norms as self-attention, without RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 with_image: bool = False) -> None:
        super().__init__(dim, num_heads, qk_norm, eps)
        self.with_image = with_image
        if with_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text keys and values `[B, Lc, H, D]`: the same for every frame of a prompt, so the
        causal model computes them once per prompt."""
        heads = (self.num_heads, -1)
        return self.norm_k(self.k(context)).unflatten(-1, heads), self.v(context).unflatten(-1, heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor | None = None,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`kv`: the context's keys and values from `context_kv` (then `context` is not read)."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k, v = self.context_kv(context) if kv is None else kv
        out = attention(q, k, v)
        if self.with_image:
            k_img = self.norm_k_img(self.k_img(image_context)).unflatten(-1, heads)
            out = out + attention(q, k_img, self.v_img(image_context).unflatten(-1, heads))
        return self.o(out.type_as(x))


class WanBlock(nn.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated feed-forward."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True,
                 cross_attn_norm: bool = True, eps: float = 1e-6, with_image: bool = False) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps, with_image)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, context: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], image_context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, attend: SelfAttend | None = None,
                context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, C]; e0 [B, 1 or L, 6, C] float32 time modulation; context [B, Lc, C].

        The causal model's hooks: `attend(self_attn, h, rope)` replaces the self-attention (a KV
        cache supplies the earlier frames' keys), `context_kv` the text keys / values."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + e0.float()).unbind(2)
        compute = self.ffn[0].weight.dtype  # the parameter dtype (bf16 under FSDP mixed precision)
        h = (self.norm1(x).float() * (1 + scale1) + shift1).to(compute)
        attended = self.self_attn(h, rope, mask) if attend is None else attend(self.self_attn, h, rope)
        x = x.float() + attended.float() * gate1
        x = x + self.cross_attn(self.norm3(x).to(compute), context, image_context, context_kv).float()
        h = (self.norm2(x).float() * (1 + scale2) + shift2).to(compute)
        return x + self.ffn(h).float() * gate2


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; e [B, 1 or L, C] float32 time embedding."""
        shift, scale = (self.modulation.float().unsqueeze(0) + e.float().unsqueeze(2)).unbind(2)
        h = self.norm(x).float() * (1 + scale) + shift
        return self.head(h.to(self.head.weight.dtype))


class ImageProjection(nn.Module):
    """`img_emb`: CLIP image tokens -> model width (LayerNorm, MLP, LayerNorm)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(image_tokens)


def sinusoidal_embedding(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, dim] float64: cos then sin, frequencies 10000^(-i/half)."""
    half = dim // 2
    positions = positions.to(torch.float64)
    angles = torch.outer(positions, torch.pow(10000, -torch.arange(half, dtype=torch.float64,
                                                                    device=positions.device) / half))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
