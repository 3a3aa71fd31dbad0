"""Ctrl-World training samples from pre-encoded latents: the Flexiv layout (seed 5) and upstream's DROID one.

Layouts (``layout="auto"`` picks "droid" when ``<dataset_root>/annotation/<split>`` exists, else "flexiv"):

- "flexiv" (written by :mod:`worldtune.systems.ctrl_world.convert`): ``<root>/<ep>/latent_videos/<view>/0.pt``
  and ``<root>/<ep>/annotation/<view>.json`` (one annotation per view; paths in it are relative to
  the episode folder).
- "droid" (upstream Ctrl-World): ``<root>/annotation/<split>/<ep>.json`` whose
  ``latent_videos[view].latent_video_path`` (e.g. ``latent_videos/<split>/<ep>/<view>.pt``) is
  relative to ``<root>``.

Meta info: ``<meta_info>/{stat.json, <split>_sample.json}``, ``meta_info`` defaulting to
``<dataset_root>_meta_info/<dataset_name>``. The stat.json path is built from the config, never
from the dataset name alone (the seed's bug #3); a missing file is an error naming the path.

An item, for a sample ``{"episode_id": e, "frame_ids": [t]}``::

    latents    float [num_history + num_frames, C, V*h, w]   views stacked along height, in `views` order
    actions    float [num_history + num_frames, D]           annotation[action_key], normalised to [-1, 1]
    prompt     str                                           the instruction (texts[0])
    episode_id the sample's episode id
    frame_ids  long  [num_history + num_frames]              the latent frames used

``frame_ids`` are ``t - num_history*history_stride, ..., t - history_stride`` (history), ``t``
(current), then ``t + frame_stride, ..., t + (num_frames-1)*frame_stride`` (future), each clipped
to ``[0, T-1]`` like upstream (which pads by repeating the first / last frame). Upstream draws the
strides at random per item (future 1 or 2, history 4x that, 15% of the time 0); here they are fixed
config values. The conditioning signal is ``action_key="states"`` by default, as upstream (the
absolute cartesian state + gripper, per frame); ``"actions"`` uses the recorded commands. Both are
normalised with stat.json's 1st / 99th percentiles: ``2 * (x - p01) / (p99 - p01 + 1e-8) - 1``,
clipped to [-1, 1] (``state_01``/``state_99`` or ``action_01``/``action_99``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from worldtune.data import keys
from worldtune.systems.ctrl_world.episode_files import (  # noqa: F401 (re-exported: the reader's public names)
    LAYOUTS,
    BadCtrlWorldSample,
    CtrlWorldEpisode,
    detect_layout,
    episode_files,
    episode_length,
    instruction,
    load_episode,
    load_latent,
    stack_view_latents,
    vectors,
)
from worldtune.utils.logging import get_logger

logger = get_logger("worldtune.systems.ctrl_world.dataset")

PathLike = str | os.PathLike[str]
ACTION_KEYS = ("states", "actions")
EPS = 1e-8
Skipped = list[tuple[str, str]]  # (episode, problem)


@dataclass
class CtrlWorldDataConfig:
    """Where the converted Ctrl-World data is and how samples are cut (an OmegaConf structured section)."""

    dataset_root: str = MISSING  # the converted folder, e.g. dataset_example/flexiv_data
    meta_info: str | None = None  # None: <dataset_root>_meta_info/<dataset_name>
    dataset_name: str = MISSING  # e.g. flexiv_1113
    num_frames: int = 5  # current + future frames
    num_history: int = 6  # history frames before the current one
    history_stride: int = 1  # frames between history frames
    frame_stride: int = 1  # frames between future frames
    views: list[int] = field(default_factory=lambda: [0, 1, 2])  # stacked top to bottom
    action_key: str = "states"  # "states" (upstream) | "actions"
    layout: str = "auto"  # "auto" | "flexiv" | "droid"
    split: str = "train"  # reads <meta_info>/<split>_sample.json
    on_bad_sample: str = "error"  # "error" | "skip" (log, count, use the next sample)


# --------------------------------------------------------------------------------- config / paths


def check_config(cfg: CtrlWorldDataConfig) -> None:
    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"data.{name} = {getattr(cfg, name)!r}: {why}")

    for name in ("dataset_root", "dataset_name"):
        value = getattr(cfg, name)
        if not isinstance(value, str) or not value or value == MISSING:
            raise bad(name, "must be set")
    if cfg.num_frames < 1:
        raise bad("num_frames", "must be >= 1")
    if cfg.num_history < 0:
        raise bad("num_history", "must be >= 0")
    if cfg.history_stride < 0 or cfg.frame_stride < 0:
        raise bad("history_stride" if cfg.history_stride < 0 else "frame_stride", "must be >= 0")
    if not cfg.views or len(set(cfg.views)) != len(cfg.views) or min(cfg.views) < 0:
        raise bad("views", "must be distinct non-negative view numbers")
    if cfg.action_key not in ACTION_KEYS:
        raise bad("action_key", f"must be one of {ACTION_KEYS}")
    if cfg.layout not in LAYOUTS:
        raise bad("layout", f"must be one of {LAYOUTS}")
    if cfg.on_bad_sample not in ("error", "skip"):
        raise bad("on_bad_sample", "must be 'error' or 'skip'")


def meta_info_path(cfg: CtrlWorldDataConfig) -> Path:
    """``cfg.meta_info``, or ``<dataset_root>_meta_info/<dataset_name>``."""
    if cfg.meta_info:
        return Path(cfg.meta_info)
    root = Path(cfg.dataset_root)
    return root.parent / f"{root.name}_meta_info" / cfg.dataset_name


def load_stats(meta_dir: PathLike) -> dict[str, Any]:
    path = Path(meta_dir) / "stat.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: stat.json not found (expected in the meta info folder; set data.meta_info, which "
            "defaults to <dataset_root>_meta_info/<dataset_name>)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def action_bounds(
    stats: dict[str, Any], action_key: str, path: PathLike = "stat.json"
) -> tuple[np.ndarray, np.ndarray]:
    """(p01, p99) for ``action_key`` ("states" -> state_01/99, "actions" -> action_01/99)."""
    prefix = "state" if action_key == "states" else "action"
    keys = (f"{prefix}_01", f"{prefix}_99")
    missing = [k for k in keys if k not in stats]
    if missing:
        raise KeyError(f"{path}: no {missing} for action_key={action_key!r}")
    return np.asarray(stats[keys[0]], dtype=np.float64), np.asarray(stats[keys[1]], dtype=np.float64)


def normalise_actions(x: np.ndarray | torch.Tensor, p01: Any, p99: Any) -> np.ndarray | torch.Tensor:
    """``2 * (x - p01) / (p99 - p01 + 1e-8) - 1`` clipped to [-1, 1] (numpy or torch, like ``x``)."""
    if isinstance(x, torch.Tensor):
        lo = torch.as_tensor(np.asarray(p01), dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(np.asarray(p99), dtype=x.dtype, device=x.device)
        return (2 * (x - lo) / (hi - lo + EPS) - 1).clamp(-1.0, 1.0)
    lo, hi = np.asarray(p01), np.asarray(p99)
    return np.clip(2 * (np.asarray(x) - lo) / (hi - lo + EPS) - 1, -1.0, 1.0)


def denormalise_actions(x: np.ndarray | torch.Tensor, p01: Any, p99: Any) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`normalise_actions` inside the clip range: ``(x + 1) / 2 * (p99 - p01) + p01``."""
    if isinstance(x, torch.Tensor):
        lo = torch.as_tensor(np.asarray(p01), dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(np.asarray(p99), dtype=x.dtype, device=x.device)
        return (x + 1) / 2 * (hi - lo) + lo
    lo, hi = np.asarray(p01), np.asarray(p99)
    return (np.asarray(x) + 1) / 2 * (hi - lo) + lo


def window_frame_ids(
    t: int, length: int, num_history: int, num_frames: int, history_stride: int = 1, frame_stride: int = 1
) -> list[int]:
    """History, current and future frame ids around ``t``, clipped to ``[0, length - 1]``."""
    ids = [t - i * history_stride for i in range(num_history, 0, -1)]
    ids.append(t)
    ids.extend(t + i * frame_stride for i in range(1, num_frames))
    return [min(max(i, 0), length - 1) for i in ids]


# ------------------------------------------------------------------------------------------- dataset


class CtrlWorldDataset(Dataset):
    """Samples of ``<meta_info>/<split>_sample.json`` as Ctrl-World training items (module docstring).

    With ``on_bad_sample="skip"`` a sample whose files are missing or inconsistent is logged,
    recorded in ``skipped`` and replaced by the next usable sample (its episode is not tried again
    in this process); with "error" it raises :class:`BadCtrlWorldSample` naming the file.
    """

    def __init__(self, cfg: CtrlWorldDataConfig) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.root = Path(cfg.dataset_root)
        self.meta_dir = meta_info_path(cfg)
        self.layout = detect_layout(self.root, cfg.split, cfg.layout)
        self.views = list(cfg.views)
        self.stats = load_stats(self.meta_dir)
        self.p01, self.p99 = action_bounds(self.stats, cfg.action_key, self.meta_dir / "stat.json")
        samples_path = self.meta_dir / f"{cfg.split}_sample.json"
        if not samples_path.is_file():
            raise FileNotFoundError(f"{samples_path}: sample list for split {cfg.split!r} not found")
        with open(samples_path, encoding="utf-8") as f:
            samples = json.load(f)
        if not isinstance(samples, list) or not all(
            isinstance(s, dict) and "episode_id" in s and s.get("frame_ids") for s in samples
        ):
            raise ValueError(f"{samples_path}: expected a list of {{'episode_id', 'frame_ids'}} objects")
        if not samples:
            raise ValueError(f"{samples_path}: no samples in split {cfg.split!r}")
        self.samples: list[dict[str, Any]] = samples
        self.skipped: Skipped = []
        self._failed: set[str] = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def sequence_length(self) -> int:
        return self.cfg.num_history + self.cfg.num_frames

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        for attempt in range(n):
            sample = self.samples[(index + attempt) % n]
            if str(sample["episode_id"]) in self._failed:
                continue
            try:
                return self._load(sample)
            except BadCtrlWorldSample as err:
                if self.cfg.on_bad_sample == "error":
                    raise
                logger.warning("skipping %s", err)
                self._failed.add(err.episode)
                self.skipped.append((err.episode, err.problem))
        raise RuntimeError(f"{self.root}: no sample could be loaded ({len(self.skipped)} skipped)")

    def _load(self, sample: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        episode = sample["episode_id"]
        files = episode_files(self.root, self.layout, c.split, episode, self.views)
        latents = [load_latent(episode, p) for p in files.latents]
        values = vectors(files, c.action_key)
        if values.shape[1] != self.p01.shape[0]:
            raise BadCtrlWorldSample(
                episode, files.annotations[0],
                f"{c.action_key!r} has {values.shape[1]} dims, stat.json {self.p01.shape[0]}",
            )  # fmt: skip
        length = episode_length(files, latents, values)
        t = int(sample["frame_ids"][0])
        ids = window_frame_ids(t, length, c.num_history, c.num_frames, c.history_stride, c.frame_stride)
        index = torch.tensor(ids, dtype=torch.long)
        latent = stack_view_latents(files, [lat[index] for lat in latents])
        action = normalise_actions(values[ids], self.p01, self.p99)
        return {
            keys.LATENTS: latent.contiguous(),
            keys.ACTIONS: torch.from_numpy(np.asarray(action, dtype=np.float32)),
            keys.PROMPT: instruction(files),
            keys.EPISODE_ID: episode,
            keys.FRAME_IDS: index,
        }
