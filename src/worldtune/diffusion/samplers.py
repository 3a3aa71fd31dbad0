"""Sampling flow-matching (velocity) models through diffusers schedulers.

`sample_flow` runs the denoising loop for any `denoise_fn(x_t, timesteps, cond) -> velocity`, with
classifier-free guidance and Wan2.2-TI2V first-frame conditioning. The model sees float
timesteps `sigma * num_train_timesteps` taken from the scheduler's own sigmas, the training
convention, so a model that predicts the exact velocity lands exactly on its data point.
(Upstream Wan and diffusers' UniPC hand the model integer-truncated timesteps; the difference is
below one timestep unit.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from worldtune.diffusion.flow_matching import ti2v_replace_first_frame, ti2v_token_timesteps
from worldtune.utils.logging import progress as progress_bar

SCHEDULERS = ("unipc", "euler")

DenoiseFn = Callable[[Tensor, Tensor, Any], Tensor]


def make_scheduler(name: str, shift: float, num_train_timesteps: int = 1000) -> SchedulerMixin:
    """A diffusers flow scheduler: `"unipc"` (Wan's default solver) or `"euler"`.

    The UniPC settings are those of the Wan-AI `*-Diffusers` `scheduler_config.json` files
    (2nd-order bh2 predictor-corrector on x0, flow sigmas, final sigma 0).
    """
    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=num_train_timesteps,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
            solver_order=2,
            solver_type="bh2",
            predict_x0=True,
            lower_order_final=True,
            final_sigmas_type="zero",
            timestep_spacing="linspace",
        )
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: `v_uncond + g * (v_cond - v_uncond)`."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def _can_batch(cond: Any, uncond: Any) -> bool:
    """Whether cond and uncond can be stacked along the batch dim into one model call."""
    if isinstance(cond, Tensor) and isinstance(uncond, Tensor):
        return cond.shape == uncond.shape
    if isinstance(cond, Mapping) and isinstance(uncond, Mapping) and cond.keys() == uncond.keys():
        return all(_can_batch(cond[k], uncond[k]) for k in cond)
    return False


def _cat(cond: Any, uncond: Any) -> Any:
    if isinstance(cond, Tensor):
        return torch.cat([cond, uncond])
    return {k: _cat(cond[k], uncond[k]) for k in cond}


def _velocity(
    denoise_fn: DenoiseFn,
    x: Tensor,
    timesteps: Tensor,
    cond: Any,
    uncond: Any,
    guidance_scale: float,
    batch_cfg: bool,
) -> Tensor:
    """One (guided) velocity prediction; a single call when guidance is off or batchable."""
    if uncond is None or guidance_scale == 1.0:
        return denoise_fn(x, timesteps, cond)
    if batch_cfg and _can_batch(cond, uncond):
        v = denoise_fn(torch.cat([x, x]), torch.cat([timesteps, timesteps]), _cat(cond, uncond))
        v_cond, v_uncond = v.chunk(2)
    else:
        v_cond = denoise_fn(x, timesteps, cond)
        v_uncond = denoise_fn(x, timesteps, uncond)
    return cfg_combine(v_cond, v_uncond, guidance_scale)


def _step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None) -> dict[str, Any]:
    # Only stochastic schedulers take a generator (UniPC's step has no such argument).
    if generator is not None and "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generator}
    return {}


@torch.no_grad()
def sample_flow(
    denoise_fn: DenoiseFn,
    noise: Tensor,
    *,
    scheduler: SchedulerMixin,
    num_steps: int,
    cond: Any,
    guidance_scale: float = 1.0,
    uncond: Any = None,
    first_frame_latent: Tensor | None = None,
    patch_size: Sequence[int] = (1, 2, 2),
    batch_cfg: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Integrate from `noise` (sigma=1) to sigma=0 and return the final x0 estimate.

    - `denoise_fn(x_t, timesteps, cond)` returns the velocity; `timesteps` is float `[B]`, or
      per-token `[B, seq_len]` when `first_frame_latent` is given (TI2V: latent frame 0 is held
      at `first_frame_latent` and its tokens get timestep 0 at every step).
    - Guidance: `v_uncond + g * (v_cond - v_uncond)`; with `guidance_scale == 1` or no `uncond`
      only the conditional call is made. With `batch_cfg`, cond and uncond (tensors, or dicts of
      tensors, of equal shapes) are concatenated along the batch into one call of batch `2B`,
      cond first; otherwise (or when shapes differ) two calls are made.
    - `generator` is passed to stochastic schedulers' `step`; `progress` shows a bar.
    """
    scheduler.set_timesteps(num_steps, device=noise.device)
    # Step indices from 0 rather than a lookup of the timestep value (UniPC's integer timesteps
    # may repeat at high shift).
    scheduler.set_begin_index(0)
    sigmas = scheduler.sigmas.tolist()
    num_train = scheduler.config.num_train_timesteps
    step_kwargs = _step_kwargs(scheduler, generator)
    batch = noise.shape[0]

    x = noise
    if first_frame_latent is not None:
        x = ti2v_replace_first_frame(x, first_frame_latent)
    steps = progress_bar(range(len(scheduler.timesteps)), desc="sampling", unit="step", enabled=progress)
    for i in steps:
        t = torch.full((batch,), sigmas[i] * num_train, device=noise.device, dtype=torch.float32)
        if first_frame_latent is not None:
            t = ti2v_token_timesteps(t, x.shape, patch_size)
        v = _velocity(denoise_fn, x, t, cond, uncond, guidance_scale, batch_cfg)
        x = scheduler.step(v.to(x.dtype), scheduler.timesteps[i], x, return_dict=False, **step_kwargs)[0]
        x = x.to(noise.dtype)
        if first_frame_latent is not None:
            x = ti2v_replace_first_frame(x, first_frame_latent)
    return x
