"""AdamW and the learning-rate schedule (linear warmup, then constant or cosine), per stage."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from worldtune.config import TrainConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check train.trainable_models / training_stages")
    # foreach: one kernel per operation over all tensors instead of a Python loop over tensors (PyTorch
    # picks it by itself only on CUDA); a model of many small tensors steps several times faster.
    return torch.optim.AdamW(
        params, lr=lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at `step` (0-based) of a stage of `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, stage_steps: int) -> LambdaLR:
    """A LambdaLR whose step count is the optimizer steps taken within the current stage."""

    def factor(step: int) -> float:
        return lr_factor(
            step,
            warmup_steps=cfg.warmup_steps,
            total_steps=stage_steps,
            schedule=cfg.lr_scheduler,
            min_ratio=cfg.min_lr_ratio,
        )

    return LambdaLR(optimizer, factor)


def scheduler_state(scheduler: LambdaLR) -> dict:
    """JSON-friendly scheduler state (the lambda itself is rebuilt from the config)."""
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)
    return {k: v for k, v in state.items() if isinstance(v, (int, float, list, bool, str, type(None)))}


def load_scheduler_state(scheduler: LambdaLR, state: dict) -> None:
    scheduler.load_state_dict({**scheduler.state_dict(), **state})
    # load_state_dict restores counters but not the optimizer's lr; set it for the restored step.
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = lr
