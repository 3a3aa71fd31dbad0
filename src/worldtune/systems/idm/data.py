"""Frame / action pairs for the IDM from Vidar's episode layout, with its training augmentation.

An item is ``{"frames": float [T, 3, H, W] in [-1, 1] (cameras tiled as Vidar tiles them),
"actions": float32 [T, action_dim], "episode": str, "frame_indices": long [T]}`` with T =
``num_frames``; `collate_frames` flattens a batch into its B * T frames. The episodes, manifest,
splits, decoding and tiling are the Vidar recipe's (`EpisodeClipDataset`, clips side by side so
that each frame is served once an epoch); on top, every episode's actions must be finite (a NaN
names the file, or, with ``on_bad_sample: skip``, the episode is logged, counted and left out).

One frame per item is upstream's sampling. Decoding a single frame means decoding from the
keyframe before it, so ``num_frames`` 5 or 9 (consecutive frames from one clip, decoded together)
trades some diversity within a batch for much less decoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from worldtune.data.formats.episode_files import ACTIONS_FILE, BadEpisode, EpisodeInfo, open_actions
from worldtune.data.formats.episodes import EpisodeClipDataset
from worldtune.systems.idm.config import IdmDataConfig


class IdmFrameDataset(EpisodeClipDataset):
    """Single frames with their action rows; augmentation with ``augment=True`` (the train split)."""

    def __init__(self, cfg: IdmDataConfig, augment: bool = False) -> None:
        self.augment = augment
        super().__init__(cfg)

    def _check(self, info: EpisodeInfo) -> EpisodeInfo:
        info = super()._check(info)
        actions = np.asarray(open_actions(info.dir))
        bad = ~np.isfinite(actions)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise BadEpisode(info.dir, f"{ACTIONS_FILE} holds {int(bad.sum())} non-finite values "
                                       f"(first at row {row}, dimension {col})")
        return info

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        frames, actions = item["video"].permute(1, 0, 2, 3), item["actions"]
        if self.augment:
            frames, actions = augment(frames, actions, self.cfg)
        return {"frames": frames, "actions": actions, "episode": item["episode"],
                "frame_indices": item["frame_indices"]}

    def all_actions(self) -> np.ndarray:
        """Every row of every episode's actions.npy (the frames this dataset serves), `[N, D]` float64."""
        return np.concatenate([np.asarray(open_actions(info.dir), dtype=np.float64) for info in self.episodes])


def action_statistics(actions: np.ndarray, floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std of the training actions. A constant dimension (std below `floor`,
    e.g. an unused gripper) gets std 1: its normalised target is then 0, not a division by zero."""
    mean, std = actions.mean(axis=0), actions.std(axis=0)
    return mean, np.where(std < floor, 1.0, std)


def collate_frames(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of B items of T frames -> `frames [B*T, 3, H, W]`, `actions [B*T, D]`."""
    return {"frames": torch.cat([i["frames"] for i in items]), "actions": torch.cat([i["actions"] for i in items]),
            "episode": [i["episode"] for i in items], "frame_indices": torch.cat([i["frame_indices"] for i in items])}


def augment(frame: torch.Tensor, action: torch.Tensor, cfg: IdmDataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour jitter and the mirror flip of an item's frames `[T, 3, H, W]` (one draw for the item),
    from the global torch RNG (seeded per item)."""
    brightness, contrast, saturation = cfg.color_jitter
    x = (frame + 1) / 2
    if brightness > 0:
        x = x * _factor(brightness)
    if contrast > 0:
        mean = _gray(x).mean()
        x = (x - mean) * _factor(contrast) + mean
    if saturation > 0:
        gray = _gray(x)
        x = (x - gray) * _factor(saturation) + gray
    frame = x.clamp(0, 1) * 2 - 1
    if cfg.flip_prob > 0 and torch.rand(()) < cfg.flip_prob:
        frame, action = frame.flip(-1), flip_action(action, cfg.flip_swap_halves, cfg.flip_negate)
    return frame, action


def flip_action(action: torch.Tensor, swap_halves: bool, negate: list[int]) -> torch.Tensor:
    """The action of the mirrored scene: the arms' halves swapped (left arm <-> right arm), then the
    mirrored joints negated (upstream `handle_flip`)."""
    out = action.clone()
    if swap_halves:
        half = action.shape[-1] // 2
        out = torch.cat([action[..., half:], action[..., :half]], dim=-1)
    out[..., list(negate)] = -out[..., list(negate)]
    return out


def _factor(amount: float) -> float:
    return float(torch.empty(()).uniform_(1 - amount, 1 + amount))


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma `[..., 1, H, W]` of RGB images `[..., 3, H, W]` in [0, 1] (torchvision's grayscale)."""
    return (0.299 * x[..., 0, :, :] + 0.587 * x[..., 1, :, :] + 0.114 * x[..., 2, :, :]).unsqueeze(-3)
