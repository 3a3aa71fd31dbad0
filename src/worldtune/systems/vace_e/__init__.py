"""VACE-E (seed 1): Wan2.1-VACE conditioned on a demonstration's hand motion, object trajectories,
task prompt and embodiment image, trained in stages (branch, then branch and DiT)."""

from worldtune.systems.system import System
from worldtune.systems.vace_e.commands import COMMANDS

SYSTEM = System(
    name="vace_e",
    summary="VACE-E: hand-motion, object-trajectory and embodiment control of Wan2.1-VACE (seed 1)",
    recipe="worldtune.systems.vace_e.recipe:RECIPE",
    configs="configs/vace_e/",
    commands=COMMANDS,
)
