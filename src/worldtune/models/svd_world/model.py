"""`CtrlWorldModel`: the action-conditioned SVD world model, its EDM training loss and its sampler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .action import ActionEncoder
from .edm import Precond, karras_sigmas
from .unet import FrameLevelUNet, svd_unet_config, tiny_unet_config

SVD_LATENT_SCALE = 0.18215  # SVD VAE `scaling_factor`


@dataclass
class CtrlWorldConfig:
    """Ctrl-World's recipe constants (upstream `config.py` / `models/ctrl_world.py`)."""

    num_history: int = 6  # H past frames in front of the clip
    num_frames: int = 5  # F predicted frames: the current frame (index H) and F - 1 after it
    frame_level: bool = True  # each frame's spatial cross-attention sees only its own action token
    his_cond_zero: bool = False  # zero the channel-concat condition on the history frames
    p_mean: float = 0.7  # EDM training log-sigma ~ N(p_mean, p_std)
    p_std: float = 1.6
    cfg_drop: float = 0.05  # per-sample probability of zeroing the whole context (train mode only)
    history_noise: float = 0.3  # history sigma_h ~ |N(0, history_noise)|
    cond_noise_max: float = 0.2  # condition-frame sigma ~ U(0, cond_noise_max)
    motion_bucket_id: int = 127
    fps: int = 7  # passed as is (upstream trains and samples with 7, no SVD "fps - 1")
    noise_aug_strength: float = 0.0
    latent_scale: float = 1.0  # the condition latent is divided by this (SVD VAE latents: 0.18215)
    sigma_min: float = 0.002  # sampler's Karras schedule (SVD scheduler config)
    sigma_max: float = 700.0
    sigma_data: float = 1.0  # the data's std that EDM's preconditioning assumes (see `Precond`)
    # Denoise each predicted frame's change from the current frame instead of the frame itself (not
    # upstream). Pretrained SVD already copies its conditioning frame; a UNet trained from scratch on a
    # CPU learns that copy slowly and its colours drift, while "nothing moves" is its zero output here.
    residual: bool = False
    # Action dimensions given to the encoder as their change from the current frame's value, times
    # `relative_action_scale` (not upstream, which encodes absolute poses; empty = absolute). One frame of
    # robot motion moves a normalised pose by a few hundredths: a small model trained from scratch cannot
    # resolve that in absolute poses, while the motion itself is what decides the next frames.
    relative_action_dims: tuple[int, ...] = ()
    relative_action_scale: float = 1.0


class CtrlWorldModel(nn.Module):
    """Ctrl-World: SVD's UNet conditioned on history frames, the current frame and per-frame actions.

    Clip layout (training `latents [B, H + F, C, h, w]`, `actions [B, H + F, A]`, one action per frame):
    frames `0 .. H-1` are history (lightly noised, not denoised, no loss), frame `H` is the current
    observation, frames `H .. H+F-1` are denoised and carry the loss: like upstream (its loss slice is
    `[:, num_history:]`) the current frame is predicted too, although it is also the channel-concatenated
    condition of every frame. `sample` returns the same `F` frames; its frame 0 reconstructs the current
    frame and `[:, 1:]` are the new ones. Multi-view images are views stacked along height
    (`stack_views`); nothing here depends on it.
    """

    def __init__(
        self,
        unet: FrameLevelUNet,
        action_encoder: ActionEncoder,
        config: CtrlWorldConfig | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.action_encoder = action_encoder
        self.config = replace(config or CtrlWorldConfig(), **overrides)
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
    def svd(
        cls,
        unet: FrameLevelUNet | None = None,
        action_dim: int = 7,
        text_dim: int | None = 512,
        **config: Any,
    ) -> CtrlWorldModel:
        """Published sizes: SVD img2vid UNet (built from `svd_unet_config()` unless given; build under
        `torch.device("meta")` to count parameters), action MLP `7 -> 1024 -> 1024 -> 1024`, CLIP text 512."""
        unet = unet if unet is not None else FrameLevelUNet(**svd_unet_config())
        config.setdefault("latent_scale", SVD_LATENT_SCALE)
        encoder = ActionEncoder(action_dim, unet.config.cross_attention_dim, (1024, 1024), text_dim)
        return cls(unet, encoder, **config)

    @classmethod
    def from_svd(
        cls,
        unet_path: str | Path,
        subfolder: str | None = None,
        action_dim: int = 7,
        text_dim: int | None = 512,
        torch_dtype: torch.dtype | None = None,
        **config: Any,
    ) -> CtrlWorldModel:
        """Load local SVD UNet weights (diffusers layout, e.g. `<svd>/unet` or `<svd>` + `subfolder="unet"`)."""
        unet = FrameLevelUNet.from_pretrained(
            unet_path, subfolder=subfolder, torch_dtype=torch_dtype, local_files_only=True
        )
        return cls.svd(unet, action_dim=action_dim, text_dim=text_dim, **config)

    @classmethod
    def tiny(
        cls,
        latent_channels: int = 4,
        action_dim: int = 7,
        text_dim: int | None = None,
        action_widths: Sequence[int] = (64, 64),
        unet_kwargs: dict[str, Any] | None = None,
        **config: Any,
    ) -> CtrlWorldModel:
        """CPU-sized: diffusers' test UNet (`tiny_unet_config`), UNet in/out = `2 * latent_channels` / `latent_channels`."""
        unet = FrameLevelUNet(**tiny_unet_config(latent_channels, **(unet_kwargs or {})))
        encoder = ActionEncoder(action_dim, unet.config.cross_attention_dim, action_widths, text_dim)
        return cls(unet, encoder, **config)

    # ------------------------------------------------------------------------------- building blocks

    def encode_context(self, actions: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        """`actions [B, T, A]` (+ `text_emb [B, text_dim]`) -> cross-attention context `[B, T, D]`.

        Frame `num_history` is the current one (see `relative_action_dims`)."""
        return self.action_encoder(self.relative_actions(actions), text_emb)

    def relative_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Replace `relative_action_dims` by `(a_t - a_current) * relative_action_scale` (a no-op when empty)."""
        dims = list(self.config.relative_action_dims)
        if not dims:
            return actions
        h_n = self.config.num_history
        out = actions.clone()
        out[..., dims] = (actions[..., dims] - actions[:, h_n : h_n + 1, dims]) * self.config.relative_action_scale
        return out

    def drop_context(
        self, context: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero each sample's whole context (actions and text) with probability `cfg_drop`; returns it and the mask."""
        u = torch.rand(context.shape[0], device=context.device, generator=generator)
        dropped = u < self.config.cfg_drop
        return context * (~dropped).to(context.dtype)[:, None, None], dropped

    def added_time_ids(self, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """`[B, 3]` = (fps, motion_bucket_id, noise_aug_strength), as SVD's `_get_add_time_ids`."""
        c = self.config
        ids = torch.tensor([c.fps, c.motion_bucket_id, c.noise_aug_strength], device=device, dtype=dtype)
        return ids.expand(batch, 3)

    def condition(self, current: torch.Tensor, total_frames: int) -> torch.Tensor:
        """Current frame `[B, C, h, w]` -> the channel-concat condition `[B, T, C, h, w]` for all frames."""
        cond = (current / self.config.latent_scale)[:, None].repeat(1, total_frames, 1, 1, 1)
        if self.config.his_cond_zero:
            cond[:, : self.config.num_history] = 0
        return cond

    def unet_forward(
        self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """`x [B, T, C, h, w]` (history + c_in-scaled noisy frames) -> the UNet's raw output, float32."""
        dtype = self.unet.dtype  # the noise level and time ids stay float32 (sinusoidal embeddings)
        out = self.unet(
            torch.cat([x, cond], dim=2).to(dtype),
            c_noise.float(),
            context.to(dtype),
            self.added_time_ids(x.shape[0], x.device, torch.float32),
            frame_level=self.config.frame_level,
        ).sample
        return out.float()

    # ------------------------------------------------------------------------------------- training

    def training_loss(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        text_emb: torch.Tensor | None = None,
        *,
        sigma: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """EDM loss over frames `H .. H+F-1` (see the class docstring); `sigma [B]` fixes the noise level.

        Returns `loss` (scalar), `loss_per_sample [B]`, `mse` (unweighted, scalar), `sigma [B]`,
        `weight [B]` = `1 / c_out^2` (`(sigma^2 + 1) / sigma^2` for SVD's sigma_data = 1) and `dropped [B]`
        (samples whose context was zeroed; dropping happens in train mode only). With `residual` the
        denoised target is each frame minus the current frame.
        """
        c = self.config
        h_n = c.num_history
        b, total = latents.shape[:2]
        if total != h_n + c.num_frames or actions.shape[:2] != (b, total):
            raise ValueError(
                f"expected latents [B, {h_n}+{c.num_frames}, C, h, w] and actions [B, same, A], "
                f"got {tuple(latents.shape)} and {tuple(actions.shape)}"
            )
        latents = latents.float()
        dev = latents.device

        def randn(shape: Sequence[int]) -> torch.Tensor:
            return torch.randn(tuple(shape), device=dev, generator=generator)

        # condition: the current frame, lightly noised (sigma_c ~ U(0, cond_noise_max)) and rescaled
        current = latents[:, h_n]
        sigma_c = torch.rand(b, 1, 1, 1, device=dev, generator=generator) * c.cond_noise_max
        current = (current + sigma_c * randn(current.shape)) * (sigma_c**2 + 1).rsqrt()
        cond = self.condition(current, total)

        context = self.encode_context(actions, text_emb)
        dropped = torch.zeros(b, dtype=torch.bool, device=dev)
        if self.training and c.cfg_drop > 0:
            context, dropped = self.drop_context(context, generator)

        # future frames: EDM noise, one sigma per sample
        if sigma is None:
            sigma = (randn((b,)) * c.p_std + c.p_mean).exp()
        sigma = sigma.to(dev, torch.float32).reshape(b)
        pc = Precond.at(sigma.view(b, 1, 1, 1, 1), c.sigma_data)
        target = latents[:, h_n:]
        if c.residual:
            target = target - latents[:, h_n : h_n + 1]
        noisy = target + sigma.view(b, 1, 1, 1, 1) * randn(target.shape)

        # history: sigma_h ~ |N(0, history_noise)| per frame (upstream's randn * 0.3: only sigma_h^2 and
        # the symmetric sigma_h * n enter, so the sign is irrelevant), scaled by 1 / sqrt(sigma_h^2 + 1)
        history = latents[:, :h_n]
        sigma_h = (randn((b, h_n, 1, 1, 1)) * c.history_noise).abs()
        history = (history + sigma_h * randn(history.shape)) * (sigma_h**2 + 1).rsqrt()

        x = torch.cat([history, pc.c_in * noisy], dim=1)
        out = self.unet_forward(x, cond, pc.c_noise.reshape(b), context)[:, h_n:]
        pred = pc.c_skip * noisy + pc.c_out * out
        mse = (pred - target).pow(2).flatten(1).mean(1)
        weight = pc.weight.reshape(b)
        per_sample = weight * mse
        return {
            "loss": per_sample.mean(),
            "loss_per_sample": per_sample,
            "mse": mse.detach().mean(),
            "sigma": sigma.detach(),
            "weight": weight.detach(),
            "dropped": dropped,
        }

    # ------------------------------------------------------------------------------------- sampling

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        history: torch.Tensor,
        cond: torch.Tensor,
        context: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x0 estimate of the noisy future frames `x [B, F, C, h, w]` at scalar `sigma`, history kept fixed.

        `guidance [F]` (per predicted frame) applies classifier-free guidance against a zero context:
        `uncond + g * (cond - uncond)`; `None` runs the conditional model only.
        """
        b, h_n = x.shape[0], history.shape[1]
        pc = Precond.at(sigma.float().reshape(()), self.config.sigma_data)
        inp = torch.cat([history, pc.c_in * x], dim=1)
        c_noise = pc.c_noise.expand(b)
        if guidance is None:
            out = self.unet_forward(inp, cond, c_noise, context)[:, h_n:]
        else:
            both = self.unet_forward(
                torch.cat([inp, inp]),
                torch.cat([cond, cond]),
                c_noise.repeat(2),
                torch.cat([torch.zeros_like(context), context]),
            )
            uncond, conditional = both[:, h_n:].chunk(2)
            out = uncond + guidance.view(1, -1, 1, 1, 1) * (conditional - uncond)
        return pc.c_skip * x + pc.c_out * out

    @torch.no_grad()
    def sample(
        self,
        history_latents: torch.Tensor,
        actions: torch.Tensor,
        text_emb: torch.Tensor | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        min_guidance_scale: float | None = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        solver: Literal["euler", "heun"] = "euler",
    ) -> torch.Tensor:
        """Predict frames `H .. H+F-1` -> `[B, F, C, h, w]` (frame 0 re-predicts the current frame).

        `history_latents [B, H+1, C, h, w]`: H history frames + the current frame (clean, fixed at every
        step). `actions [B, H+F, A]` gives F. Euler (upstream: diffusers' `EulerDiscreteScheduler` with
        SVD's config, the same steps) or Heun over `karras_sigmas(sigma_min, sigma_max)`, starting from
        `noise` (unit variance, default drawn from `generator`) times `sigma_max`.
        Guidance per predicted frame is `linspace(min_guidance_scale, guidance_scale, F)` as upstream's
        pipeline (1.0 -> 2.0 with its config); `min_guidance_scale=None` means constant `guidance_scale`.
        All-ones guidance runs the conditional model only. With `residual` the denoised changes are added
        back to the current frame. The time ids use `config.noise_aug_strength`
        as in training (upstream's pipeline call leaves its default 0.02 here although it trains with 0.0).
        """
        if solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {solver!r}")
        c = self.config
        h_n = c.num_history
        b = history_latents.shape[0]
        frames = actions.shape[1] - h_n
        if history_latents.shape[1] != h_n + 1 or frames < 1:
            raise ValueError(
                f"expected history_latents [B, {h_n}+1, C, h, w] and actions [B, {h_n}+F, A], "
                f"got {tuple(history_latents.shape)} and {tuple(actions.shape)}"
            )
        history_latents = history_latents.float()
        history = history_latents[:, :h_n]
        cond = self.condition(history_latents[:, h_n], h_n + frames)
        context = self.encode_context(actions, text_emb)

        lo = guidance_scale if min_guidance_scale is None else min_guidance_scale
        guidance: torch.Tensor | None = torch.linspace(lo, guidance_scale, frames, device=history.device)
        if bool((guidance == 1).all()):
            guidance = None

        sigmas = karras_sigmas(num_inference_steps, c.sigma_min, c.sigma_max).to(history.device)
        shape = (b, frames, *history_latents.shape[2:])
        if noise is None:
            noise = torch.randn(shape, device=history.device, generator=generator)
        x = noise.float() * sigmas[0]

        def slope(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return (x - self.denoise(x, s, history, cond, context, guidance)) / s

        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            d = slope(x, s)
            x_next = x + (s_next - s) * d
            if solver == "heun" and s_next > 0:
                x_next = x + (s_next - s) * (d + slope(x_next, s_next)) / 2
            x = x_next
        return x + history_latents[:, h_n : h_n + 1] if c.residual else x
