"""Training clips from robot episodes (Vidar seed layout): video, prompt and per-frame actions.

An item is ``{"video": float [3, T, H, W] in [-1, 1], "prompt": str, "actions": float32 [T, action_dim],
"episode": str, "start": int, "frame_indices": long [T], "key": str}``. ``frame_indices`` are source
frames (at the file's fps) and ``actions`` are the rows of ``actions.npy`` at those frames.

Several cameras are tiled into one frame: ``camera_layout`` "row" puts them side by side, "column"
stacks them, "grid" fills rows of two (an odd last tile stays black). The frame is split evenly, so
with ``rows x cols`` tiles each tile is ``height/rows x width/cols`` (both must divide evenly); each
camera is resized to cover its tile and centre-cropped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from worldtune.data.formats.episode_files import (
    BadEpisode,
    EpisodeInfo,
    Skipped,
    check_action_dim,
    check_clip,
    collect,
    open_actions,
    read_instruction,
    record_skip,
)
from worldtune.data.formats.episode_index import load_episodes
from worldtune.data.video import (
    VideoError,
    max_clip_start,
    read_frames,
    resample_indices,
    resize_center_crop,
    valid_num_frames,
)

LAYOUTS = ("row", "column", "grid")


@dataclass
class EpisodeDataConfig:
    """Where the episodes are and how clips are cut from them (an OmegaConf structured section)."""

    data_dir: str = MISSING  # DATA_DIR holding episodes/ (and optionally manifest.json)
    manifest_path: str | None = None  # None: DATA_DIR/manifest.json if present, else scan episodes/
    split: str = "train"  # "train" | "val" | "all"
    num_frames: int = 81  # frames per clip, 4k+1 (Wan VAE)
    fps: float = 10.0  # clip frame rate; frames are resampled from each file's own fps
    height: int = 640  # clip size, multiples of stride
    width: int = 736
    stride: int = 32  # spatial downsampling of the model (VAE x patch)
    cameras: list[str] = field(default_factory=list)  # []: video.mp4; else video_<cam>.mp4, tiled
    camera_layout: str = "row"  # "row" | "column" | "grid" (2 per row)
    clip_sampling: str = "fixed"  # "fixed": starts 0, s, 2s, ... (cacheable); "random": 1 per episode
    clip_stride: int | None = None  # source frames between fixed starts; None: the clip's span
    action_dim: int | None = 14  # width of actions.npy; None: actions are neither required nor loaded
    on_bad_sample: str = "error"  # "error" | "skip" (log, count, exclude)


def tile_grid(num_cameras: int, layout: str) -> tuple[int, int]:
    """(rows, cols) of the tiling of ``num_cameras`` videos (1 camera: one tile)."""
    n = max(num_cameras, 1)
    if layout == "row":
        return 1, n
    if layout == "column":
        return n, 1
    if layout == "grid":
        return math.ceil(n / 2), min(n, 2)
    raise ValueError(f"camera_layout must be one of {LAYOUTS}, got {layout!r}")


def check_config(cfg: EpisodeDataConfig) -> None:
    """Reject settings that cannot work before any file is opened; errors name the field."""

    def bad(name: str, why: str) -> ValueError:
        return ValueError(f"EpisodeDataConfig.{name}={getattr(cfg, name)!r}: {why}")

    if cfg.split not in ("train", "val", "all"):
        raise bad("split", "must be 'train', 'val' or 'all'")
    if not valid_num_frames(cfg.num_frames):
        raise bad("num_frames", "must be 4k+1 (1, 5, 9, ..., 81)")
    if not (math.isfinite(cfg.fps) and cfg.fps > 0):
        raise bad("fps", "must be positive")
    if cfg.stride < 1:
        raise bad("stride", "must be >= 1")
    for name in ("height", "width"):
        if getattr(cfg, name) < 1 or getattr(cfg, name) % cfg.stride:
            raise bad(name, f"must be a positive multiple of stride={cfg.stride}")
    if cfg.camera_layout not in LAYOUTS:
        raise bad("camera_layout", f"must be one of {LAYOUTS}")
    if len(set(cfg.cameras)) != len(cfg.cameras) or not all(cfg.cameras):
        raise bad("cameras", "names must be distinct and non-empty")
    rows, cols = tile_grid(len(cfg.cameras), cfg.camera_layout)
    if cfg.height % rows or cfg.width % cols:
        raise bad("cameras", f"{rows}x{cols} tiles must split {cfg.height}x{cfg.width} evenly")
    if cfg.clip_sampling not in ("fixed", "random"):
        raise bad("clip_sampling", "must be 'fixed' or 'random'")
    if cfg.clip_stride is not None and cfg.clip_stride < 1:
        raise bad("clip_stride", "must be >= 1 or null")
    if cfg.action_dim is not None and cfg.action_dim < 1:
        raise bad("action_dim", "must be >= 1 or null")
    if cfg.on_bad_sample not in ("error", "skip"):
        raise bad("on_bad_sample", "must be 'error' or 'skip'")


@functools.lru_cache(maxsize=1 << 16)
def _file_sha1(path: str, size: int, mtime_ns: int, inode: int) -> str:
    # Keyed on stat facts so a rewritten file is hashed again; each file is read once otherwise.
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes, memoised per (path, size, mtime, inode)."""
    st = path.stat()
    return _file_sha1(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


class EpisodeClipDataset(Dataset):
    """Clips of ``num_frames`` frames at ``fps`` from checked episodes (see the module docstring).

    Episodes are checked at construction without decoding. ``on_bad_sample="skip"`` logs, counts in
    ``skipped`` and excludes bad episodes; a clip whose video fails to decode only in ``__getitem__``
    is then replaced by the next loadable clip (index+1, index+2, ... modulo ``len``), so the result
    for an index is still deterministic. ``skipped`` grows in the process that loaded the item (each
    DataLoader worker keeps its own). With "error" the first problem raises :class:`BadEpisode`.
    """

    def __init__(self, cfg: EpisodeDataConfig) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.cameras = tuple(cfg.cameras)
        self.skipped: Skipped = []
        skipped = self.skipped if cfg.on_bad_sample == "skip" else None
        infos = load_episodes(cfg.data_dir, cfg.manifest_path, cfg.split, self.cameras, skipped=skipped)
        self.episodes: list[EpisodeInfo] = collect(infos, self._check, skipped)
        if not self.episodes:
            raise ValueError(
                f"{cfg.data_dir}: no usable episodes in split {cfg.split!r} ({len(self.skipped)} skipped)"
            )
        self._clips = self._enumerate_clips()
        self._failed: set[int] = set()  # episodes that failed to decode in this process

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _check(self, info: EpisodeInfo) -> EpisodeInfo:
        check_clip(info, self.cfg.num_frames, self.cfg.fps)
        check_action_dim(info, self.cfg.action_dim)
        return info

    def _last_start(self, info: EpisodeInfo) -> int:
        return max_clip_start(info.num_frames, info.fps, self.cfg.fps, self.cfg.num_frames)

    def _enumerate_clips(self) -> list[tuple[int, int | None]]:
        """(episode index, start) per clip; start None means "drawn at load time" (random sampling)."""
        if self.cfg.clip_sampling == "random":
            return [(e, None) for e in range(len(self.episodes))]
        clips: list[tuple[int, int | None]] = []
        for e, info in enumerate(self.episodes):
            span = resample_indices(info.num_frames, info.fps, self.cfg.fps, self.cfg.num_frames)[-1] + 1
            clips.extend((e, s) for s in range(0, self._last_start(info) + 1, self.cfg.clip_stride or span))
        return clips

    def __len__(self) -> int:
        return len(self._clips)

    def clip_settings(self) -> dict[str, Any]:
        """The transform settings that determine a clip's pixels (part of every clip key)."""
        c = self.cfg
        return {
            "num_frames": c.num_frames, "fps": float(c.fps), "height": c.height, "width": c.width,
            "stride": c.stride, "cameras": list(self.cameras), "camera_layout": c.camera_layout,
        }  # fmt: skip

    def _key(self, info: EpisodeInfo, start: int) -> str:
        content = {"videos": [file_sha1(p) for p in info.video_paths()], "settings": self.clip_settings()}
        digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
        return f"{info.name}@{start}:{digest}"

    def clip_key(self, index: int, start: int | None = None) -> str:
        """``"<episode>@<start>:<hash of video bytes + settings>"`` without decoding anything.

        With random sampling the start is drawn per item, so it must be passed as ``start``.
        """
        e, fixed = self._clips[index]
        if start is None:
            if fixed is None:
                raise ValueError("clip_sampling='random' draws starts per item: pass start= to clip_key")
            start = fixed
        return self._key(self.episodes[e], start)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"clip index {index} out of range for {n} clips")
        for attempt in range(n):
            e, start = self._clips[(index + attempt) % n]
            if e in self._failed:
                continue
            try:
                return self._load(self.episodes[e], start)
            except BadEpisode as err:
                if self.cfg.on_bad_sample == "error":
                    raise
                self._failed.add(e)
                record_skip(self.skipped, err)
        raise RuntimeError(f"{self.cfg.data_dir}: no clip could be loaded ({len(self.skipped)} skipped)")

    def item_metadata(self, index: int) -> dict[str, Any]:
        """Everything of item ``index`` except ``video``, without decoding (for latent caches)."""
        e, start = self._clips[index]
        return self._metadata(self.episodes[e], start)

    def _metadata(self, info: EpisodeInfo, start: int | None) -> dict[str, Any]:
        if start is None:
            # The global torch RNG, which the trainer seeds per item (exact resume).
            start = int(torch.randint(0, self._last_start(info) + 1, ()).item())
        indices = resample_indices(info.num_frames, info.fps, self.cfg.fps, self.cfg.num_frames, start)
        item: dict[str, Any] = {
            "prompt": read_instruction(info.dir),
            "episode": info.name,
            "start": start,
            "frame_indices": torch.tensor(indices, dtype=torch.long),
            "key": self._key(info, start),
        }
        if self.cfg.action_dim is not None:
            item["actions"] = self._actions(info, indices)
        return item

    def _load(self, info: EpisodeInfo, start: int | None) -> dict[str, Any]:
        item = self._metadata(info, start)
        return {"video": self._decode(info, item["frame_indices"].tolist()), **item}

    def _actions(self, info: EpisodeInfo, indices: list[int]) -> torch.Tensor:
        actions = open_actions(info.dir)
        if actions.ndim != 2 or actions.shape[0] <= max(indices):
            raise BadEpisode(info.dir, f"actions.npy changed since it was checked (shape {actions.shape})")
        return torch.from_numpy(np.asarray(actions[indices], dtype=np.float32))

    def _decode(self, info: EpisodeInfo, indices: list[int]) -> torch.Tensor:
        """Decode every camera at ``indices`` and tile them into ``[3, T, height, width]``."""
        c = self.cfg
        rows, cols = tile_grid(len(self.cameras), c.camera_layout)
        tile_h, tile_w = c.height // rows, c.width // cols
        paths = info.video_paths()
        if len(paths) == 1:  # one camera: the tile is the frame, no canvas to fill
            return self._tile(info, paths[0], indices, tile_h, tile_w).permute(1, 0, 2, 3).contiguous()
        canvas = torch.full((len(indices), 3, c.height, c.width), -1.0)  # unused grid tiles stay black
        for k, path in enumerate(paths):
            r, col = divmod(k, cols)
            tile = self._tile(info, path, indices, tile_h, tile_w)
            canvas[:, :, r * tile_h : (r + 1) * tile_h, col * tile_w : (col + 1) * tile_w] = tile
        return canvas.permute(1, 0, 2, 3).contiguous()

    @staticmethod
    def _tile(info: EpisodeInfo, path: Path, indices: list[int], height: int, width: int) -> torch.Tensor:
        """One camera's frames as float [T, 3, height, width] in [-1, 1]."""
        try:
            frames = read_frames(path, indices)
        except VideoError as e:
            raise BadEpisode(info.dir, f"cannot decode {path.name} ({e})") from e
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
        # Resize in [0, 255], then map to [-1, 1] once on the smaller tile; clamp the interpolation's
        # float overshoot.
        tile = resize_center_crop(pixels, height, width)
        return tile.mul_(1 / 127.5).sub_(1.0).clamp_(-1.0, 1.0)


def collate_episodes(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; keep strings, ints and tensors whose shapes differ from
    item to item (cached prompt embeddings `[L_i, dim]`) as lists."""
    if not items:
        raise ValueError("collate_episodes needs at least one item")
    keys = list(items[0])
    if any(item.keys() != items[0].keys() for item in items):
        raise ValueError(f"items have different keys: {[sorted(item) for item in items]}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        same_shape = isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values)
        batch[key] = torch.stack(values) if same_shape else values
    return batch
