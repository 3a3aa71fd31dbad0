"""VACE-E episodes in the seed layout whose picture is decided by the hand trajectory alone.

A white marker is drawn where the right wrist is (its x, y in [0, 1] are the marker's place in the
frame) over a plain background. The hands mask covers the whole frame and the control video shows
only the background, so nothing but the hand motion says where the marker goes: a model that uses
the trajectories scores higher with an episode's own than with another's (`task_alignment` > 0).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from worldtune.data.video_write import write_video

BACKGROUND = 60
MARKER = 8  # pixels


def marker_video(xy: np.ndarray, size: int) -> np.ndarray:
    """[T, size, size, 3] uint8: the background with the marker centred at each frame's (x, y)."""
    video = np.full((len(xy), size, size, 3), BACKGROUND, np.uint8)
    for t, (x, y) in enumerate(xy):
        if x < 0:  # no hand in this frame
            continue
        col = int(np.clip(round(x * size) - MARKER // 2, 0, size - MARKER))
        row = int(np.clip(round(y * size) - MARKER // 2, 0, size - MARKER))
        video[t, row:row + MARKER, col:col + MARKER] = 255
    return video


def write_hand_file(path: Path, xy: np.ndarray) -> None:
    frames = len(xy)
    with h5py.File(path, "w") as f:
        for side in ("left", "right"):
            g = f.create_group(f"{side}_wrist")
            positions = np.zeros((frames, 3))
            if side == "right":
                positions[:, :2] = xy
            g["positions"] = positions
            g["rotations_6d"] = np.tile([1.0, 0, 0, 0, 1.0, 0], (frames, 1))
            states = f.create_dataset(f"{side}_hand_states", data=np.zeros(frames, np.int64))
            states.attrs["state_mapping"] = "open=0, closed=1, inactive=2"


def write_object_file(path: Path, frames: int, rng: np.random.Generator) -> None:
    with h5py.File(path, "w") as f:
        g = f.create_group("object_1")
        g["positions"] = np.tile(rng.uniform(size=3), (frames, 1))
        g["rotations_6d"] = np.tile([1.0, 0, 0, 0, 1.0, 0], (frames, 1))
        g.attrs["object_id"] = 1


def write_marker_dataset(root: Path, episodes: int, frames: int = 5, size: int = 16, seed: int = 0,
                         task: str = "100-marker-grasping") -> Path:
    """`root/<task>/episode_<k>/` with target, control, mask, trajectories and an embodiment image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k in range(episodes):
        ep = root / task / f"episode_{k}"
        ep.mkdir(parents=True)
        start = rng.uniform(0.2, 0.8, size=2)
        step = rng.uniform(-0.08, 0.08, size=2)
        xy = np.clip(start + step * np.arange(frames)[:, None], 0.05, 0.95)
        write_video(ep / f"episode_{k}.mp4", marker_video(xy, size), fps=10)
        write_video(ep / f"episode_{k}_hands_masked.mp4", marker_video(np.full((frames, 2), -9.0), size), fps=10)
        write_video(ep / f"episode_{k}_hands_mask.mp4", np.full((frames, size, size, 3), 255, np.uint8), fps=10)
        write_hand_file(ep / f"episode_{k}_hand_trajectories.hdf5", xy)
        write_object_file(ep / f"episode_{k}_object_trajectories.hdf5", frames, rng)
        Image.new("RGB", (size, size), (200, 40, 40)).save(ep / "end_effector_camera.jpg")
    return root
