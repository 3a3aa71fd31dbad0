"""Episodes in the Vidar layout whose actions are a known function of what is visible: a bright
square moves over a still textured background, and the action is its centre (x, y) in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldtune.data.video_write import write_video

MARKER = 10  # pixels


def scene(size: int, seed: int = 123) -> np.ndarray:
    """The still background every episode shares (one workspace, as a robot's recordings are)."""
    cells = np.random.default_rng(seed).integers(40, 110, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return np.kron(cells, np.ones((8, 8, 1), dtype=np.uint8))


def marker_episode(rng: np.random.Generator, num_frames: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames `[T, size, size, 3]` and float32 actions `[T, 2]`: the marker's centre, a smooth
    random walk (as a robot's joints are)."""
    background = scene(size)
    span = size - MARKER
    position = rng.uniform(0, span, size=2)
    velocity = rng.normal(0, 2.0, size=2)
    frames, actions = [], []
    for _ in range(num_frames):
        velocity = 0.8 * velocity + rng.normal(0, 1.2, size=2)
        position = np.clip(position + velocity, 0, span)
        x, y = position.round().astype(int)
        frame = background.copy()
        frame[y : y + MARKER, x : x + MARKER] = (250, 230, 40)
        frames.append(frame)
        actions.append((position + MARKER / 2) / size)
    return np.stack(frames), np.asarray(actions, dtype=np.float32)


def write_marker_dataset(root: str | Path, episodes: int = 10, num_frames: int = 40, size: int = 64,
                         seed: int = 0) -> Path:
    """`root/episodes/ep_XXXX/{video.mp4, actions.npy, instruction.txt}`."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for i in range(episodes):
        folder = root / "episodes" / f"ep_{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        frames, actions = marker_episode(rng, num_frames, size)
        write_video(folder / "video.mp4", frames, fps=10)
        np.save(folder / "actions.npy", actions)
        (folder / "instruction.txt").write_text("follow the marker\n")
    return root
