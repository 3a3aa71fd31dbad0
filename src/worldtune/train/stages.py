"""Training stages: which parameters learn, at what learning rate, for how many steps.

Seed 1's `training_stages` (e.g. "vace_e" for 10 epochs, then "dit,vace_e") and seed 4's heads-then-
LoRA are the same mechanism: an ordered plan of stages, each naming its trainable modules.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from worldtune.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class Stage:
    name: str
    trainable_models: str
    learning_rate: float
    start_step: int
    num_steps: int

    @property
    def end_step(self) -> int:
        return self.start_step + self.num_steps


def plan_stages(cfg: TrainConfig, steps_per_epoch: int) -> list[Stage]:
    """The ordered stages; the whole run is capped by train.max_steps / train.num_epochs."""
    cap = _run_cap(cfg, steps_per_epoch)
    if not cfg.training_stages:
        return [Stage("train", cfg.trainable_models, cfg.learning_rate, 0, cap)]
    stages: list[Stage] = []
    start = 0
    for name, stage_cfg in cfg.training_stages.items():
        length = stage_cfg.max_steps if stage_cfg.max_steps is not None else stage_cfg.epochs * steps_per_epoch
        length = min(length, cap - start)
        if length <= 0:
            break
        lr = stage_cfg.learning_rate if stage_cfg.learning_rate is not None else cfg.learning_rate
        stages.append(Stage(name, stage_cfg.trainable_models, lr, start, length))
        start += length
    return stages


def _run_cap(cfg: TrainConfig, steps_per_epoch: int) -> int:
    caps = []
    if cfg.max_steps is not None:
        caps.append(cfg.max_steps)
    if cfg.num_epochs is not None:
        caps.append(cfg.num_epochs * steps_per_epoch)
    return min(caps) if caps else 2**62


def stage_index_at(stages: list[Stage], step: int) -> int:
    """Index of the stage that step `step` (0-based, about to be taken) belongs to."""
    for index, stage in enumerate(stages):
        if step < stage.end_step:
            return index
    return len(stages) - 1


def trainable_names(model: nn.Module, spec: str, aliases: dict[str, str] | None = None) -> set[str]:
    """Parameter names selected by `spec`: comma-separated module paths, aliases or globs.

    "all" selects every parameter, "none" none, and "auto" the recipe's default (its "auto" alias,
    else all). A token selects a parameter when it equals the
    parameter's name, names one of its parent modules, or matches it as a glob (`*lora_*`).
    """
    names = [name for name, _ in model.named_parameters()]
    selected: set[str] = set()
    aliases = {"auto": "all", **(aliases or {})}
    for token in _expand(spec, aliases):
        if token == "all":
            selected.update(names)
            continue
        if token == "none":
            continue
        matched = {n for n in names if n == token or n.startswith(token + ".") or fnmatch.fnmatchcase(n, token)}
        if not matched:
            top = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"trainable_models: {token!r} matches no parameter; top-level modules are {top}"
                f" and aliases {sorted(aliases)}"
            )
        selected.update(matched)
    return selected


def _expand(spec: str, aliases: dict[str, str]) -> list[str]:
    tokens: list[str] = []
    for raw in spec.split(","):
        token = raw.strip()
        if not token:
            continue
        if token in aliases:
            tokens.extend(t.strip() for t in aliases[token].split(",") if t.strip())
        else:
            tokens.append(token)
    return tokens


def apply_trainable(model: nn.Module, names: set[str]) -> int:
    """Set requires_grad from `names`; returns the number of trainable elements."""
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        if name in names:
            count += param.numel()
    return count
