"""`worldtune eval idm`: MAE and R^2 per action dimension on a split, beside the baseline that
predicts the training mean; optionally a video of each frame beside what the mask keeps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.systems.idm.data import IdmFrameDataset
from worldtune.systems.idm.inference import open_idm, predict
from worldtune.utils.logging import progress


def evaluate(run_dir: str | Path, split: str = "val", batch_size: int = 32, masks: str | Path | None = None,
             mask_frames: int = 64) -> dict[str, Any]:
    """Per-dimension and per-group MAE (joint units) and R^2 of the IDM and of the mean baseline."""
    idm = open_idm(run_dir)
    if idm.run_config is None:
        raise ValueError(f"{run_dir}: eval idm reads a run directory (its data and splits), not an idm.pt")
    cfg = idm.run_config
    dataset = IdmFrameDataset(dataclasses.replace(cfg.data, split=split))
    truth, predicted = [], []
    for start in progress(range(0, len(dataset), batch_size), desc="frames", unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        predicted.append(predict(idm, torch.cat([i["frames"] for i in items]), batch_size))
        truth.append(torch.cat([i["actions"] for i in items]).numpy())
    truth_np, pred_np = np.concatenate(truth), np.concatenate(predicted)
    mean = idm.model.train_mean.cpu().numpy()
    report = {"split": split, "frames": len(truth_np), "episodes": len(dataset.episodes),
              "model": scores(truth_np, pred_np, idm.groups),
              "train_mean": scores(truth_np, np.broadcast_to(mean, truth_np.shape), idm.groups)}
    if masks is not None:
        report["masks_video"] = str(write_mask_video(idm, dataset, Path(masks), mask_frames))
    return report


def scores(truth: np.ndarray, prediction: np.ndarray, groups: dict[str, list[int]]) -> dict[str, Any]:
    """MAE and R^2 (1 - SSE / SST around the split's own mean) per dimension, and MAE per group."""
    errors = np.abs(prediction - truth)
    sse = ((prediction - truth) ** 2).sum(axis=0)
    sst = ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)
    # A dimension constant on the split has no variance to explain: its R^2 is undefined (None).
    r2 = [None if t <= 1e-12 else float(1 - e / t) for e, t in zip(sse, sst, strict=True)]
    defined = [v for v in r2 if v is not None]
    return {"mae": float(errors.mean()), "r2": float(np.mean(defined)) if defined else None,
            "mae_per_dim": errors.mean(axis=0).round(6).tolist(), "r2_per_dim": r2,
            "action_mae": {name: float(errors[:, dims].mean()) for name, dims in groups.items()}}


def report_table(report: dict[str, Any]) -> str:
    model, base = report["model"], report["train_mean"]

    def r2(value):
        return "   -  " if value is None else f"{value:6.3f}"

    lines = [f"split {report['split']}: {report['frames']} frames from {report['episodes']} episodes",
             f"{'':<16}{'IDM':>20}{'train mean':>22}", f"{'':<16}{'MAE':>10}{'R^2':>10}{'MAE':>12}{'R^2':>10}",
             f"{'mean':<16}{model['mae']:>10.4g}{r2(model['r2']):>10}{base['mae']:>12.4g}{r2(base['r2']):>10}"]
    for name in model["action_mae"]:
        lines.append(f"{name:<16}{model['action_mae'][name]:>10.4g}{'':>10}{base['action_mae'][name]:>12.4g}")
    for d, (m_mae, m_r2, b_mae) in enumerate(zip(model["mae_per_dim"], model["r2_per_dim"], base["mae_per_dim"],
                                                 strict=True)):
        lines.append(f"{'dim ' + str(d):<16}{m_mae:>10.4g}{r2(m_r2):>10}{b_mae:>12.4g}")
    if "masks_video" in report:
        lines.append(f"masks: {report['masks_video']}")
    return "\n".join(lines)


def write_mask_video(idm, dataset: IdmFrameDataset, path: Path, count: int) -> Path:
    """The split's first `count` frames: each beside itself with what the hard mask drops dimmed and
    the kept pixels tinted red (what the regressor looks at)."""
    from torch.nn.functional import interpolate

    from worldtune.data.video_write import side_by_side, write_video

    chunks, have = [], 0
    for i in range(len(dataset)):
        if have >= count:
            break
        chunks.append(dataset[i]["frames"])
        have += len(chunks[-1])
    frames = torch.cat(chunks)[:count]  # [N, 3, H, W]
    _, soft = predict(idm, frames, with_mask=True)
    keep = (interpolate(soft, size=frames.shape[-2:], mode="bilinear", align_corners=False) >= 0.5).float()
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1)
    overlay = keep * (0.6 * frames + 0.4 * red) + (1 - keep) * (0.3 * frames - 0.7)
    fps = float(dataset.cfg.fps)
    return write_video(path, side_by_side(frames.permute(1, 0, 2, 3), overlay.permute(1, 0, 2, 3)), fps=fps)
