"""`worldtune eval lam`: next-frame MSE / MAE, codebook usage and perplexity over a whole split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worldtune.systems.lam.config import LamRunConfig
from worldtune.systems.lam.latent_h5 import LatentSequenceDataset
from worldtune.systems.lam.recipe import RECIPE, transitions
from worldtune.train.run import load_run
from worldtune.utils.device import default_device
from worldtune.utils.logging import progress


@torch.no_grad()
def evaluate(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None,
             batch_size: int = 16) -> dict[str, Any]:
    """MSE / MAE of next-frame prediction, codebook usage and perplexity over a whole split."""
    run = load_run(run_dir, RECIPE)
    cfg, device = run.cfg, default_device()
    model = run.model(device=device)
    dataset = open_split(cfg, data_dir or cfg.data.data_dir, split)
    squared = absolute = elements = 0.0
    counts = torch.zeros(cfg.model.num_embeddings, dtype=torch.long)
    for items in _batches(dataset, batch_size):
        x_t, x_next = transitions(torch.stack([item["latents"] for item in items]).to(device).float())
        out = model(x_t, x_next)
        squared += F.mse_loss(out.prediction, x_next, reduction="sum").item()
        absolute += F.l1_loss(out.prediction, x_next, reduction="sum").item()
        elements += x_next.numel()
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=counts.numel())
    share = counts.float() / counts.sum().clamp(min=1)
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return {"split": split, "sequences": len(dataset), "mse_loss": squared / max(elements, 1),
            "mae_loss": absolute / max(elements, 1), "codebook_usage": float((counts > 0).float().mean()),
            "perplexity": float(entropy.exp())}


def report_table(report: dict[str, Any]) -> str:
    """The evaluation as a small aligned table."""
    rows = [("split", report["split"]), ("sequences", report["sequences"])]
    rows += [(key, f"{report[key]:.6g}") for key in ("mse_loss", "mae_loss", "codebook_usage", "perplexity")]
    return "\n".join(f"{name:<16} {value}" for name, value in rows)


def open_split(cfg: LamRunConfig, data_dir, split: str) -> LatentSequenceDataset:
    data = dataclasses.replace(cfg.data, data_dir=str(data_dir), split=split)
    if data.manifest_path and Path(data_dir) != Path(cfg.data.data_dir):
        data = dataclasses.replace(data, manifest_path=None)  # another folder: its own manifest or none
    dataset = LatentSequenceDataset(data)
    dataset.check_model_frames(cfg.model.in_channels, cfg.model.latent_size)
    return dataset


def _batches(dataset: LatentSequenceDataset, size: int):
    bar = progress(range(0, len(dataset), size), desc="sequences", unit="batch")
    for start in bar:
        yield [dataset[i] for i in range(start, min(start + size, len(dataset)))]
