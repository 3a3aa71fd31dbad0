"""Exponential moving average of trainable weights, kept beside the model (sharded like it)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weight, after every optimizer step."""

    def __init__(self, model: nn.Module, names: set[str], decay: float) -> None:
        self.decay = decay
        self.names = sorted(names)
        params = dict(model.named_parameters())
        self.shadow: dict[str, torch.Tensor] = {n: params[n].detach().clone() for n in self.names}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        weight = 1.0 - self.decay
        for name in self.names:
            self.shadow[name].lerp_(params[name].detach(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name in self.names:
                self.shadow[name].copy_(state[name])
