"""What a system declares: its recipe and the commands it adds to `worldtune`.

A system (one seed's pipeline) is a package under `worldtune.systems`; its `__init__.py` defines
`SYSTEM = System(...)`. Importing it must stay cheap (argparse only): the command line imports every
system to build its `--help`, and each command imports its heavy modules when it runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Command:
    """`worldtune <verb> <name> ...`, e.g. `worldtune prepare lam-manifest DATA_DIR`.

    `name` is the word after the verb (usually the system's spelling, `ctrl-world`); an empty name
    makes the command the verb itself (`worldtune demo`).
    """

    verb: str
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


@dataclass(frozen=True)
class System:
    """One training system: the recipe `recipe: <name>` selects, and its commands."""

    name: str  # the recipe name used in configs (`recipe: ctrl_world`)
    summary: str  # one line for `worldtune train --help`
    recipe: str  # "package.module:ATTRIBUTE" of its `Recipe`, imported only when needed
    configs: str = ""  # where its ready configs live, e.g. configs/ctrl_world/
    commands: tuple[Command, ...] = field(default_factory=tuple)
