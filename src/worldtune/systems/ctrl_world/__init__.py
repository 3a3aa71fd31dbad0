"""Ctrl-World (seed 5): an action-conditioned, multi-view, history-conditioned world model on SVD."""

from worldtune.systems.ctrl_world.commands import COMMANDS
from worldtune.systems.system import System

SYSTEM = System(
    name="ctrl_world",
    summary="Ctrl-World: action-conditioned multi-view world model on Stable Video Diffusion (seed 5)",
    recipe="worldtune.systems.ctrl_world.recipe:RECIPE",
    configs="configs/ctrl_world/",
    commands=COMMANDS,
)
