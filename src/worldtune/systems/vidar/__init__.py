"""Vidar stage 1 (seed 2): fine-tune Wan2.2-TI2V-5B on robot episodes with the flow-matching loss."""

from worldtune.systems.system import System
from worldtune.systems.vidar.commands import COMMANDS

SYSTEM = System(
    name="vidar",
    summary="Vidar stage 1: fine-tune Wan2.2-TI2V-5B on robot episodes (seed 2)",
    recipe="worldtune.systems.vidar.recipe:RECIPE",
    configs="configs/vidar/",
    commands=COMMANDS,
)
