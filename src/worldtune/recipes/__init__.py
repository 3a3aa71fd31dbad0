"""Recipe registry. `recipe: NAME` in a config picks one; `module.path:ATTR` loads any other."""

from __future__ import annotations

import importlib

from worldtune.config import ConfigError
from worldtune.recipes.base import Parts, Recipe

# Built-in recipes, imported only when asked for (each pulls in its own heavy dependencies).
BUILTIN: dict[str, str] = {
    "vidar": "worldtune.recipes.vidar:RECIPE",
    "lam": "worldtune.recipes.lam:RECIPE",
    "ctrl_world": "worldtune.recipes.ctrl_world:RECIPE",
}

__all__ = ["BUILTIN", "Parts", "Recipe", "get_recipe"]


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or the object at `package.module:attribute`."""
    target = BUILTIN.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN)) or "none yet"
        raise ConfigError(f"recipe: unknown recipe {name!r} (built in: {known}; or use module:attribute)")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"recipe: cannot import {module_name!r} for recipe {name!r}: {err}") from err
    recipe = getattr(module, attr, None)
    if recipe is None:
        raise ConfigError(f"recipe: {module_name!r} has no attribute {attr!r}")
    if isinstance(recipe, type):
        recipe = recipe()
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe: {target!r} is not a worldtune Recipe")
    return recipe
