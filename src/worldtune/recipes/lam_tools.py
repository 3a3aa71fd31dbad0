"""The latent action model's jobs besides training: label transitions, evaluate a split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from worldtune.config import build_config, read_yaml
from worldtune.data.formats.latent_h5 import LatentSequenceDataset
from worldtune.models.lam import VVAELatentActionVQVAE
from worldtune.recipes.lam import LamRunConfig, lam_config, transitions
from worldtune.train.export import find_checkpoint, load_weights
from worldtune.train.logging import progress
from worldtune.utils.atomic import atomic_path


def load_run(run_dir: str | Path, device: torch.device | None = None) -> tuple[LamRunConfig, VVAELatentActionVQVAE]:
    """A trained LAM from a run directory (its config and newest complete checkpoint)."""
    cfg = build_config(LamRunConfig, read_yaml(Path(run_dir) / "config.yaml"), source=str(run_dir))
    model = VVAELatentActionVQVAE(lam_config(cfg.model))
    model.load_state_dict(load_weights(find_checkpoint(run_dir)))
    return cfg, model.to(device or _device()).eval()


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def label(run_dir: str | Path, data_dir: str | Path, out: str | Path, split: str = "all",
          batch_size: int = 64) -> int:
    """One JSON line per transition of every file (all its chunks joined in time): file, frame
    (the index of x_t in the file's latent frames), codes, action_id. Returns the line count."""
    import h5py

    cfg, model = load_run(run_dir)
    files = _dataset(cfg, data_dir, split).files
    device = next(model.parameters()).device
    count = 0
    with atomic_path(out) as tmp, open(tmp, "w") as handle:
        for file in progress(files, desc="files", unit="file"):
            with h5py.File(file.path, "r") as f:
                chunks = torch.from_numpy(f[file.dataset][()]).float()  # [N, C, T, H, W]
            frames = chunks.permute(0, 2, 1, 3, 4).flatten(0, 1)  # [N*T, C, H, W] in time order
            for start in range(0, frames.shape[0] - 1, batch_size):
                x_t = frames[start:start + batch_size].to(device)
                x_next = frames[start + 1:start + 1 + batch_size].to(device)
                x_t = x_t[: x_next.shape[0]]
                indices = model.encode_actions(x_t, x_next).indices
                for k, (codes, action) in enumerate(zip(indices.tolist(), model.action_ids(indices).tolist(),
                                                        strict=True)):
                    handle.write(json.dumps({"file": file.path.name, "frame": start + k, "codes": codes,
                                             "action_id": action}) + "\n")
                    count += 1
    return count


@torch.no_grad()
def evaluate(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None,
             batch_size: int = 16) -> dict[str, Any]:
    """MSE / MAE of next-frame prediction, codebook usage and perplexity over a whole split."""
    cfg, model = load_run(run_dir)
    dataset = _dataset(cfg, data_dir or cfg.data.data_dir, split)
    device = next(model.parameters()).device
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


def _dataset(cfg: LamRunConfig, data_dir, split: str) -> LatentSequenceDataset:
    data = dataclasses.replace(cfg.data, data_dir=str(data_dir), split=split)
    if data.manifest_path and Path(data_dir) != Path(cfg.data.data_dir):
        data = dataclasses.replace(data, manifest_path=None)  # another folder: its own manifest or none
    return LatentSequenceDataset(data)


def _batches(dataset: LatentSequenceDataset, size: int):
    bar = progress(range(0, len(dataset), size), desc="sequences", unit="batch")
    for start in bar:
        yield [dataset[i] for i in range(start, min(start + size, len(dataset)))]
