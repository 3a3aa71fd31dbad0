"""Opening a finished (or running) run directory: its config, recipe, checkpoint and weights.

Every command that reads a run (`eval`, `generate`, `label`, `export`) goes through `load_run`:

    run = load_run("runs/lam", RECIPE)          # or worldtune.systems.load_run("runs/lam")
    model = run.model()                         # the recipe's model with the newest weights, eval mode
    run.cfg.data.data_dir                       # the resolved config the run trained with
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from worldtune.config import RunConfig, build_config, parse_overrides, read_yaml
from worldtune.train.export import find_checkpoint, load_weights
from worldtune.train.recipe import Recipe

EXPORT_DIR = "export"


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    recipe: Recipe
    checkpoint: Path  # the newest complete checkpoint (or the one asked for)

    def weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The checkpoint's model weights (`ema`: the EMA copy of the trained ones) as CPU tensors."""
        return load_weights(self.checkpoint, "ema" if ema else "model")

    def model(self, ema: bool | None = None, device: torch.device | str | None = None) -> nn.Module:
        """The recipe's model with the checkpoint's weights, in eval mode. `ema` (default: whether the
        run kept one, `train.ema_decay`) puts the EMA weights over the trained ones."""
        model = self.recipe.build_model(self.cfg)
        model.load_state_dict(self.weights())
        if self.cfg.train.ema_decay if ema is None else ema:
            model.load_state_dict(self.weights(ema=True), strict=False)
        return model.to(device or "cpu").eval()

    def exported(self) -> list[Path]:
        """Files `worldtune export` wrote into RUN_DIR/export (empty when it has not run)."""
        folder = self.run_dir / EXPORT_DIR
        return sorted(folder.iterdir()) if folder.is_dir() else []


def load_run(run_dir: str | Path, recipe: Recipe, *, checkpoint: str | Path | None = None,
             overrides: list[str] | None = None) -> LoadedRun:
    """A run directory's resolved config (plus dotted `overrides`), validated against `recipe`'s
    schema, and its newest complete checkpoint (or `checkpoint`)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml (not a run directory)")
    tree = OmegaConf.merge(read_yaml(config), parse_overrides(overrides or []))
    cfg = build_config(recipe.config_class, tree, source=str(config))
    return LoadedRun(run_dir, cfg, recipe, find_checkpoint(run_dir, checkpoint))
