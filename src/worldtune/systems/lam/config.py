"""The latent action model's config sections: the VQ-VAE (plus rollout training) and the H5 latents."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldtune.config import RunConfig
from worldtune.models.lam import LamConfig
from worldtune.systems.lam.latent_h5 import LatentH5Config


@dataclass
class LamModelSection(LamConfig):
    """The VQ-VAE (`LamConfig`, which the model takes as is) plus rollout training."""

    # Decoder steps on its own predictions (2 = one extra step); 0 or 1 disables rollout training.
    rollout_horizon: int = 0
    rollout_weight: float = 1.0


@dataclass
class LamRunConfig(RunConfig):
    model: LamModelSection = field(default_factory=LamModelSection)
    data: LatentH5Config = field(default_factory=LatentH5Config)
