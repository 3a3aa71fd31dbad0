"""One converted Ctrl-World episode on disk: its annotations and latent files (flexiv or droid layout,
see `dataset.py`), read and checked; `load_episode` gives a whole episode for rollouts."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.data.errors import DataError

PathLike = str | os.PathLike[str]
LAYOUTS = ("auto", "flexiv", "droid")


class BadCtrlWorldSample(DataError):
    """An episode cannot be used; the message names the file and the problem."""

    def __init__(self, episode: Any, path: PathLike, problem: str) -> None:
        super().__init__(path, problem)
        self.episode = str(episode)

    def _constructor_args(self) -> tuple[Any, ...]:
        return self.episode, self.path, self.problem


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


def load_latent(episode: Any, path: Path) -> torch.Tensor:
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
class EpisodeFiles:
    """Where one episode's pieces are: one annotation per view (flexiv) or one shared (droid)."""

    episode: Any
    annotations: list[Path]  # per requested view
    annotation: dict[str, Any]  # the first view's (flexiv) / the episode's (droid)
    latents: list[Path]  # per requested view


def episode_files(root: Path, layout: str, split: str, episode: Any, views: list[int]) -> EpisodeFiles:
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
        return EpisodeFiles(episode, [path] * len(views), ann, latents)
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
    return EpisodeFiles(episode, paths, first, latents)


def camera_names(files: EpisodeFiles, views: list[int]) -> list[str]:
    """Each view's camera name (the converter records it as "camera"), else "view <n>"."""
    names = []
    for view, path in zip(views, files.annotations, strict=True):
        camera = _read_annotation(files.episode, path).get("camera") if files.annotations.count(path) == 1 else None
        names.append(str(camera) if camera else f"view {view}")
    return names


def vectors(files: EpisodeFiles, key: str) -> np.ndarray:
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


def instruction(files: EpisodeFiles) -> str:
    texts = files.annotation.get("texts") or [""]
    return str(texts[0])


def stack_view_latents(files: EpisodeFiles, latents: list[torch.Tensor]) -> torch.Tensor:
    ref = latents[0]
    for path, lat in zip(files.latents, latents, strict=True):
        if lat.shape[1] != ref.shape[1] or lat.shape[3] != ref.shape[3]:
            raise BadCtrlWorldSample(
                files.episode, path,
                f"latent [T, C, h, w] {tuple(lat.shape)} does not stack with {tuple(ref.shape)} (C and w must match)",
            )  # fmt: skip
    return torch.cat(latents, dim=2).float()


def episode_length(files: EpisodeFiles, latents: list[torch.Tensor], values: np.ndarray) -> int:
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
    views: list[str] = dataclasses.field(default_factory=list)  # camera name of each view, in stacking order


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
    files = episode_files(root, layout, split, episode_id, views)
    latents = [load_latent(episode_id, p) for p in files.latents]
    states = vectors(files, "states")
    actions = vectors(files, "actions") if "actions" in files.annotation else None
    episode_length(files, latents, states)
    return CtrlWorldEpisode(
        episode_id, stack_view_latents(files, latents), states, actions, instruction(files), files.annotation,
        camera_names(files, views),
    )
