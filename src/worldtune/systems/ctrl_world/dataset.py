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

import functools
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
from worldtune.data.errors import DataError
from worldtune.utils.logging import get_logger

logger = get_logger("worldtune.systems.ctrl_world.dataset")

PathLike = str | os.PathLike[str]
LAYOUTS = ("auto", "flexiv", "droid")
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


class BadCtrlWorldSample(DataError):
    """An episode cannot be used; the message names the file and the problem."""

    def __init__(self, episode: Any, path: PathLike, problem: str) -> None:
        super().__init__(path, problem)
        self.episode = str(episode)

    def _constructor_args(self) -> tuple[Any, ...]:
        return self.episode, self.path, self.problem


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


def detect_layout(dataset_root: PathLike, split: str = "train", layout: str = "auto") -> str:
    root = Path(dataset_root)
    if layout != "auto":
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        return layout
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset_root does not exist")
    if (root / "annotation").is_dir():
        return "droid"
    return "flexiv"


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


# ------------------------------------------------------------------------------------- file access


@functools.lru_cache(maxsize=256)
def _read_json_cached(path: str, mtime_ns: int, size: int) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_annotation(episode: Any, path: Path) -> dict[str, Any]:
    """Parsed annotation (cached per process; do not modify it)."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise BadCtrlWorldSample(episode, path, "annotation file not found") from e
    try:
        ann = _read_json_cached(str(path), st.st_mtime_ns, st.st_size)
    except (OSError, json.JSONDecodeError) as e:
        raise BadCtrlWorldSample(episode, path, f"unreadable annotation ({e})") from e
    if not isinstance(ann, dict):
        raise BadCtrlWorldSample(episode, path, "annotation is not a JSON object")
    return ann


def _load_latent(episode: Any, path: Path) -> torch.Tensor:
    if not path.is_file():
        raise BadCtrlWorldSample(episode, path, "latent file not found")
    try:
        latent = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        try:  # files from the legacy (non-zip) torch.save format cannot be memory-mapped
            latent = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BadCtrlWorldSample(episode, path, f"unreadable latent file ({e})") from e
    except Exception as e:
        raise BadCtrlWorldSample(episode, path, f"unreadable latent file ({e})") from e
    if not isinstance(latent, torch.Tensor) or latent.ndim != 4:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise BadCtrlWorldSample(episode, path, f"latent must be a tensor [T, C, h, w], got {shape}")
    return latent


@dataclass
class _EpisodeFiles:
    """Where one episode's pieces are: one annotation per view (flexiv) or one shared (droid)."""

    episode: Any
    annotations: list[Path]  # per requested view
    annotation: dict[str, Any]  # the first view's (flexiv) / the episode's (droid)
    latents: list[Path]  # per requested view


def _episode_files(root: Path, layout: str, split: str, episode: Any, views: list[int]) -> _EpisodeFiles:
    if layout == "droid":
        path = root / "annotation" / split / f"{episode}.json"
        ann = _read_annotation(episode, path)
        entries = ann.get("latent_videos")
        if not isinstance(entries, list):
            raise BadCtrlWorldSample(episode, path, "annotation has no 'latent_videos' list")
        latents = []
        for v in views:
            if v >= len(entries) or "latent_video_path" not in entries[v]:
                raise BadCtrlWorldSample(episode, path, f"no latent_videos[{v}].latent_video_path (view {v})")
            latents.append(root / entries[v]["latent_video_path"])
        return _EpisodeFiles(episode, [path] * len(views), ann, latents)
    ep_dir = root / str(episode)
    paths, latents = [], []
    first: dict[str, Any] | None = None
    for v in views:
        path = ep_dir / "annotation" / f"{v}.json"
        ann = _read_annotation(episode, path)
        entries = ann.get("latent_videos")
        if not isinstance(entries, list) or not entries or "latent_video_path" not in entries[0]:
            raise BadCtrlWorldSample(episode, path, "annotation has no latent_videos[0].latent_video_path")
        paths.append(path)
        latents.append(ep_dir / entries[0]["latent_video_path"])
        first = first if first is not None else ann
    assert first is not None
    return _EpisodeFiles(episode, paths, first, latents)


def _vectors(files: _EpisodeFiles, key: str) -> np.ndarray:
    path = files.annotations[0]
    if key not in files.annotation:
        raise BadCtrlWorldSample(files.episode, path, f"annotation has no {key!r}")
    try:
        values = np.asarray(files.annotation[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadCtrlWorldSample(files.episode, path, f"{key!r} is not a numeric [T, D] list ({e})") from e
    if values.ndim != 2:
        raise BadCtrlWorldSample(files.episode, path, f"{key!r} must be [T, D], got shape {values.shape}")
    return values


def _text(files: _EpisodeFiles) -> str:
    texts = files.annotation.get("texts") or [""]
    return str(texts[0])


def _stack_views(files: _EpisodeFiles, latents: list[torch.Tensor]) -> torch.Tensor:
    ref = latents[0]
    for path, lat in zip(files.latents, latents, strict=True):
        if lat.shape[1] != ref.shape[1] or lat.shape[3] != ref.shape[3]:
            raise BadCtrlWorldSample(
                files.episode, path,
                f"latent [T, C, h, w] {tuple(lat.shape)} does not stack with {tuple(ref.shape)} (C and w must match)",
            )  # fmt: skip
    return torch.cat(latents, dim=2).float()


def _episode_length(files: _EpisodeFiles, latents: list[torch.Tensor], values: np.ndarray) -> int:
    lengths = {str(p): lat.shape[0] for p, lat in zip(files.latents, latents, strict=True)}
    video_length = files.annotation.get("video_length")
    if len(set(lengths.values())) != 1:
        raise BadCtrlWorldSample(
            files.episode, files.latents[0], f"views have different frame counts {lengths}"
        )
    n = next(iter(lengths.values()))
    if n < 1:
        raise BadCtrlWorldSample(files.episode, files.latents[0], "latent video has no frames")
    if video_length is not None and int(video_length) != n:
        raise BadCtrlWorldSample(
            files.episode,
            files.latents[0],
            f"{n} latent frames but video_length {video_length} in {files.annotations[0]}",
        )
    if values.shape[0] != n:
        raise BadCtrlWorldSample(
            files.episode, files.annotations[0], f"{values.shape[0]} state/action rows for {n} latent frames"
        )
    return n


# ------------------------------------------------------------------------------------------ episodes


@dataclass
class CtrlWorldEpisode:
    """A whole episode, for rollouts: all frames, views stacked along height."""

    episode_id: Any
    latents: torch.Tensor  # float [T, C, V*h, w]
    states: np.ndarray  # [T, D]
    actions: np.ndarray | None  # [T, D], None when the annotation has no "actions" (upstream DROID)
    text: str
    annotation: dict[str, Any]  # the (first view's) annotation


def load_episode(
    dataset_root: PathLike,
    episode_id: Any,
    views: list[int] | tuple[int, ...] = (0, 1, 2),
    layout: str = "auto",
    *,
    split: str = "train",
) -> CtrlWorldEpisode:
    """All frames of one episode: latents ``[T, C, V*h, w]``, states / actions ``[T, D]`` and the text.

    ``split`` only matters for the droid layout (``annotation/<split>/<ep>.json``).
    """
    root = Path(dataset_root)
    layout = detect_layout(root, split, layout)
    views = list(views)
    files = _episode_files(root, layout, split, episode_id, views)
    latents = [_load_latent(episode_id, p) for p in files.latents]
    states = _vectors(files, "states")
    actions = _vectors(files, "actions") if "actions" in files.annotation else None
    _episode_length(files, latents, states)
    return CtrlWorldEpisode(
        episode_id, _stack_views(files, latents), states, actions, _text(files), files.annotation
    )


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
        files = _episode_files(self.root, self.layout, c.split, episode, self.views)
        latents = [_load_latent(episode, p) for p in files.latents]
        values = _vectors(files, c.action_key)
        if values.shape[1] != self.p01.shape[0]:
            raise BadCtrlWorldSample(
                episode, files.annotations[0],
                f"{c.action_key!r} has {values.shape[1]} dims, stat.json {self.p01.shape[0]}",
            )  # fmt: skip
        length = _episode_length(files, latents, values)
        t = int(sample["frame_ids"][0])
        ids = window_frame_ids(t, length, c.num_history, c.num_frames, c.history_stride, c.frame_stride)
        index = torch.tensor(ids, dtype=torch.long)
        latent = _stack_views(files, [lat[index] for lat in latents])
        action = normalise_actions(values[ids], self.p01, self.p99)
        return {
            keys.LATENTS: latent.contiguous(),
            keys.ACTIONS: torch.from_numpy(np.asarray(action, dtype=np.float32)),
            keys.PROMPT: _text(files),
            keys.EPISODE_ID: episode,
            keys.FRAME_IDS: index,
        }
