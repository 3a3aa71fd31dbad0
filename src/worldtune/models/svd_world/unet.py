"""`FrameLevelUNet`: diffusers' SVD UNet with per-frame cross-attention context."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.unets.unet_spatio_temporal_condition import UNetSpatioTemporalConditionOutput


def svd_unet_config(**overrides: Any) -> dict[str, Any]:
    """The published `stable-video-diffusion-img2vid` UNet config (diffusers' defaults, 14 frames)."""
    cfg: dict[str, Any] = dict(
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=768,
        layers_per_block=2,
        cross_attention_dim=1024,
        transformer_layers_per_block=1,
        num_attention_heads=(5, 10, 20, 20),
        num_frames=14,
    )
    cfg.update(overrides)
    return cfg


def tiny_unet_config(latent_channels: int = 4, **overrides: Any) -> dict[str, Any]:
    """diffusers' own CPU test config, with `in = 2 * latent_channels` (noisy + condition), `out = latent_channels`.

    Every `block_out_channels` entry must be a multiple of 32 (GroupNorm groups) and of its number of heads.
    """
    cfg: dict[str, Any] = dict(
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        layers_per_block=1,
        cross_attention_dim=32,
        num_attention_heads=8,
        num_frames=8,
    )
    cfg.update(overrides)
    if "addition_time_embed_dim" in overrides and "projection_class_embeddings_input_dim" not in overrides:
        cfg["projection_class_embeddings_input_dim"] = 3 * cfg["addition_time_embed_dim"]
    return cfg


class FrameLevelUNet(UNetSpatioTemporalConditionModel):
    """`UNetSpatioTemporalConditionModel` whose spatial cross-attention can see one context per frame.

    Same constructor, parameters and state dict as diffusers' class (weights load with its
    `from_pretrained`); only `forward` is ours. `sample_size` plays no part: any `h, w` works (sizes that
    are not multiples of `2 ** num_upsamplers` are handled as diffusers does, by forwarding the skip sizes).

    Context (`encoder_hidden_states`, `[B, L, D]`):
    - `frame_level=False`: diffusers' behaviour, every frame attends to all `L` tokens.
    - `frame_level=True` (Ctrl-World): `L = F * k`; frame `i` attends only to tokens `i*k : (i+1)*k`
      (`[B, F*k, D] -> [B*F, k, D]`, one action token per frame when `k = 1`). The temporal transformer
      blocks are diffusers' own: they take the context of the clip's FIRST frame for every frame
      (`TransformerSpatioTemporalModel` reshapes to `[B, F, k, D][:, 0]`), exactly as upstream.
    """

    def frame_context(
        self, encoder_hidden_states: torch.Tensor, batch: int, frames: int, frame_level: bool
    ) -> torch.Tensor:
        """`[B, L, D]` -> the `[B*F, L', D]` context the blocks see (see the class docstring)."""
        if not frame_level:
            return encoder_hidden_states.repeat_interleave(frames, dim=0)
        b, length, dim = encoder_hidden_states.shape
        if b != batch or length % frames:
            raise ValueError(
                f"frame-level context needs [B={batch}, F*k, D] with F={frames}, got {tuple(encoder_hidden_states.shape)}"
            )
        return encoder_hidden_states.reshape(batch * frames, length // frames, dim)

    def _embedding(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, added_time_ids: torch.Tensor
    ) -> torch.Tensor:
        """Noise-level embedding plus the (fps, motion bucket, noise aug) embedding, `[B, time_embed_dim]`."""
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        if not t.is_floating_point():
            t = t.long()
        t = t.reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(t).to(sample.dtype))
        ids = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        return emb + self.add_embedding(ids)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = True,
        frame_level: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple[torch.Tensor]:
        """`sample [B, F, C_in, H, W]`, `timestep` scalar or `[B]`, context `[B, L, D]`, `added_time_ids [B, 3]`."""
        batch, frames = sample.shape[:2]
        emb = self._embedding(sample, timestep, added_time_ids).repeat_interleave(frames, dim=0)
        context = self.frame_context(encoder_hidden_states, batch, frames, frame_level)

        h = self.conv_in(sample.flatten(0, 1))
        indicator = torch.zeros(batch, frames, dtype=h.dtype, device=h.device)
        common = dict(temb=emb, image_only_indicator=indicator)
        with_context = dict(common, encoder_hidden_states=context)

        skips = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, **(with_context if _cross(block) else common))
            skips.extend(res)
        h = self.mid_block(hidden_states=h, **with_context)

        factor = 2**self.num_upsamplers
        odd_size = any(s % factor for s in sample.shape[-2:])
        upsample_size = None
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = tuple(skips[-n:]), skips[:-n]
            if odd_size and i < len(self.up_blocks) - 1:
                upsample_size = skips[-1].shape[2:]
            kwargs = with_context if _cross(block) else common
            h = block(hidden_states=h, res_hidden_states_tuple=res, upsample_size=upsample_size, **kwargs)

        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        out = h.reshape(batch, frames, *h.shape[1:])
        return UNetSpatioTemporalConditionOutput(sample=out) if return_dict else (out,)


def _cross(block: torch.nn.Module) -> bool:
    return bool(getattr(block, "has_cross_attention", False))
