"""Ctrl-World's EDM training loss and sampler around a `CtrlWorldModel` (which is only the network).

Clip layout: latents `[B, H + F, C, h, w]`, actions `[B, H + F, A]`. Frames `0 .. H-1` are history
(lightly noised, not denoised, no loss), frame `H` is the current observation, frames `H .. H+F-1` are
denoised and carry the loss: like upstream (its loss slice is `[:, num_history:]`) the current frame is
predicted too, although it is also the channel-concatenated condition of every frame. The settings are
the run config's `model` section (`CtrlWorldModelConfig`): `p_mean`, `p_std`, `cfg_drop`,
`history_noise`, `cond_noise_max`, `sigma_min`, `sigma_max`, `sigma_data`, `residual`; with `residual`
each view's changes are magnified by the model's `view_scales` (see `view_scales.py`).
"""

from __future__ import annotations

import torch

from worldtune.diffusion.edm import Precond, karras_sigmas, log_normal_sigmas, solve_ode
from worldtune.models.svd_world import CtrlWorldModel
from worldtune.systems.ctrl_world.config import CtrlWorldModelConfig


def drop_context(context: torch.Tensor, rate: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero each sample's whole context (actions and text) with probability `rate`; returns it and the mask."""
    u = torch.rand(context.shape[0], device=context.device, generator=generator)
    dropped = u < rate
    return context * (~dropped).to(context.dtype)[:, None, None], dropped


def _lightly_noised(frames: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """`(x + sigma n) / sqrt(sigma^2 + 1)`: upstream's augmentation of the history and condition frames."""
    noise = torch.randn(frames.shape, device=frames.device, generator=generator)
    return (frames + sigma * noise) * (sigma**2 + 1).rsqrt()


def view_scale_map(model: CtrlWorldModel, height: int) -> torch.Tensor:
    """`[1, 1, 1, height, 1]`: the model's `view_scales`, one per stacked view's rows."""
    scales = model.view_scales
    if height % len(scales):
        raise ValueError(f"the model has view_scales for {len(scales)} views; latents of height {height} "
                         "are not that many views stacked")
    return scales.float().repeat_interleave(height // len(scales)).view(1, 1, 1, height, 1)


def changes_to_model_space(model: CtrlWorldModel, changes: torch.Tensor) -> torch.Tensor:
    """Frame changes `[B, F, C, h, w]` as the residual model denoises them: each view's magnified by its
    `view_scales` factor (ones: unchanged)."""
    return changes * view_scale_map(model, changes.shape[-2])


def changes_from_model_space(model: CtrlWorldModel, m: CtrlWorldModelConfig, x: torch.Tensor) -> torch.Tensor:
    """The inverse of `changes_to_model_space` for a sample, after `change_deadzone`: values below that
    fraction of `sigma_data` (where every view's typical change is `sigma_data`) become exactly zero."""
    if m.change_deadzone > 0:
        x = torch.where(x.abs() < m.change_deadzone * m.sigma_data, torch.zeros_like(x), x)
    return x / view_scale_map(model, x.shape[-2])


def hold_still(latents: torch.Tensor, actions: torch.Tensor, num_history: int, prob: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each clip, with probability `prob`, by its current frame (and that frame's action) held
    over every frame: a clip in which nothing moves."""
    still = torch.rand(latents.shape[0], device=latents.device, generator=generator) < prob
    held_latents = latents[:, num_history : num_history + 1].expand_as(latents)
    held_actions = actions[:, num_history : num_history + 1].expand_as(actions)
    pick = still.view(-1, *([1] * (latents.ndim - 1)))
    return torch.where(pick, held_latents, latents), torch.where(still.view(-1, 1, 1), held_actions, actions)


def training_loss(model: CtrlWorldModel, m: CtrlWorldModelConfig, num_history: int, latents: torch.Tensor,
                  actions: torch.Tensor, text_emb: torch.Tensor | None = None, *, sigma: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """EDM loss over frames `H .. H+F-1`; `sigma [B]` fixes the noise level.

    Returns `loss` (scalar), `loss_per_sample [B]`, `mse` (unweighted, scalar), `sigma [B]`,
    `weight [B]` = `1 / c_out^2` (`(sigma^2 + 1) / sigma^2` for SVD's sigma_data = 1) and `dropped [B]`
    (samples whose context was zeroed; dropping happens in train mode only). With `residual` the
    denoised target is each frame minus the current frame.
    """
    h_n = num_history
    b, total = latents.shape[:2]
    if total <= h_n or actions.shape[:2] != (b, total):
        raise ValueError(f"expected latents [B, {h_n}+F, C, h, w] and actions [B, same, A], "
                         f"got {tuple(latents.shape)} and {tuple(actions.shape)}")
    latents = latents.float()
    dev = latents.device
    if m.still_prob > 0 and model.training:
        latents, actions = hold_still(latents, actions, h_n, m.still_prob, generator)

    # condition: the current frame, lightly noised (sigma_c ~ U(0, cond_noise_max)) and rescaled
    sigma_c = torch.rand(b, 1, 1, 1, device=dev, generator=generator) * m.cond_noise_max
    cond = model.condition(_lightly_noised(latents[:, h_n], sigma_c, generator), total, h_n)

    context = model.encode_context(actions, h_n, text_emb)
    dropped = torch.zeros(b, dtype=torch.bool, device=dev)
    if model.training and m.cfg_drop > 0:
        context, dropped = drop_context(context, m.cfg_drop, generator)

    # future frames: EDM noise, one sigma per sample
    if sigma is None:
        sigma = log_normal_sigmas(b, m.p_mean, m.p_std, dev, generator)
    sigma = sigma.to(dev, torch.float32).reshape(b)
    pc = Precond.at(sigma.view(b, 1, 1, 1, 1), m.sigma_data)
    target = latents[:, h_n:]
    if m.residual:
        target = changes_to_model_space(model, target - latents[:, h_n : h_n + 1])
    noisy = target + sigma.view(b, 1, 1, 1, 1) * torch.randn(target.shape, device=dev, generator=generator)

    # history: sigma_h ~ |N(0, history_noise)| per frame (upstream's randn * 0.3: only sigma_h^2 and the
    # symmetric sigma_h * n enter, so the sign is irrelevant)
    sigma_h = (torch.randn((b, h_n, 1, 1, 1), device=dev, generator=generator) * m.history_noise).abs()
    history = _lightly_noised(latents[:, :h_n], sigma_h, generator)

    x = torch.cat([history, pc.c_in * noisy], dim=1)
    out = model(x, cond, pc.c_noise.reshape(b), context)[:, h_n:]
    pred = pc.c_skip * noisy + pc.c_out * out
    mse = (pred - target).pow(2).flatten(1).mean(1)
    weight = pc.weight.reshape(b)
    per_sample = weight * mse
    return {"loss": per_sample.mean(), "loss_per_sample": per_sample, "mse": mse.detach().mean(),
            "sigma": sigma.detach(), "weight": weight.detach(), "dropped": dropped}


def denoise(model: CtrlWorldModel, sigma_data: float, x: torch.Tensor, sigma: torch.Tensor, history: torch.Tensor,
            cond: torch.Tensor, context: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
    """x0 estimate of the noisy future frames `x [B, F, C, h, w]` at scalar `sigma`, history kept fixed.

    `guidance [F]` (per predicted frame) applies classifier-free guidance against a zero context:
    `uncond + g * (cond - uncond)`; `None` runs the conditional model only.
    """
    b, h_n = x.shape[0], history.shape[1]
    pc = Precond.at(sigma.float().reshape(()), sigma_data)
    inp = torch.cat([history, pc.c_in * x], dim=1)
    c_noise = pc.c_noise.expand(b)
    if guidance is None:
        out = model(inp, cond, c_noise, context)[:, h_n:]
    else:
        both = model(torch.cat([inp, inp]), torch.cat([cond, cond]), c_noise.repeat(2),
                     torch.cat([torch.zeros_like(context), context]))
        uncond, conditional = both[:, h_n:].chunk(2)
        out = uncond + guidance.view(1, -1, 1, 1, 1) * (conditional - uncond)
    return pc.c_skip * x + pc.c_out * out


def guidance_ramp(frames: int, guidance_scale: float, min_guidance_scale: float | None,
                  device: torch.device) -> torch.Tensor | None:
    """Per predicted frame `linspace(min_guidance_scale, guidance_scale, F)` as upstream's pipeline (1 -> 2
    with its config); `min_guidance_scale=None`: constant. None when it is all ones (no unconditional pass)."""
    low = guidance_scale if min_guidance_scale is None else min_guidance_scale
    ramp = torch.linspace(low, guidance_scale, frames, device=device)
    return None if bool((ramp == 1).all()) else ramp


@torch.no_grad()
def sample(model: CtrlWorldModel, m: CtrlWorldModelConfig, num_history: int, history_latents: torch.Tensor,
           actions: torch.Tensor, text_emb: torch.Tensor | None = None, *, num_inference_steps: int | None = None,
           guidance_scale: float | None = None, min_guidance_scale: float | None = 1.0,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           solver: str = "euler") -> torch.Tensor:
    """Predict frames `H .. H+F-1` -> `[B, F, C, h, w]` (frame 0 re-predicts the current frame).

    `history_latents [B, H+1, C, h, w]`: H history frames + the current frame (clean, fixed at every step);
    `actions [B, H+F, A]` gives F. Euler (upstream: diffusers' `EulerDiscreteScheduler` with SVD's config,
    the same steps) or Heun over `karras_sigmas(sigma_min, sigma_max)`, from `noise` (unit variance,
    default drawn from `generator`) times `sigma_max`; steps and guidance default to the config's. With
    `residual` the denoised changes are added back to the current frame. The time ids use the model's
    `noise_aug_strength` as in training (upstream's pipeline leaves its default 0.02 here although it
    trains with 0.0).
    """
    h_n = num_history
    b, frames = history_latents.shape[0], actions.shape[1] - h_n
    if history_latents.shape[1] != h_n + 1 or frames < 1 or actions.shape[0] != b:
        raise ValueError(f"expected history_latents [B, {h_n}+1, C, h, w] and actions [B, {h_n}+F, A], "
                         f"got {tuple(history_latents.shape)} and {tuple(actions.shape)}")
    history_latents = history_latents.float()
    history, current = history_latents[:, :h_n], history_latents[:, h_n]
    cond = model.condition(current, h_n + frames, h_n)
    context = model.encode_context(actions, h_n, text_emb)
    guidance = guidance_ramp(frames, m.guidance_scale if guidance_scale is None else guidance_scale,
                             min_guidance_scale, history.device)
    steps = m.num_inference_steps if num_inference_steps is None else num_inference_steps
    sigmas = karras_sigmas(steps, m.sigma_min, m.sigma_max).to(history.device)
    if noise is None:
        noise = torch.randn((b, frames, *history_latents.shape[2:]), device=history.device, generator=generator)

    def x0_hat(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(model, m.sigma_data, x, sigma, history, cond, context, guidance)

    x = solve_ode(x0_hat, noise.float() * sigmas[0], sigmas, solver)
    return changes_from_model_space(model, m, x) + history_latents[:, h_n : h_n + 1] if m.residual else x
