"""Sim-Physics (seed 4): motion and depth heads on Wan2.2-TI2V (stage 1), then LoRA with them (stage 2)."""

from worldtune.systems.physics.commands import COMMANDS
from worldtune.systems.system import System

SYSTEM = System(
    name="physics",
    summary="Sim-Physics: motion and depth heads on Wan2.2-TI2V, then LoRA with the heads (seed 4)",
    recipe="worldtune.systems.physics.recipe:RECIPE",
    configs="configs/physics/",
    commands=COMMANDS,
)
