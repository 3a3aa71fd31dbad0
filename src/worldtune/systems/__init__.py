"""The systems registry: one line per system. `recipe: NAME` in a config picks one.

Adding a system is one package under `worldtune/systems/` (see docs/adding-a-system.md) and one
line in `REGISTRY`. A config may instead name any recipe object as `recipe: package.module:ATTR`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from worldtune.config import ConfigError, RunConfig
from worldtune.config import load_config as _load_config
from worldtune.systems.system import Command, System

# name in configs -> package holding `SYSTEM`.
REGISTRY: dict[str, str] = {
    "vidar": "worldtune.systems.vidar",
    "lam": "worldtune.systems.lam",
    "ctrl_world": "worldtune.systems.ctrl_world",
    "idm": "worldtune.systems.idm",
    "vidarc": "worldtune.systems.vidarc",
    "vace_e": "worldtune.systems.vace_e",
    "physics": "worldtune.systems.physics",
}

__all__ = ["Command", "REGISTRY", "System", "all_systems", "get_recipe", "get_system",
           "load_config", "load_run", "recipe_of_run", "train_run"]


def get_system(name: str) -> System:
    if name not in REGISTRY:
        raise ConfigError(f"recipe: unknown system {name!r} (built in: {', '.join(sorted(REGISTRY))})")
    return importlib.import_module(REGISTRY[name]).SYSTEM


def all_systems() -> list[System]:
    return [get_system(name) for name in REGISTRY]


def get_recipe(name: str):
    """The recipe (a `worldtune.train.recipe.Recipe`) of system `name`, or the one at `package.module:attribute`."""
    from worldtune.train.recipe import Recipe  # torch: only when a recipe is wanted, not for `--help`

    target = get_system(name).recipe if name in REGISTRY else name
    if ":" not in target:
        known = ", ".join(sorted(REGISTRY))
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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load, merge and validate a run config against its recipe's schema (`recipe:` picks it)."""
    return _load_config(path, overrides, schema_of=lambda name: get_recipe(name).config_class,
                        infer_recipe=seed_recipe)


# The seeds' YAML files name no recipe; their `model.model_class` says which stage they are.
SEED_MODEL_CLASSES = {"WanModel": "vidar", "WanModelCausal": "vidarc"}


def seed_recipe(tree) -> str | None:
    """The recipe of a seed's own YAML file (None: not one): seed 2's from its `model.model_class`,
    seed 1's (VACE-E) from its `enable_vace_e` / `vace_e_layers` keys."""
    model = tree.get("model") or {}
    if not hasattr(model, "get"):
        return None
    if model.get("enable_vace_e") is not None or model.get("vace_e_layers") is not None:
        return "vace_e"
    return SEED_MODEL_CLASSES.get(str(model.get("model_class")))


def load_run(run_dir: str | Path, **kwargs):
    """`worldtune.train.run.load_run` with the recipe the run's config names."""
    from worldtune.train.run import load_run as _load_run

    return _load_run(run_dir, recipe_of_run(run_dir), **kwargs)


def train_run(cfg: RunConfig):
    """Train `cfg` with the recipe it names (what `worldtune train` does); returns the TrainResult."""
    from worldtune.train.loop import Trainer

    return Trainer(cfg, get_recipe(cfg.recipe)).fit()


def recipe_of_run(path: str | Path):
    """The recipe named by the `config.yaml` of a run directory or of one checkpoint directory."""
    import yaml

    config = Path(path) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{path}: no config.yaml (not a run or checkpoint directory)")
    name = (yaml.safe_load(config.read_text()) or {}).get("recipe")
    if not name:
        raise ConfigError(f"{config}: recipe: missing")
    return get_recipe(str(name))
