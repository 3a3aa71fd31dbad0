"""Vidarc (seed 2, stage 2): the causal Wan DiT with a KV cache, self-forcing training, closed loop."""

from worldtune.systems.system import System
from worldtune.systems.vidarc.commands import COMMANDS

SYSTEM = System(
    name="vidarc",
    summary="Vidarc: Vidar made causal (KV cache), teacher / self-forcing training, closed-loop generation (seed 2)",
    recipe="worldtune.systems.vidarc.recipe:RECIPE",
    configs="configs/vidar/",
    commands=COMMANDS,
)
