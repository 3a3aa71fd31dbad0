"""VACE-E's episodes (seed `1-vace-e.md`): target, control and mask videos, robot trajectories, the
embodiment image and the task prompt, cut to one clip of frames.

```
<dataset_base_path>/<task_folder>/episode_<k>/
    episode_<k>.mp4                          the target video
    episode_<k>_hands_masked.mp4             VACE control (hands masked out)
    episode_<k>_hands_mask.mp4               VACE mask (white where the hands are)
    episode_<k>_hand_trajectories.hdf5       optional: hands -> [T, 20]
    episode_<k>_object_trajectories.hdf5     optional: objects -> [T, N, 9]
    end_effector_*.jpg or *_hands_only.jpg   the embodiment image (in the episode or the task folder)
```

An item: `video`, `control` `[3, T, H, W]` in [-1, 1]; `mask` `[1, T, H, W]` in [0, 1] (the original
left it in [-1, 1] in training and [0, 1] at inference); `prompt`; `hand_motion` `[T, 20]`,
`objects` `[T, N, 9]` and `object_ids` `[N]`, each the rows of the clip's own frames (the original
gave the whole episode beside an 81-frame clip), or None for an episode without robot data under
`fallback_to_video_only`; `embodiment_image` (a path or None); `task`, `episode`, `frame_indices`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from worldtune.data.errors import DataError
from worldtune.data.formats.vace_e_files import (
    BadRecording,
    align_to_clip,
    load_task_metadata,
    read_hand_motion,
    read_object_trajectories,
    task_prompt,
)
from worldtune.data.video import (
    VideoError,
    check_image,
    load_image,
    probe_video,
    read_frames,
    resize_center_crop,
)

logger = logging.getLogger("worldtune")


@dataclass
class VaceEDataConfig:
    """The seed's data keys (`--dataset_base_path`, `--task_metadata_path`, ...)."""

    dataset_base_path: str = MISSING
    task_metadata_path: str | None = None  # ph2d_metadata.json; None: "Robot manipulation task: <folder>"
    # Where the trajectory HDF5 files are when not beside the videos: <robot_data_path>/<task>/<episode>/.
    robot_data_path: str | None = None
    num_frames: int = 81  # consecutive frames from the episode's start (as the seed trains)
    height: int = 480
    width: int = 832
    max_hand_motion_length: int = 512
    max_object_trajectory_length: int = 512
    max_objects: int = 10
    fallback_to_video_only: bool = False  # train episodes without trajectory files on video alone
    on_bad_sample: str = "error"  # "error" | "skip" (logged and counted)

    def check(self) -> None:
        from worldtune.config import ConfigError

        if self.num_frames > min(self.max_hand_motion_length, self.max_object_trajectory_length):
            raise ConfigError(f"data.num_frames {self.num_frames} is more than max_hand_motion_length / "
                              "max_object_trajectory_length: a clip's trajectories would not fit")
        if self.on_bad_sample not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_sample must be 'error' or 'skip', got {self.on_bad_sample!r}")


@dataclass(frozen=True)
class VaceEEpisode:
    task: str
    dir: Path
    num_frames: int
    hands: Path | None
    objects: Path | None
    embodiment_image: Path | None
    target: Path
    control: Path
    mask: Path
    prompt: str | None = None  # given explicitly (generation); None: from the task metadata

    @property
    def name(self) -> str:
        return self.dir.name


def episode_videos(ep_dir: Path) -> tuple[Path, Path, Path]:
    """The seed's target, VACE control and VACE mask videos of an episode folder."""
    name = ep_dir.name
    return ep_dir / f"{name}.mp4", ep_dir / f"{name}_hands_masked.mp4", ep_dir / f"{name}_hands_mask.mp4"


def find_embodiment_image(ep_dir: Path) -> Path | None:
    """`end_effector_*.jpg` (the seed's name) or `*_hands_only.jpg` (real datasets'), in the episode
    folder first, then its task folder."""
    for folder in (ep_dir, ep_dir.parent):
        for pattern in ("end_effector_*.jpg", "*_hands_only.jpg"):
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def find_trajectories(ep_dir: Path, cfg: VaceEDataConfig) -> tuple[Path, Path]:
    """The hand and object HDF5 files: beside the videos, else under `robot_data_path` (the files
    returned may not exist)."""
    name = ep_dir.name
    files = [ep_dir / f"{name}_hand_trajectories.hdf5", ep_dir / f"{name}_object_trajectories.hdf5"]
    if cfg.robot_data_path:
        mirror = Path(cfg.robot_data_path) / ep_dir.parent.name / name
        files = [f if f.is_file() else mirror / f.name for f in files]
    return files[0], files[1]


def inspect_episode(ep_dir: Path, cfg: VaceEDataConfig) -> VaceEEpisode:
    """Check one episode's files without decoding; a problem raises `DataError` naming the file."""
    name = ep_dir.name
    counts = []
    videos = episode_videos(ep_dir)
    for path, what in zip(videos, ("target", "VACE control", "VACE mask"), strict=True):
        if not path.is_file():
            raise DataError(path, f"missing ({what} video)")
        try:
            counts.append(probe_video(path).num_frames)
        except VideoError as err:
            raise DataError(path, f"unreadable {what} video ({err})") from err
    if counts[0] < cfg.num_frames:
        raise DataError(ep_dir / f"{name}.mp4", f"{counts[0]} frames, a clip needs {cfg.num_frames}")
    if min(counts) != counts[0]:
        raise DataError(ep_dir, f"target, control and mask videos have {counts} frames: they must match")
    hands, objects = find_trajectories(ep_dir, cfg)
    missing = [p.name for p in (hands, objects) if not p.is_file()]
    if missing and not cfg.fallback_to_video_only:
        raise DataError(ep_dir, f"missing {', '.join(missing)} (set fallback_to_video_only to train on the video)")
    clip = list(range(cfg.num_frames))
    if hands.is_file():  # read once up front (small files): a bad one is named, or skipped, here
        align_to_clip(read_hand_motion(hands), clip, hands)
    if objects.is_file():
        align_to_clip(read_object_trajectories(objects, cfg.max_objects)[0], clip, objects)
    image = find_embodiment_image(ep_dir)
    if image is not None:
        check_image(image)
    return VaceEEpisode(ep_dir.parent.name, ep_dir, counts[0], hands if hands.is_file() else None,
                        objects if objects.is_file() else None, image, *videos)


class VaceEDataset(Dataset):
    """Every episode of every task folder, checked up front; one clip (the first `num_frames`
    frames) per episode. Bad episodes raise, or with `on_bad_sample: skip` are logged and counted
    (`skipped`); episodes trained without robot data are counted in `video_only`."""

    def __init__(self, cfg: VaceEDataConfig, episode_dirs: list[Path] | None = None) -> None:
        """`episode_dirs`: these episode folders instead of every one under dataset_base_path."""
        cfg.check()
        self.cfg = cfg
        base = Path(cfg.dataset_base_path) if episode_dirs is None else Path(episode_dirs[0]).parent
        if not base.is_dir():
            raise DataError(base, "dataset_base_path is not a folder")
        self.metadata = load_task_metadata(cfg.task_metadata_path) if cfg.task_metadata_path else None
        self.skipped: list[tuple[str, str]] = []
        self.episodes: list[VaceEEpisode] = []
        if episode_dirs is None:
            episode_dirs = sorted(p for p in base.glob("*/episode_*") if p.is_dir())
        for ep_dir in map(Path, episode_dirs):
            try:
                self.episodes.append(inspect_episode(ep_dir, cfg))
            except DataError as err:
                if cfg.on_bad_sample == "error":
                    raise
                logger.warning("skipping %s", err)
                self.skipped.append((f"{ep_dir.parent.name}/{ep_dir.name}", str(err)))
        if not self.episodes:
            raise DataError(base, f"no usable episodes ({len(self.skipped)} skipped)")
        self.video_only = sum(e.hands is None or e.objects is None for e in self.episodes)
        if self.video_only:
            logger.info("vace_e: %d of %d episodes have no trajectories and train on video alone",
                        self.video_only, len(self.episodes))
        if self.metadata is not None:
            absent = sorted({e.task for e in self.episodes} - set(self.metadata))
            if absent:
                logger.warning("vace_e: task folders absent from %s (generic prompt): %s", cfg.task_metadata_path,
                               ", ".join(absent))

    @classmethod
    def of_episodes(cls, cfg: VaceEDataConfig, episodes: list[VaceEEpisode]) -> VaceEDataset:
        """A dataset of episodes described explicitly (generation from named files), unchecked."""
        dataset = cls.__new__(cls)
        dataset.cfg, dataset.metadata, dataset.skipped, dataset.episodes = cfg, None, [], list(episodes)
        dataset.video_only = sum(e.hands is None or e.objects is None for e in episodes)
        return dataset

    def __len__(self) -> int:
        return len(self.episodes)

    def prompt(self, episode: VaceEEpisode) -> str:
        if episode.prompt is not None:
            return episode.prompt
        attributes = self.metadata.get(episode.task) if self.metadata is not None else None
        return task_prompt(episode.task, attributes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep, c = self.episodes[index], self.cfg
        frames = list(range(c.num_frames))
        item: dict[str, Any] = {
            "video": self._frames(ep.target, frames), "control": self._frames(ep.control, frames),
            "mask": (self._frames(ep.mask, frames).mean(dim=0, keepdim=True) + 1) / 2,
            "prompt": self.prompt(ep), "task": ep.task, "episode": ep.name, "frame_indices": torch.tensor(frames),
            "embodiment_image": str(ep.embodiment_image) if ep.embodiment_image else None,
            "reference": self._reference(ep.embodiment_image),
            "hand_motion": None, "objects": None, "object_ids": None,
        }
        if ep.hands is not None:
            item["hand_motion"] = torch.from_numpy(align_to_clip(self._hands(ep.hands), frames, ep.hands))
        if ep.objects is not None:
            poses, ids = self._objects(ep.objects)
            item["objects"] = torch.from_numpy(align_to_clip(poses, frames, ep.objects))
            item["object_ids"] = torch.from_numpy(ids)
        return item

    # The trajectory files are a few KB per episode and every epoch reads them again: parsed once
    # per process (each DataLoader worker keeps its own copy), the arrays are shared read-only.
    def _hands(self, path: Path) -> np.ndarray:
        return _cached(self, "hands", path, lambda: read_hand_motion(path))

    def _objects(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return _cached(self, "objects", path, lambda: read_object_trajectories(path, self.cfg.max_objects))

    def _reference(self, path: Path | None) -> torch.Tensor | None:
        """The embodiment image as [3, 1, H, W] in [-1, 1] at the clip's size (VACE's reference
        frame; CLIP reads the same pixels), or None."""
        if path is None:
            return None
        return load_image(path, self.cfg.height, self.cfg.width)

    def _frames(self, path: Path, indices: list[int]) -> torch.Tensor:
        try:
            frames = read_frames(path, indices)
        except VideoError as err:
            raise DataError(path, f"cannot decode ({err})") from err
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        clip = resize_center_crop(pixels, self.cfg.height, self.cfg.width)
        return (clip / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def _cached(dataset: VaceEDataset, kind: str, path: Path, read):
    cache = dataset.__dict__.setdefault("_trajectory_cache", {})
    key = (kind, str(path))
    if key not in cache:
        cache[key] = read()
    return cache[key]


def collate_vace_e(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; trajectories padded (objects to the batch's most objects) with validity masks,
    absent ones (video-only episodes) all invalid; a missing embodiment image a zero frame."""
    batch: dict[str, Any] = {key: torch.stack([it[key] for it in items]) for key in ("video", "control", "mask")}
    for key in ("prompt", "task", "episode", "embodiment_image"):
        batch[key] = [it[key] for it in items]
    size, frames = items[0]["video"].shape, items[0]["video"].shape[1]
    batch["has_reference"] = torch.tensor([it["reference"] is not None for it in items])
    batch["reference"] = torch.stack([it["reference"] if it["reference"] is not None
                                      else torch.zeros(3, 1, *size[2:]) for it in items])
    batch["hand_motion"] = torch.zeros(len(items), frames, 20)
    batch["hand_mask"] = torch.zeros(len(items), frames, dtype=torch.bool)
    num_objects = max([1] + [it["objects"].shape[1] for it in items if it["objects"] is not None])
    batch["objects"] = torch.zeros(len(items), frames, num_objects, 9)
    batch["object_ids"] = torch.zeros(len(items), num_objects, dtype=torch.long)
    batch["object_mask"] = torch.zeros(len(items), frames, num_objects, dtype=torch.bool)
    for i, it in enumerate(items):
        if it["hand_motion"] is not None:
            batch["hand_motion"][i] = it["hand_motion"]
            batch["hand_mask"][i] = True
        if it["objects"] is not None:
            n = it["objects"].shape[1]
            batch["objects"][i, :, :n] = it["objects"]
            batch["object_ids"][i, :n] = it["object_ids"]
            batch["object_mask"][i, :, :n] = True
    return batch


__all__ = ["BadRecording", "VaceEDataConfig", "VaceEDataset", "VaceEEpisode", "collate_vace_e",
           "episode_videos", "find_embodiment_image", "find_trajectories", "inspect_episode"]
