"""Validation: loss over a fixed slice of the validation set, and samples written as mp4.

Runs under a forked RNG seeded from the run seed, so validating never changes the training RNG
(a resumed run stays bitwise identical) and samples are comparable from one validation to the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader

from worldtune.config import RunConfig
from worldtune.train.data import EpochBatchSampler, ItemKey, SeededDataset, move_to_device
from worldtune.train.distributed import DistEnv, all_reduce_mean, autocast
from worldtune.train.recipe import Parts, Recipe


class TrainerView(Protocol):
    """What validation reads from the trainer (the loop imports this module, not the reverse)."""

    cfg: RunConfig
    env: DistEnv
    recipe: Recipe
    model: torch.nn.Module
    run_dir: Path
    logger: Any  # RunLogger: log_videos(step, paths)


class Validator:
    def __init__(self, trainer: TrainerView, parts: Parts) -> None:
        self.trainer = trainer
        self.parts = parts
        cfg, env = trainer.cfg, trainer.env
        dataset = parts.val_dataset if parts.val_dataset is not None else parts.train_dataset
        self.dataset = SeededDataset(dataset, cfg.seed)
        self.sampler = None
        if parts.val_dataset is not None and cfg.validation.max_batches > 0:
            self.sampler = EpochBatchSampler(
                len(dataset), cfg.train.batch_size, rank=env.rank, world_size=env.world_size,
                seed=cfg.seed, shuffle=False, max_micro_batches=cfg.validation.max_batches,
            )
        count = min(cfg.validation.video_num, len(dataset))
        self.sample_keys = [ItemKey(0, i, i) for i in range(count)]

    @torch.no_grad()
    def run(self, step: int) -> dict[str, float]:
        trainer = self.trainer
        trainer.model.eval()
        devices = [trainer.env.device] if trainer.env.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(trainer.cfg.seed)
            metrics = self._loss_metrics()
            metrics.update(self._samples(step))
        return metrics

    def _loss_metrics(self) -> dict[str, float]:
        if self.sampler is None or len(self.sampler) == 0:
            return {}
        trainer = self.trainer
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self.parts.collate_fn)
        totals: dict[str, torch.Tensor] = {}
        batches = 0
        for batch in loader:
            batch = move_to_device(batch, trainer.env.device)
            with autocast(trainer.cfg.dist, trainer.env):
                out = trainer.recipe.loss(self.parts, batch)
            for key, value in out.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float()
            batches += 1
        keys = sorted(totals)
        means = all_reduce_mean(torch.stack([totals[k] / batches for k in keys]), trainer.env).tolist()
        return {f"val/{k}": v for k, v in zip(keys, means, strict=True)}

    def _samples(self, step: int) -> dict[str, float]:
        if not self.sample_keys:
            return {}
        trainer = self.trainer
        items = [self.dataset[key] for key in self.sample_keys]
        batch = self.parts.collate_fn(items) if self.parts.collate_fn else torch.utils.data.default_collate(items)
        with autocast(trainer.cfg.dist, trainer.env):
            result = trainer.recipe.sample(self.parts, move_to_device(batch, trainer.env.device))
        if not result:
            return {}
        if trainer.env.is_main and "video" in result and trainer.cfg.validation.save_videos:
            paths = write_sample_videos(trainer.run_dir / "samples", step, result, trainer.cfg.validation.fps)
            trainer.logger.log_videos(step, paths)
        wanted = trainer.cfg.validation.metrics
        return {f"val/{k}": float(v) for k, v in result.items()
                if _is_scalar(v) and (not wanted or k.split("/")[0] in wanted)}


def write_sample_videos(out_dir: Path, step: int, result: dict[str, Any], fps: int) -> list[Path]:
    """`samples/train_steps_<step>_<i>.mp4`: ground truth (when given) | prediction | the control
    the recipe conditioned on (when it returns one, e.g. VACE-E's hands-masked video)."""
    from worldtune.data.video_write import side_by_side, write_video

    videos = result["video"].detach().float().cpu()
    paths = []
    for i in range(videos.shape[0]):
        panels = [result[key][i].detach().float().cpu() for key in ("target",) if result.get(key) is not None]
        panels.append(videos[i])
        panels += [result[key][i].detach().float().cpu() for key in ("control",) if result.get(key) is not None]
        frames = side_by_side(*panels)
        path = out_dir / f"train_steps_{step}_{i}.mp4"
        write_video(path, frames, fps=fps)
        paths.append(path)
    return paths


def _is_scalar(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1
