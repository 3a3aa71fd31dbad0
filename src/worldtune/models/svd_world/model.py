"""`CtrlWorldModel`: the action-conditioned SVD world model (the network and its conditioning).

Its EDM training loss and sampler are the recipe's (`worldtune.systems.ctrl_world.world_edm`, over
`worldtune.diffusion.edm`): the model maps (frames, condition, noise level, context) to the UNet's output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .action import ActionEncoder
from .unet import FrameLevelUNet, svd_unet_config, tiny_unet_config

SVD_LATENT_SCALE = 0.18215  # SVD VAE `scaling_factor`


@dataclass
class CtrlWorldConfig:
    """How the network is conditioned: the Ctrl-World `model:` keys that shape its forward pass
    (upstream `config.py` / `models/ctrl_world.py`); the run config's `model` section extends it."""

    frame_level_cond: bool = True  # each frame's spatial cross-attention sees only its own action token
    his_cond_zero: bool = False  # zero the channel-concat condition on the history frames
    motion_bucket_id: int = 127
    fps: int = 7  # passed as is (upstream trains and samples with 7, no SVD "fps - 1")
    noise_aug_strength: float = 0.0
    # Action dimensions given to the encoder as their change from the current frame's value, times
    # `relative_action_scale` (not upstream, which encodes absolute poses; empty = absolute). One frame of
    # robot motion moves a normalised pose by a few hundredths: a small model trained from scratch cannot
    # resolve that in absolute poses, while the motion itself is what decides the next frames.
    relative_action_dims: list[int] = field(default_factory=list)
    relative_action_scale: float = 1.0


class CtrlWorldModel(nn.Module):
    """Ctrl-World: SVD's UNet conditioned on history frames, the current frame and per-frame actions.

    Clip layout: latents `[B, H + F, C, h, w]` and actions `[B, H + F, A]`, one action per frame; frames
    `0 .. H-1` are history, frame `H` is the current observation, frames `H .. H+F-1` are denoised (the
    current frame is predicted too, like upstream, although it is also the channel-concatenated condition
    of every frame). `forward` takes the history frames followed by the (preconditioned) noisy frames,
    the condition from `condition`, EDM's `c_noise` and the context from `encode_context`. Multi-view
    images are views stacked along height (`stack_views`); nothing here depends on it.
    """

    def __init__(self, unet: FrameLevelUNet, action_encoder: ActionEncoder, config: CtrlWorldConfig | None = None,
                 latent_scale: float = 1.0, views: int = 1) -> None:
        super().__init__()
        self.unet = unet
        self.action_encoder = action_encoder
        self.config = config or CtrlWorldConfig()
        self.latent_scale = latent_scale  # the condition latent is divided by this (SVD VAE latents: 0.18215)
        # How much each stacked view's frame changes are magnified in the space the model denoises (the
        # recipe's `normalise_views`; ones: none). A buffer, so checkpoints and exports carry it.
        self.register_buffer("view_scales", torch.ones(views))
        ids_dim = 3 * unet.config.addition_time_embed_dim
        if unet.add_embedding.linear_1.in_features != ids_dim:
            raise ValueError(
                f"UNet add_embedding expects {unet.add_embedding.linear_1.in_features} inputs, "
                f"3 time ids give {ids_dim}: set projection_class_embeddings_input_dim = 3 * addition_time_embed_dim"
            )
        bad = [d for d in self.config.relative_action_dims if not 0 <= d < action_encoder.action_dim]
        if bad:
            raise ValueError(f"relative_action_dims {bad} are outside the {action_encoder.action_dim} action dimensions")
        if unet.config.in_channels != 2 * unet.config.out_channels:
            raise ValueError("the UNet's in_channels must be 2 * out_channels (noisy latent + condition)")

    # ----------------------------------------------------------------------------------- factories

    @classmethod
    def svd(cls, config: CtrlWorldConfig | None = None, unet: FrameLevelUNet | None = None, action_dim: int = 7,
            text_dim: int | None = 512, latent_scale: float = SVD_LATENT_SCALE, views: int = 1) -> CtrlWorldModel:
        """Published sizes: SVD img2vid UNet (built from `svd_unet_config()` unless given; build under
        `torch.device("meta")` to count parameters), action MLP `7 -> 1024 -> 1024 -> 1024`, CLIP text 512."""
        unet = unet if unet is not None else FrameLevelUNet(**svd_unet_config())
        encoder = ActionEncoder(action_dim, unet.config.cross_attention_dim, (1024, 1024), text_dim)
        return cls(unet, encoder, config, latent_scale, views)

    @classmethod
    def from_svd(cls, unet_path: str | Path, config: CtrlWorldConfig | None = None, subfolder: str | None = None,
                 action_dim: int = 7, text_dim: int | None = 512, torch_dtype: torch.dtype | None = None,
                 latent_scale: float = SVD_LATENT_SCALE, views: int = 1) -> CtrlWorldModel:
        """Load local SVD UNet weights (diffusers layout, e.g. `<svd>/unet` or `<svd>` + `subfolder="unet"`)."""
        unet = FrameLevelUNet.from_pretrained(
            unet_path, subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True
        )
        return cls.svd(config, unet, action_dim=action_dim, text_dim=text_dim, latent_scale=latent_scale, views=views)

    @classmethod
    def tiny(cls, config: CtrlWorldConfig | None = None, latent_channels: int = 4, action_dim: int = 7,
             text_dim: int | None = None, action_widths: Sequence[int] = (64, 64),
             unet_kwargs: dict[str, Any] | None = None, latent_scale: float = 1.0, views: int = 1) -> CtrlWorldModel:
        """CPU-sized: diffusers' test UNet (`tiny_unet_config`), UNet in/out = `2 * latent_channels` / `latent_channels`."""
        unet = FrameLevelUNet(**tiny_unet_config(latent_channels, **(unet_kwargs or {})))
        encoder = ActionEncoder(action_dim, unet.config.cross_attention_dim, action_widths, text_dim)
        return cls(unet, encoder, config, latent_scale, views)

    # ------------------------------------------------------------------------------- building blocks

    def encode_context(self, actions: torch.Tensor, current: int, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """`actions [B, T, A]` (+ `text_emb [B, text_dim]`) -> cross-attention context `[B, T, D]`;
        frame `current` is the current observation (see `relative_action_dims`)."""
        return self.action_encoder(self.relative_actions(actions, current), text_emb)

    def relative_actions(self, actions: torch.Tensor, current: int) -> torch.Tensor:
        """Replace `relative_action_dims` by `(a_t - a_current) * relative_action_scale` (a no-op when empty)."""
        dims = list(self.config.relative_action_dims)
        if not dims:
            return actions
        out = actions.clone()
        out[..., dims] = (actions[..., dims] - actions[:, current : current + 1, dims]) * self.config.relative_action_scale
        return out

    def added_time_ids(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`[B, 3]` = (fps, motion_bucket_id, noise_aug_strength), as SVD's `_get_add_time_ids`."""
        c = self.config
        ids = torch.tensor([c.fps, c.motion_bucket_id, c.noise_aug_strength], device=device, dtype=dtype)
        return ids.expand(batch, 3)

    def condition(self, current: torch.Tensor, total_frames: int, num_history: int) -> torch.Tensor:
        """Current frame `[B, C, h, w]` -> the channel-concat condition `[B, T, C, h, w]` for all frames."""
        cond = (current / self.latent_scale)[:, None].repeat(1, total_frames, 1, 1, 1)
        if self.config.his_cond_zero:
            cond[:, :num_history] = 0
        return cond

    def forward(self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`x [B, T, C, h, w]` (history + preconditioned noisy frames) -> the UNet's raw output, float32."""
        dtype = self.unet.dtype  # the noise level and time ids stay float32 (sinusoidal embeddings)
        out = self.unet(
            torch.cat([x, cond], dim=2).to(dtype),
            c_noise.float(),
            context.to(dtype),
            self.added_time_ids(x.shape[0], x.device, torch.float32),
            frame_level=self.config.frame_level_cond,
        ).sample
        return out.float()
