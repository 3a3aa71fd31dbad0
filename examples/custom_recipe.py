"""How to plug your own system into worldtune: a complete recipe in one file.

A residual MLP regresses a smooth function of a random input. It is small enough to train in
seconds on a CPU, which makes it the trainer's test bench and `make demo`'s job until the built-in
demo exists. Train it with

    PYTHONPATH=examples worldtune train examples/custom_recipe.yaml

A recipe is a config dataclass (your `model` and `data` sections on top of worldtune's `train`,
`checkpoint`, `validation`, `log`, `dist`) plus `build`, `loss` and `sample`. Two options exercise
the trainer's safeguards: `model.stochastic` adds noise in the data and in the loss (exact resume
must restore every RNG), `data.nan_items` gives some items a NaN target (the step is skipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from worldtune.config import RunConfig
from worldtune.train.recipe import Parts, Recipe


@dataclass
class ExampleModelConfig:
    dim: int = 8
    depth: int = 2
    stochastic: bool = False


@dataclass
class ExampleDataConfig:
    num_items: int = 64
    num_val_items: int = 8
    # Items whose target is NaN (non-finite loss injection).
    nan_items: list[int] = field(default_factory=list)
    # Seconds of simulated IO per item (to see perf/data_wait, or to slow a run down).
    load_delay_s: float = 0.0


@dataclass
class ExampleConfig(RunConfig):
    model: ExampleModelConfig = field(default_factory=ExampleModelConfig)
    data: ExampleDataConfig = field(default_factory=ExampleDataConfig)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.tanh(self.fc1(x)))


class ExampleNet(nn.Module):
    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).sum(-1)  # [B]; not a view (FSDP2 warns about returned views)


class ExampleDataset(Dataset):
    def __init__(self, num_items: int, dim: int, offset: int, stochastic: bool, nan_items: list[int],
                 load_delay_s: float = 0.0) -> None:
        self.num_items, self.dim, self.offset = num_items, dim, offset
        self.stochastic, self.nan_items, self.load_delay_s = stochastic, set(nan_items), load_delay_s

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.load_delay_s:
            time.sleep(self.load_delay_s)
        x = torch.randn(self.dim, generator=torch.Generator().manual_seed(index + self.offset))
        if self.stochastic:  # an "augmentation": must be reproducible through SeededDataset
            x = x + 0.1 * torch.randn(self.dim)
        y = torch.sin(x).sum() + 0.5 * x[0] * x[-1]
        if index in self.nan_items:
            y = torch.tensor(float("nan"))
        return {"x": x, "y": y}


class ExampleRecipe(Recipe):
    name = "toy"
    config_class = ExampleConfig

    def build(self, cfg: ExampleConfig) -> Parts:
        m, d = cfg.model, cfg.data
        model = ExampleNet(m.dim, m.depth)
        train = ExampleDataset(d.num_items, m.dim, 0, m.stochastic, d.nan_items, d.load_delay_s)
        val = ExampleDataset(d.num_val_items, m.dim, 10_000, False, [])
        return Parts(model=model, train_dataset=train, val_dataset=val,
                     trainable_aliases={"trunk": "encoder,blocks"}, extras={"stochastic": m.stochastic})

    def loss(self, parts: Parts, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"]
        if parts.extras["stochastic"]:
            x = x + 0.01 * torch.randn_like(x)  # uses the training RNG
        pred = parts.model(x)
        mse = torch.mean((pred - batch["y"]) ** 2)
        return {"loss": mse, "mse_loss": mse, "mae_loss": torch.mean((pred - batch["y"]).abs())}

    def sample(self, parts: Parts, batch: dict[str, torch.Tensor]) -> dict:
        pred = parts.model(batch["x"])
        b = pred.shape[0]
        # A 5-frame 16x16 "video" whose brightness encodes the prediction, beside the target.
        video = torch.tanh(pred).view(b, 1, 1, 1, 1).expand(b, 3, 5, 16, 16)
        target = torch.tanh(batch["y"]).view(b, 1, 1, 1, 1).expand(b, 3, 5, 16, 16)
        return {"video": video, "target": target, "mse": torch.mean((pred - batch["y"]) ** 2)}


RECIPE = ExampleRecipe()
