"""Sim-Physics clips (seed `4-sim-physics.md`): RGB frames with their motion and depth targets.

Scenes come from the metadata CSV (`video` = the scene path under the root, `prompt`), or from a
scan of the root when there is none. A clip is `num_frames` frames spread evenly over the scene
(49 of 131), resized to cover `height` x `width` and centre-cropped; motion and depth follow the
same geometry (motion values scaled with the resize).

An item: `video` [3, T, H, W] uint8 (`video_to_unit_range` makes it [-1, 1] floats); targets at
the sampled frames 0, s, 2s, ... (s = `target_stride`, 4: the frame each Wan latent frame ends on;
T' = (T - 1) / s + 1 of them): `motion` [2, T', H, W] in output pixels, target k's being the
displacement since target k-1 on its own grid (target 0: zeros, `motion_valid[0]` False); `depth`
[1, T', H, W] metres with `depth_valid` (invalid pixels 0); `prompt`, `scene`, `frame_indices` (the
T sampled frames).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from worldtune.data.errors import DataError
from worldtune.data.formats.sim_physics_files import (
    BadScene,
    SceneFiles,
    cover_crop,
    find_scenes,
    pick_frames,
    read_depth,
    read_metadata,
    read_rgb,
    resize_crop,
    scene_files,
    scene_prompt,
)
from worldtune.data.formats.sim_physics_motion import (
    ChainedMotionCache,
    MotionPatch,
    accumulate_motion,
    read_motion_patch,
)

logger = logging.getLogger("worldtune")

# The seed's `dataset_preset` names: defaults for what the config leaves unset.
PRESETS: dict[str, dict[str, str]] = {
    "sim_physics": {"root_env": "SIM_PHYSICS_ROOT", "rgb_dir": "rgb", "motion_dir": "motion_vectors",
                    "depth_dir": "distance_to_camera", "metadata": "data/sim_physics_metadata.csv"},
    "magic_physics": {"root_env": "MAGIC_PHYSICS_ROOT", "rgb_dir": "rgb_capture",
                      "motion_dir": "motion_vectors_capture", "depth_dir": "distance_to_camera_capture",
                      "metadata": "data/magic_physics_dataset/metadata.csv"},
}


@dataclass
class SimPhysicsDataConfig:
    """The seed's data settings (`--dataset_base_path`, `--dataset_metadata_path`, `--dataset_preset`)."""

    # The scenes' root; null: the preset's environment variable ($SIM_PHYSICS_ROOT).
    dataset_base_path: str | None = None
    # metadata CSV (video, prompt); null: the preset's file when it exists, else a scan of the root.
    dataset_metadata_path: str | None = None
    dataset_preset: str = "sim_physics"
    # Folder names inside a scene; null: the preset's.
    rgb_dir: str | None = None
    motion_dir: str | None = None
    depth_dir: str | None = None
    num_frames: int = 49
    # Targets every `target_stride` sampled frames (0, 4, 8, ...: the frames Wan's VAE ends each latent
    # frame on), motion chained over the stride; 1: every sampled frame.
    target_stride: int = 4
    height: int = 480
    width: int = 480
    # pixels | normalized (fractions of width / height); `motion_sign` multiplies (dx, dy).
    motion_units: str = "pixels"
    motion_sign: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # Held-out scenes: listed, else this share of them chosen by a hash of their names.
    val_scenes: list[str] = field(default_factory=list)
    val_ratio: float = 0.1
    split: str = "train"  # train | val | all
    # Memory (per DataLoader worker) for chained motion targets, so that a scene read again (the
    # seed's dataset_repeat) is not chained again; 0: off.
    target_cache_mb: float = 512.0
    on_bad_sample: str = "error"  # error | skip (logged and counted)

    def check(self) -> None:
        from worldtune.config import ConfigError

        if self.dataset_preset not in PRESETS:
            raise ConfigError(f"data.dataset_preset must be one of {sorted(PRESETS)}, got {self.dataset_preset!r}")
        for key, value, choices in (("motion_units", self.motion_units, ("pixels", "normalized")),
                                    ("split", self.split, ("train", "val", "all")),
                                    ("on_bad_sample", self.on_bad_sample, ("error", "skip"))):
            if value not in choices:
                raise ConfigError(f"data.{key} must be one of {', '.join(choices)}; got {value!r}")
        if len(self.motion_sign) != 2:
            raise ConfigError(f"data.motion_sign: two multipliers (dx, dy), got {list(self.motion_sign)}")
        if self.target_stride < 1 or (self.num_frames - 1) % self.target_stride:
            raise ConfigError(f"data.num_frames {self.num_frames} must be 1 + a multiple of data.target_stride "
                              f"{self.target_stride} (e.g. 49 with 4)")
        if self.target_cache_mb < 0:
            raise ConfigError(f"data.target_cache_mb must be >= 0, got {self.target_cache_mb}")
        if not 0 <= self.val_ratio < 1:
            raise ConfigError(f"data.val_ratio must be in [0, 1), got {self.val_ratio}")

    def preset(self, key: str) -> str:
        return PRESETS[self.dataset_preset][key]

    def folders(self) -> tuple[str, str, str]:
        return (self.rgb_dir or self.preset("rgb_dir"), self.motion_dir or self.preset("motion_dir"),
                self.depth_dir or self.preset("depth_dir"))

    def root(self) -> Path:
        root = self.dataset_base_path or os.environ.get(self.preset("root_env"))
        if not root:
            from worldtune.config import ConfigError

            raise ConfigError(f"data.dataset_base_path: not set and ${self.preset('root_env')} is empty")
        return Path(root)


def is_val_scene(scene: str, cfg: SimPhysicsDataConfig) -> bool:
    if cfg.val_scenes:
        return scene in cfg.val_scenes or Path(scene).parts[0] in cfg.val_scenes
    digest = hashlib.blake2b(scene.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < cfg.val_ratio


class SimPhysicsDataset(Dataset):
    """The split's scenes, checked up front (folders, counts, frame count); bad scenes raise or,
    with `on_bad_sample: skip`, are logged and counted in `skipped`."""

    def __init__(self, cfg: SimPhysicsDataConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.root = cfg.root()
        if not self.root.is_dir():
            raise DataError(self.root, "dataset_base_path is not a folder")
        rows = self._rows()
        self.skipped: list[tuple[str, str]] = []
        self.scenes: list[tuple[SceneFiles, str]] = []
        self.motion_cache = ChainedMotionCache(int(cfg.target_cache_mb * 2**20))
        for scene, prompt in rows:
            if cfg.split != "all" and is_val_scene(scene, cfg) != (cfg.split == "val"):
                continue
            try:
                files = scene_files(self.root, scene, cfg.folders())
                pick_frames(files.num_frames, cfg.num_frames)
            except ValueError as err:
                if not isinstance(err, DataError):
                    err = BadScene(self.root / scene, str(err))
                if cfg.on_bad_sample == "error":
                    raise err from None
                logger.warning("skipping %s", err)
                self.skipped.append((scene, str(err)))
                continue
            self.scenes.append((files, prompt or scene_prompt(scene)))
        if not self.scenes:
            raise DataError(self.root, f"no usable scene in split {cfg.split!r} ({len(self.skipped)} skipped)")

    def _rows(self) -> list[tuple[str, str]]:
        cfg = self.cfg
        path = cfg.dataset_metadata_path
        if path is None and Path(cfg.preset("metadata")).is_file():
            path = cfg.preset("metadata")
        if path is None:
            return [(scene, scene_prompt(scene)) for scene in find_scenes(self.root, cfg.folders()[0])]
        return read_metadata(Path(path))

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        files, prompt = self.scenes[index]
        c = self.cfg
        picks = pick_frames(files.num_frames, c.num_frames)
        rgb = np.stack([read_rgb(files.rgb[i]) for i in picks])  # [T, h, w, 3]
        shape = rgb.shape[1:3]
        scale = cover_crop(c.height, c.width, shape)[0]
        motion = self._motion(files, picks, shape)
        if scale != 1:
            motion *= scale
        targets = picks[::c.target_stride]
        depth, valid = zip(*(read_depth(files.depth[i], shape) for i in targets), strict=True)
        depth_t = resize_crop(torch.from_numpy(np.stack(depth))[:, None], c.height, c.width, "nearest")
        valid_t = resize_crop(torch.from_numpy(np.stack(valid)).float()[:, None], c.height, c.width, "nearest") > 0.5
        if not valid_t.any():
            raise BadScene(files.depth[targets[0]].parent, "every depth value of the clip is invalid (0, inf or NaN)")
        return {
            "video": _video(rgb, c.height, c.width),
            "motion": resize_crop(motion, c.height, c.width, "bilinear").transpose(0, 1).contiguous(),
            "motion_valid": torch.tensor([False] + [True] * (len(targets) - 1)),
            "depth": depth_t.transpose(0, 1).contiguous(),
            "depth_valid": valid_t.transpose(0, 1).contiguous(),
            "prompt": prompt, "scene": files.scene, "frame_indices": torch.tensor(picks),
        }

    def _motion(self, files: SceneFiles, picks: list[int], shape: tuple[int, int]) -> torch.Tensor:
        """[T', 2, h, w]: per target frame, the displacement since the previous one, chained over
        every simulator step in between (the sampled frames' gaps and the target stride alike)."""
        c = self.cfg
        targets = picks[::c.target_stride]
        key = (files.scene, tuple(targets))
        cached = self.motion_cache.get(key)
        if cached is not None:
            return cached

        def step(k: int) -> MotionPatch | None:
            return read_motion_patch(files.motion[k], shape, c.motion_units, tuple(c.motion_sign))

        out = torch.zeros(len(targets), 2, *shape)
        for j, (a, b) in enumerate(zip(targets[:-1], targets[1:], strict=True), start=1):
            out[j] = accumulate_motion([step(k) for k in range(a + 1, b + 1)], shape)
        self.motion_cache.put(key, out)
        return out


def _video(rgb: np.ndarray, height: int, width: int) -> torch.Tensor:
    """[T, h, w, 3] uint8 -> [3, T, height, width] uint8: frames stay bytes until the device (a
    quarter of the copying and of the host-to-device transfer; `video_to_unit_range` scales them
    there), resized only when the size differs."""
    frames = torch.from_numpy(rgb)
    if tuple(rgb.shape[1:3]) == (height, width):
        return frames.permute(3, 0, 1, 2).contiguous()
    video = resize_crop(frames.permute(0, 3, 1, 2).float(), height, width, "bilinear")
    return video.round_().clamp_(0, 255).to(torch.uint8).transpose(0, 1).contiguous()


def video_to_unit_range(video: torch.Tensor) -> torch.Tensor:
    """The dataset's uint8 frames as floats in [-1, 1] (float frames pass through)."""
    return video.float().div_(127.5).sub_(1) if video.dtype == torch.uint8 else video


__all__ = ["PRESETS", "SimPhysicsDataConfig", "SimPhysicsDataset", "is_val_scene", "video_to_unit_range"]
