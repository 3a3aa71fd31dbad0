"""`VVAELatentActionVQVAE`: adapters, encoder, decoder and the full model (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import LamConfig
from .quantizer import VectorQuantizer, VQOutput


@dataclass
class LamOutput:
    """`VVAELatentActionVQVAE.forward`: the predicted next latent frame plus the quantiser's fields."""

    prediction: torch.Tensor  # [B, C, H, W], x_{t+1} estimate
    quantised: torch.Tensor  # [B, num_codes, codebook_dim]
    indices: torch.Tensor  # [B, num_codes]
    vq_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    usage: torch.Tensor
    perplexity: torch.Tensor
    restarted: torch.Tensor
    encoded: torch.Tensor  # [B, num_codes, codebook_dim] detached encoder outputs (see the quantiser)


class VVAEtoLAMAdapter(nn.Module):
    """Patchify a latent frame: Conv2d(kernel = stride = patch), `[B, C, H, W] -> [B, N, patch_dim]`."""

    def __init__(self, in_channels: int, patch_dim: int, patch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, patch_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)


class LAMtoVVAEAdapter(nn.Module):
    """Unpatchify: ConvTranspose2d(kernel = stride = patch), `[B, N, patch_dim] -> [B, C, H, W]`."""

    def __init__(self, patch_dim: int, out_channels: int, patch: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.ConvTranspose2d(patch_dim, out_channels, kernel_size=patch, stride=patch)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        return self.conv(tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid))


def _blocks(cfg: LamConfig, depth: int) -> nn.ModuleList:
    """Pre-norm transformer blocks, one module per layer (units for FSDP / activation checkpointing)."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            cfg.embed_dim, cfg.num_heads, dim_feedforward=int(cfg.embed_dim * cfg.mlp_ratio),
            dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True,
        )
        for _ in range(depth)
    )


def _embedding(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(*shape), std=0.02))


class LamEncoder(nn.Module):
    """[action queries | patches of x_t | patches of x_{t+1}] -> one `codebook_dim` vector per query."""

    def __init__(self, cfg: LamConfig) -> None:
        super().__init__()
        self.num_codes = cfg.num_codes
        self.proj_in = nn.Linear(cfg.patch_dim, cfg.embed_dim)
        self.pos_embed = _embedding(1, cfg.num_patches, cfg.embed_dim)
        self.frame_embed = _embedding(2, 1, cfg.embed_dim)  # t, t+1
        self.action_queries = _embedding(1, cfg.num_codes, cfg.embed_dim)
        self.blocks = _blocks(cfg, cfg.encoder_depth)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.proj_out = nn.Linear(cfg.embed_dim, cfg.codebook_dim)

    def forward(self, patches_t: torch.Tensor, patches_next: torch.Tensor) -> torch.Tensor:
        frames = [self.proj_in(p) + self.pos_embed + self.frame_embed[i] for i, p in enumerate((patches_t, patches_next))]
        x = torch.cat([self.action_queries.expand(patches_t.shape[0], -1, -1), *frames], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj_out(self.norm(x[:, : self.num_codes]))


class LamDecoder(nn.Module):
    """[patches of x_t | projected action codes] -> patch tokens of the prediction (width patch_dim)."""

    def __init__(self, cfg: LamConfig) -> None:
        super().__init__()
        self.num_patches = cfg.num_patches
        self.proj_in = nn.Linear(cfg.patch_dim, cfg.embed_dim)
        self.pos_embed = _embedding(1, cfg.num_patches, cfg.embed_dim)
        self.action_proj = nn.Linear(cfg.codebook_dim, cfg.embed_dim)
        self.action_pos = _embedding(1, cfg.num_codes, cfg.embed_dim)  # tells the code slots apart
        self.blocks = _blocks(cfg, cfg.decoder_depth)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.proj_out = nn.Linear(cfg.embed_dim, cfg.patch_dim)

    def forward(self, patches_t: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
        frame = self.proj_in(patches_t) + self.pos_embed
        actions = self.action_proj(quantised) + self.action_pos
        x = torch.cat([frame, actions], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj_out(self.norm(x[:, : self.num_patches]))


class VVAELatentActionVQVAE(nn.Module):
    """VQ-VAE over transitions between consecutive VVAE latent frames (x_t, x_{t+1}).

    The encoder reads both frames and emits `num_codes` vectors, quantised against one shared
    codebook; the decoder predicts x_{t+1} from x_t and the quantised codes. Inputs are used as they
    come (no normalisation of the latents).
    """

    def __init__(self, cfg: LamConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.input_adapter = VVAEtoLAMAdapter(cfg.in_channels, cfg.patch_dim, cfg.adapter_patch)
        self.encoder = LamEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.num_embeddings, cfg.codebook_dim, cfg.commitment_weight,
                                         cfg.dead_code_threshold)
        self.decoder = LamDecoder(cfg)
        self.output_adapter = LAMtoVVAEAdapter(cfg.patch_dim, cfg.in_channels, cfg.adapter_patch, cfg.grid)

    def encode_actions(self, x_t: torch.Tensor, x_next: torch.Tensor) -> VQOutput:
        """Quantised action codes for the transitions x_t -> x_next (both [B, C, H, W])."""
        self._check(x_t, x_next)
        return self.quantizer(self.encoder(self.input_adapter(x_t), self.input_adapter(x_next)))

    def decode(self, x_t: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
        """Predicted next frame [B, C, H, W] from x_t and quantised codes [B, num_codes, codebook_dim]."""
        self._check(x_t)
        return self._decode(x_t, self.input_adapter(x_t), quantised)

    def forward(self, x_t: torch.Tensor, x_next: torch.Tensor) -> LamOutput:
        self._check(x_t, x_next)
        patches_t = self.input_adapter(x_t)
        vq = self.quantizer(self.encoder(patches_t, self.input_adapter(x_next)))
        return LamOutput(
            prediction=self._decode(x_t, patches_t, vq.quantised), quantised=vq.quantised, indices=vq.indices,
            vq_loss=vq.vq_loss, codebook_loss=vq.codebook_loss, commitment_loss=vq.commitment_loss,
            usage=vq.usage, perplexity=vq.perplexity, restarted=vq.restarted, encoded=vq.encoded,
        )

    def codes_to_quantised(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors [..., num_codes, codebook_dim] for code indices [..., num_codes]."""
        return self.quantizer.codebook[indices]

    def action_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """One id in [0, num_embeddings ** num_codes) per code tuple [..., num_codes] (first code most significant)."""
        k = self.cfg.num_embeddings
        weights = k ** torch.arange(self.cfg.num_codes - 1, -1, -1, device=indices.device)
        return (indices.long() * weights).sum(-1)

    def action_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Inverse of `action_ids`: code indices [..., num_codes]."""
        k = self.cfg.num_embeddings
        weights = k ** torch.arange(self.cfg.num_codes - 1, -1, -1, device=ids.device)
        return torch.div(ids.long()[..., None], weights, rounding_mode="floor") % k

    def _decode(self, x_t: torch.Tensor, patches_t: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
        out = self.output_adapter(self.decoder(patches_t, quantised))
        return x_t + out if self.cfg.predict_delta else out

    def _check(self, *frames: torch.Tensor) -> None:
        c = self.cfg
        expected = (c.in_channels, c.latent_size, c.latent_size)
        for x in frames:
            if x.dim() != 4 or tuple(x.shape[1:]) != expected:
                raise ValueError(f"expected latent frames [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
