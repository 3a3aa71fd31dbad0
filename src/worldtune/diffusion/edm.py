"""EDM (Karras et al. 2022) in SVD's convention: preconditioning, log-normal training noise levels, the
Karras sigma schedule and its Euler / Heun ODE sampler. Used by Ctrl-World (`systems/ctrl_world/world_edm.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Precond:
    """EDM (Karras et al. 2022) coefficients at `sigma`, SVD's v-prediction sign.

    `x0_hat = c_skip * x + c_out * F(c_in * x, c_noise)` with `x = x0 + sigma * n`. `c_out` is NEGATIVE
    (`-sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)`), so with SVD's `sigma_data = 1` the UNet's
    regression target is `(n - sigma * x0) / sqrt(sigma^2 + 1)`: SVD's sign, and what diffusers'
    `EulerDiscreteScheduler(prediction_type="v_prediction", timestep_type="continuous")` assumes
    (`timestep = log(sigma) / 4`). Training and sampling both use this.

    `sigma_data` is the data's standard deviation, which EDM's preconditioning assumes: SVD's VAE latents
    times its scaling factor have about 1; lossless pixel latents (about 0.4) or frame differences
    (`residual`, about 0.2) need their own, or every error of the UNet's output is amplified.
    """

    c_in: torch.Tensor
    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_noise: torch.Tensor
    weight: torch.Tensor  # loss weight 1 / c_out^2 ((sigma^2 + 1) / sigma^2 for sigma_data = 1)

    @classmethod
    def at(cls, sigma: torch.Tensor, sigma_data: float = 1.0) -> Precond:
        d2 = sigma_data**2
        s2 = sigma**2 + d2
        c_out = -sigma * sigma_data * s2.rsqrt()
        return cls(
            c_in=s2.rsqrt(),
            c_skip=d2 / s2,
            c_out=c_out,
            c_noise=sigma.log() / 4,
            weight=c_out.pow(-2),
        )


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """`num_steps` decreasing Karras sigmas from `sigma_max` to `sigma_min`, then a final 0 (`[num_steps + 1]`).

    SVD's scheduler config (`use_karras_sigmas=True`, `sigma_min=0.002`, `sigma_max=700`) gives the same list.
    """
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def log_normal_sigmas(batch: int, p_mean: float, p_std: float, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels `[batch]`: `log(sigma) ~ N(p_mean, p_std)`."""
    return (torch.randn(batch, device=device, generator=generator) * p_std + p_mean).exp()


def solve_ode(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
              solver: str = "euler") -> torch.Tensor:
    """Integrate the probability-flow ODE from `x` (noise at `sigmas[0]`) down `sigmas` with Euler steps
    (diffusers' `EulerDiscreteScheduler`) or Heun's second-order correction; `denoise(x, sigma)` is x0_hat."""
    if solver not in ("euler", "heun"):
        raise ValueError(f"unknown solver {solver!r} (euler | heun)")

    def slope(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - denoise(x, sigma)) / sigma

    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = slope(x, sigma)
        x_next = x + (sigma_next - sigma) * d
        if solver == "heun" and sigma_next > 0:
            x_next = x + (sigma_next - sigma) * (d + slope(x_next, sigma_next)) / 2
        x = x_next
    return x
