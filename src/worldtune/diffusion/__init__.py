"""Diffusion objectives and samplers: flow matching for the Wan family (`flow_matching`,
`samplers`). Pure tensor functions and small classes; no model or file IO.

`samplers` imports diffusers, so it is not imported here; use
`from worldtune.diffusion.samplers import sample_flow, make_scheduler`.
"""

from worldtune.diffusion.flow_matching import (
    LOSS_WEIGHTINGS,
    NUM_TRAIN_TIMESTEPS,
    TIMESTEP_MODES,
    TimestepSampler,
    add_noise,
    drop_conditions,
    expand_sigma,
    flow_matching_loss,
    loss_weight,
    per_sample_mse,
    shift_sigmas,
    ti2v_loss_mask,
    ti2v_noisy_latents,
    ti2v_replace_first_frame,
    ti2v_token_timesteps,
    to_timestep,
    velocity_target,
)

__all__ = [
    "LOSS_WEIGHTINGS",
    "NUM_TRAIN_TIMESTEPS",
    "TIMESTEP_MODES",
    "TimestepSampler",
    "add_noise",
    "drop_conditions",
    "expand_sigma",
    "flow_matching_loss",
    "loss_weight",
    "per_sample_mse",
    "shift_sigmas",
    "ti2v_loss_mask",
    "ti2v_noisy_latents",
    "ti2v_replace_first_frame",
    "ti2v_token_timesteps",
    "to_timestep",
    "velocity_target",
]
