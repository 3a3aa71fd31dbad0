"""One robot episode directory of the Vidar seed layout, checked file by file.

```
DATA_DIR/episodes/<ep>/video.mp4          one camera (or video_<cam>.mp4 per camera)
DATA_DIR/episodes/<ep>/actions.npy        (T, action_dim) numbers, one row per video frame
DATA_DIR/episodes/<ep>/instruction.txt    the task in words (the prompt)
```

Every problem is a :class:`BadEpisode` naming the episode directory. Checks never decode video:
frame counts come from the container headers (:func:`probe_video`), actions from the ``.npy`` header.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from worldtune.data.errors import DataError
from worldtune.data.video import VideoError, probe_video, resample_indices

logger = logging.getLogger("worldtune")

EPISODES_DIR = "episodes"
VIDEO_FILE = "video.mp4"
ACTIONS_FILE = "actions.npy"
INSTRUCTION_FILE = "instruction.txt"

Skipped = list[tuple[str, str]]  # (episode name, problem), in the order they were found
T = TypeVar("T")
R = TypeVar("R")


class BadEpisode(DataError):
    """An episode cannot be used; the message names its directory and the problem."""

    def __init__(self, ep_dir: str | Path, problem: str) -> None:
        super().__init__(ep_dir, problem)
        self.ep_dir = self.path
        self.episode = self.ep_dir.name


@dataclass(frozen=True)
class EpisodeInfo:
    """What is known about an episode without decoding it."""

    name: str
    dir: Path
    num_frames: int  # video frames (all cameras agree)
    fps: float  # the video files' frame rate
    cameras: tuple[str, ...] = ()  # () = the single video.mp4; else video_<cam>.mp4 per camera
    split: str | None = None  # "train" | "val" (None: unassigned)
    action_dim: int | None = None  # None: the episode has no actions.npy

    def video_paths(self) -> list[Path]:
        """The video file of each camera, in camera order."""
        return video_paths(self.dir, self.cameras)


def video_paths(ep_dir: Path, cameras: Sequence[str]) -> list[Path]:
    """``video.mp4`` when ``cameras`` is empty, else ``video_<cam>.mp4`` for each camera."""
    if not cameras:
        return [ep_dir / VIDEO_FILE]
    return [ep_dir / f"video_{cam}.mp4" for cam in cameras]


def detect_cameras(ep_dir: Path) -> tuple[str, ...]:
    """``()`` when ``video.mp4`` exists, else the sorted ``<cam>`` names of ``video_<cam>.mp4`` files."""
    if (ep_dir / VIDEO_FILE).exists():
        return ()
    return tuple(sorted(p.name[len("video_") : -len(".mp4")] for p in ep_dir.glob("video_?*.mp4")))


def _require_videos(ep_dir: Path, cameras: Sequence[str]) -> list[Path]:
    paths = video_paths(ep_dir, cameras)
    for cam, path in zip(cameras or [None], paths, strict=True):
        if not path.is_file():
            which = f" (camera {cam!r})" if cam is not None else ""
            raise BadEpisode(ep_dir, f"missing video file {path.name}{which}")
    return paths


def _probe(ep_dir: Path, cameras: Sequence[str]) -> tuple[int, float]:
    """Frame count and fps shared by all camera videos (from headers, no decoding)."""
    found: list[tuple[str, int, float]] = []
    for path in _require_videos(ep_dir, cameras):
        try:
            info = probe_video(path)
        except VideoError as e:
            raise BadEpisode(ep_dir, f"unreadable video {path.name} ({e})") from e
        found.append((path.name, info.num_frames, info.fps))
    _, frames, fps = found[0]
    # Cameras are tiled frame by frame, so they must be in lockstep.
    if any(n != frames or not math.isclose(f, fps, rel_tol=1e-6) for _, n, f in found):
        listing = ", ".join(f"{name}: {n} frames at {f:g} fps" for name, n, f in found)
        raise BadEpisode(ep_dir, f"camera videos disagree on frame count or fps ({listing})")
    return frames, fps


def read_instruction(ep_dir: Path) -> str:
    """The stripped text of ``instruction.txt``; missing, unreadable or blank is a :class:`BadEpisode`."""
    path = ep_dir / INSTRUCTION_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as e:
        raise BadEpisode(ep_dir, f"missing {INSTRUCTION_FILE}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise BadEpisode(ep_dir, f"cannot read {INSTRUCTION_FILE} ({e})") from e
    if not text:
        raise BadEpisode(ep_dir, f"empty {INSTRUCTION_FILE} (only whitespace)")
    return text


def open_actions(ep_dir: Path) -> np.ndarray:
    """``actions.npy`` memory-mapped (only the rows indexed later are read)."""
    path = ep_dir / ACTIONS_FILE
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
        raise BadEpisode(ep_dir, f"missing {ACTIONS_FILE}") from e
    except (OSError, ValueError) as e:
        raise BadEpisode(ep_dir, f"cannot read {ACTIONS_FILE} ({e})") from e


def _check_actions(ep_dir: Path, num_frames: int) -> int | None:
    """action_dim of ``actions.npy`` (None when absent); it must hold one row per video frame."""
    if not (ep_dir / ACTIONS_FILE).exists():
        return None
    actions = open_actions(ep_dir)
    shape, dtype = actions.shape, actions.dtype
    del actions  # drop the memory map now
    if len(shape) != 2:
        raise BadEpisode(ep_dir, f"{ACTIONS_FILE} must be 2-D (T, action_dim), got shape {shape}")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise BadEpisode(ep_dir, f"{ACTIONS_FILE} must hold numbers, got dtype {dtype}")
    # Exactly one action per frame: the clip's actions are the rows at its frame indices.
    if shape[0] != num_frames:
        raise BadEpisode(
            ep_dir,
            f"{ACTIONS_FILE} has {shape[0]} rows but the video has {num_frames} frames "
            "(one action per video frame is required)",
        )
    return int(shape[1])


def _require_dir(ep_dir: Path) -> None:
    if not ep_dir.is_dir():
        raise BadEpisode(ep_dir, "episode directory does not exist")


def inspect_episode(
    ep_dir: str | Path, cameras: Sequence[str] | None = None, split: str | None = None
) -> EpisodeInfo:
    """Check an episode's files and probe its videos. ``cameras=None`` detects them from the files."""
    ep_dir = Path(ep_dir)
    _require_dir(ep_dir)
    cams = detect_cameras(ep_dir) if cameras is None else tuple(cameras)
    num_frames, fps = _probe(ep_dir, cams)
    read_instruction(ep_dir)
    action_dim = _check_actions(ep_dir, num_frames)
    return EpisodeInfo(ep_dir.name, ep_dir, num_frames, fps, cams, split, action_dim)


def verify_listed(info: EpisodeInfo, cameras: Sequence[str] | None = None) -> EpisodeInfo:
    """Check a manifest entry's files, trusting its frame count unless other cameras are asked for."""
    _require_dir(info.dir)
    cams = info.cameras if cameras is None else tuple(cameras)
    # The manifest's count holds for every camera it lists; any other camera must be probed.
    covered = (not cams and not info.cameras) or (bool(cams) and set(cams) <= set(info.cameras))
    if not covered:
        return inspect_episode(info.dir, cams, info.split)
    _require_videos(info.dir, cams)
    read_instruction(info.dir)
    return replace(info, cameras=cams, action_dim=_check_actions(info.dir, info.num_frames))


def check_clip(info: EpisodeInfo, num_frames: int, fps: float) -> None:
    """The episode must hold at least one clip of ``num_frames`` frames at ``fps``."""
    try:
        resample_indices(info.num_frames, info.fps, fps, num_frames)
    except ValueError as e:
        raise BadEpisode(info.dir, f"too short: {e} (video at {info.fps:g} fps)") from e


def check_action_dim(info: EpisodeInfo, action_dim: int | None) -> None:
    """With ``action_dim`` set, the episode must have actions of that width."""
    if action_dim is None:
        return
    if info.action_dim is None:
        raise BadEpisode(info.dir, f"missing {ACTIONS_FILE} (actions of dim {action_dim} are required)")
    if info.action_dim != action_dim:
        raise BadEpisode(info.dir, f"{ACTIONS_FILE} has action_dim {info.action_dim}, expected {action_dim}")


def record_skip(skipped: Skipped, err: BadEpisode) -> None:
    """Log a skipped episode and remember it for the end-of-epoch report."""
    logger.warning("skipping %s", err)
    skipped.append((err.episode, err.problem))


def collect(items: Iterable[T], check: Callable[[T], R], skipped: Skipped | None) -> list[R]:
    """``check`` each item; a :class:`BadEpisode` raises when ``skipped`` is None, else is recorded."""
    out: list[R] = []
    for item in items:
        try:
            out.append(check(item))
        except BadEpisode as err:
            if skipped is None:
                raise
            record_skip(skipped, err)
    return out
