"""Inverse dynamics model (seed 2's `idm.pt`): robot actions from video frames through a learned mask."""

from worldtune.systems.idm.commands import COMMANDS
from worldtune.systems.system import System

SYSTEM = System(
    name="idm",
    summary="Vidar's masked inverse dynamics model: frame -> robot action, and the mask U(x) for Vidarc (seed 2)",
    recipe="worldtune.systems.idm.recipe:RECIPE",
    configs="configs/idm/",
    commands=COMMANDS,
)
