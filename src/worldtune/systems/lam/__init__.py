"""VVAE latent action model (seed 3): discrete actions between consecutive video-VAE latent frames."""

from worldtune.systems.lam.commands import COMMANDS
from worldtune.systems.system import System

SYSTEM = System(
    name="lam",
    summary="VVAE latent action model: a VQ-VAE over video-VAE latent transitions (seed 3)",
    recipe="worldtune.systems.lam.recipe:RECIPE",
    configs="configs/lam/",
    commands=COMMANDS,
)
