"""Rectified-flow (flow matching) training pieces for the Wan family.

Conventions (Wan, diffusers, DiffSynth-Studio all agree):

- a noise level `sigma` in [0, 1]; `x_t = (1 - sigma) * x0 + sigma * noise` (sigma=0 is data);
- the model predicts the velocity `noise - x0` (constant along the straight path);
- the model's timestep input is `sigma * 1000` (`to_timestep`);
- a resolution "shift" moves sigmas towards 1: `shift * s / (1 + (shift - 1) * s)`.

Everything here is a pure tensor function: no model, no file IO.

Wan2.2-TI2V conditions on a first image by keeping latent frame 0 clean: its tokens get timestep 0
(per-token timesteps `[B, seq_len]`, tokens in frame-major (t, h, w) order as the DiT flattens its
patch grid), and training leaves frame 0 out of the loss (`ti2v_*` helpers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_MODES = ("uniform", "logit_normal")
LOSS_WEIGHTINGS = ("none", "bell", "cosmap")


def shift_sigmas(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Resolution shift of the noise level: `shift*s / (1 + (shift-1)*s)` (identity for shift=1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def to_timestep(sigma: Tensor | float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> Tensor | float:
    """The model's timestep input for a noise level (Wan: `sigma * 1000`)."""
    return sigma * num_train_timesteps


@dataclass
class TimestepSampler:
    """Draws training noise levels; also usable as a structured-config section.

    `mode="uniform"` draws `u ~ U(0, 1)`; `mode="logit_normal"` draws `u = sigmoid(N(mean, std))`
    (SD3). The shift is applied to `u` afterwards, then the result is clamped to
    `[min_sigma, max_sigma]`.
    """

    mode: str = "uniform"
    # Resolution shift applied after sampling (Wan2.1 trains with 5.0 in DiffSynth; 1.0 = none).
    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_sigma: float = 0.0
    max_sigma: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field."""
        if self.mode not in TIMESTEP_MODES:
            raise ValueError(f"timestep mode must be one of {TIMESTEP_MODES}, got {self.mode!r}")
        if self.shift <= 0:
            raise ValueError(f"timestep shift must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if not 0.0 <= self.min_sigma <= self.max_sigma <= 1.0:
            raise ValueError(
                f"need 0 <= min_sigma <= max_sigma <= 1, got min_sigma={self.min_sigma}, "
                f"max_sigma={self.max_sigma}"
            )

    def sample(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """`batch` noise levels in [0, 1] as float32 `[batch]` on `device`."""
        # Draw where the generator lives so a CPU generator also drives sampling for a GPU batch.
        draw_device = generator.device if generator is not None else device
        if self.mode == "uniform":
            u = torch.rand(batch, generator=generator, device=draw_device)
        else:
            z = torch.randn(batch, generator=generator, device=draw_device)
            u = torch.sigmoid(z * self.logit_std + self.logit_mean)
        sigma = shift_sigmas(u, self.shift).clamp(self.min_sigma, self.max_sigma)
        return sigma.to(device=device, dtype=torch.float32)

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`(sigma, timestep)` pair, each `[batch]`; timestep is `sigma * 1000`."""
        sigma = self.sample(batch, generator=generator, device=device)
        return sigma, to_timestep(sigma)


def expand_sigma(sigma: Tensor | float, like: Tensor) -> Tensor:
    """`sigma` as a tensor broadcastable against `like`: `[B]` becomes `[B, 1, ..., 1]`.

    A scalar stays a scalar; a tensor that already has `like.ndim` dimensions (e.g. a per-frame
    `[B, 1, T, 1, 1]` level) is used as given.
    """
    sigma = torch.as_tensor(sigma, device=like.device)
    if sigma.ndim == 1 and like.ndim > 1:
        sigma = sigma.reshape(-1, *([1] * (like.ndim - 1)))
    return sigma.to(like.dtype)


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """`x_t = (1 - sigma) * x0 + sigma * noise`, sigma per sample (`[B]`) or broadcastable."""
    s = expand_sigma(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching regression target `noise - x0` (d x_t / d sigma)."""
    return noise - x0


@lru_cache(maxsize=32)
def _bell_constants(shift: float) -> tuple[float, float]:
    # DiffSynth-Studio's training grid: 1000 sigmas linspace(1, 0, 1001)[:-1], shifted. Its
    # weights are the bell minus its minimum on that grid, rescaled to mean 1 on the grid.
    grid = shift_sigmas(torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1], shift)
    y = torch.exp(-2 * (grid - 0.5) ** 2)
    floor = float(y.min())
    return floor, float((y - floor).mean())


def loss_weight(sigma: Tensor, scheme: str = "none", *, shift: float = 1.0) -> Tensor:
    """Per-sample loss weight for noise levels `sigma` (any shape; same shape out).

    - `"none"`: 1.
    - `"bell"`: DiffSynth-Studio's Wan training weight (`FlowMatchScheduler.training_weight`):
      `exp(-2 (sigma - 0.5)^2)` minus its minimum, rescaled so the mean over DiffSynth's
      1000-point training grid shifted by `shift` is 1, i.e. mean ~1 when sigmas are drawn
      uniformly then shifted by the same `shift` (it is 0 at sigma=1).
    - `"cosmap"`: `2 / (pi (1 - 2 sigma + 2 sigma^2))` (diffusers `compute_loss_weighting_for_sd3`);
      its mean over uniform sigma in [0, 1] is exactly 1.
    """
    if scheme == "none":
        return torch.ones_like(sigma)
    if scheme == "bell":
        floor, mean = _bell_constants(float(shift))
        y = torch.exp(-2 * (sigma - 0.5) ** 2)
        return ((y - floor) / mean).clamp_min(0.0)
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {scheme!r}")


def per_sample_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error per sample, `[B]` float32, over the elements where `mask` is nonzero.

    `mask` broadcasts against `pred` (e.g. `[B, 1, T, 1, 1]`); float masks act as element weights.
    A sample whose mask is all zero gets 0.
    """
    err = (pred.float() - target.float()) ** 2
    dims = tuple(range(1, err.ndim))
    if mask is None:
        return err.mean(dim=dims)
    m = mask.to(device=err.device, dtype=err.dtype).expand_as(err)
    return (err * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1e-12)


def flow_matching_loss(
    pred_velocity: Tensor,
    x0: Tensor,
    noise: Tensor,
    *,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Scalar loss: batch mean of `weight[b] * MSE_b(pred_velocity, noise - x0)` over `mask`."""
    mse = per_sample_mse(pred_velocity, velocity_target(x0, noise), mask)
    if weight is not None:
        mse = mse * weight.to(device=mse.device, dtype=mse.dtype).reshape(-1)
    return mse.mean()


def drop_conditions(
    cond: Tensor,
    null_cond: Tensor,
    prob: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Classifier-free-guidance dropout: replace whole samples of `cond` by `null_cond`.

    `null_cond` is one sample's shape (or `[1, ...]` / `[B, ...]`), e.g. the empty-prompt text
    embedding. Returns the new `[B, ...]` tensor and the boolean `[B]` mask of dropped samples.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"condition dropout probability must be in [0, 1], got {prob}")
    batch = cond.shape[0]
    draw_device = generator.device if generator is not None else cond.device
    dropped = (torch.rand(batch, generator=generator, device=draw_device) < prob).to(cond.device)
    null = null_cond.to(device=cond.device, dtype=cond.dtype)
    if null.ndim == cond.ndim - 1:
        null = null.unsqueeze(0)
    null = null.expand_as(cond)
    keep_shape = (batch,) + (1,) * (cond.ndim - 1)
    return torch.where(dropped.reshape(keep_shape), null, cond), dropped


# --------------------------------------------------------------------------- TI2V first frame


def ti2v_replace_first_frame(latents: Tensor, first_frame_latent: Tensor) -> Tensor:
    """`latents` `[B, C, T, H, W]` with latent frame 0 set to `first_frame_latent`.

    `first_frame_latent` is `[B, C, 1, H, W]` or `[B, C, H, W]` (batch 1 broadcasts).
    """
    first = first_frame_latent
    if first.ndim == latents.ndim - 1:
        first = first.unsqueeze(2)
    b, c, _, h, w = latents.shape
    first = first[:, :, :1].to(device=latents.device, dtype=latents.dtype).expand(b, c, 1, h, w)
    return torch.cat([first, latents[:, :, 1:]], dim=2)


def ti2v_noisy_latents(
    x0: Tensor, noise: Tensor, sigma: Tensor | float, first_frame_latent: Tensor | None = None
) -> Tensor:
    """Noised `x0` with latent frame 0 kept clean (the given latent, default `x0`'s own frame 0)."""
    first = x0[:, :, :1] if first_frame_latent is None else first_frame_latent
    return ti2v_replace_first_frame(add_noise(x0, noise, sigma), first)


def _token_grid(latent_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int, int]:
    _, _, t, h, w = latent_shape
    pt, ph, pw = patch_size
    if t % pt or h % ph or w % pw:
        raise ValueError(
            f"latent shape {tuple(latent_shape)} is not divisible by patch size {tuple(patch_size)}"
        )
    return t // pt, h // ph, w // pw


def ti2v_token_timesteps(
    t: Tensor | float,
    latent_shape: Sequence[int],
    patch_size: Sequence[int] = (1, 2, 2),
    seq_len: int | None = None,
) -> Tensor:
    """Per-token timesteps `[B, seq_len]`: 0 for the tokens of latent frame 0, `t` elsewhere.

    Matches Wan2.2 `textimage2video.py`, which multiplies the latent-frame mask subsampled by the
    patch size by `t` and flattens it frame-major (t, h, w), the DiT's token order. `t` is a
    scalar or `[B]` (timesteps or sigmas: it is only multiplied). A `seq_len` longer than the
    token count pads with `t`, as upstream does for sequence-parallel padding.
    """
    batch = latent_shape[0]
    nt, nh, nw = _token_grid(latent_shape, patch_size)
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.float()
    t = t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)
    keep = torch.ones(nt, dtype=t.dtype, device=t.device)
    keep[0] = 0
    tokens = keep.repeat_interleave(nh * nw)
    n = tokens.numel()
    if seq_len is not None:
        if seq_len < n:
            raise ValueError(
                f"seq_len {seq_len} is shorter than the {n} tokens of latent shape {tuple(latent_shape)}"
            )
        tokens = torch.cat([tokens, tokens.new_ones(seq_len - n)])
    return t[:, None] * tokens[None, :]


def ti2v_loss_mask(latent_shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Float mask `[B, 1, T, 1, 1]`: 0 for latent frame 0 (the clean conditioning frame), 1 elsewhere."""
    batch, frames = latent_shape[0], latent_shape[2]
    mask = torch.ones(batch, 1, frames, 1, 1, device=device)
    mask[:, :, 0] = 0
    return mask
