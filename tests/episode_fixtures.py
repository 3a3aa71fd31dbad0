"""Tiny robot episodes in the Vidar seed layout, for tests of anything that reads them.

```
root/episodes/<name>/video.mp4 (or video_<cam>.mp4)   frames that encode their own index
root/episodes/<name>/actions.npy                      float32 (T, action_dim), row t = t + j / 100
root/episodes/<name>/instruction.txt
```

Frame pattern (robust to h264 and to resizing that keeps the aspect ratio): the top half holds
``CODE_BITS`` vertical stripes, white for a 1 bit and black for a 0, most significant bit on the left,
spelling the frame index; the bottom half is a solid colour, ``CAMERA_COLORS[k]`` for camera ``k``
(the single ``video.mp4`` uses ``CAMERA_COLORS[0]``). :func:`frame_index` reads the index back from a
decoded frame or a model tensor, :func:`tile_color` the colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch

from worldtune.data.video_write import write_video

CODE_BITS = 10  # frame indices up to 1023
CAMERA_COLORS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),
    (40, 200, 40),
    (40, 40, 220),
    (220, 200, 40),
)
VIDEO_KINDS = ("ok", "missing", "garbage", "empty")


def episode_name(i: int) -> str:
    """The name :func:`write_dataset` gives its ``i``-th episode."""
    return f"ep_{i:04d}"


def pattern_frames(num_frames: int, size: tuple[int, int], color: Sequence[int]) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` frames: index code in the top half, ``color`` in the bottom half."""
    height, width = size
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    frames[:, height // 2 :] = np.asarray(color, dtype=np.uint8)
    stripe = width // CODE_BITS
    for t in range(num_frames):
        for b in range(CODE_BITS):
            if (t >> (CODE_BITS - 1 - b)) & 1:
                frames[t, : height // 2, b * stripe : (b + 1) * stripe] = 255
    return frames


def _as_hwc(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8-range float ``[H, W, 3]`` from uint8 ``[H, W, 3]`` or a model tensor ``[3, H, W]`` in [-1, 1]."""
    if isinstance(frame, torch.Tensor):
        return ((frame.detach().float().permute(1, 2, 0) + 1.0) * 127.5).numpy()
    return frame.astype(np.float64)


def frame_index(frame: np.ndarray | torch.Tensor) -> int:
    """The index written into one frame (or one camera tile) by :func:`pattern_frames`."""
    image = _as_hwc(frame)
    height, width = image.shape[:2]
    band = image[height // 8 : max(3 * height // 8, height // 8 + 1)].mean(axis=(0, 2))  # per column
    stripe = width / CODE_BITS
    bits = [band[int((b + 0.5) * stripe)] > 127.5 for b in range(CODE_BITS)]
    return sum(1 << (CODE_BITS - 1 - b) for b, bit in enumerate(bits) if bit)


def frame_indices(video: torch.Tensor) -> list[int]:
    """The index of every frame of a model video ``[3, T, H, W]``."""
    return [frame_index(video[:, t]) for t in range(video.shape[1])]


def tile_color(frame: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
    """Mean RGB of the middle of the bottom half (the camera colour) of a frame or tile."""
    image = _as_hwc(frame)
    height, width = image.shape[:2]
    patch = image[5 * height // 8 : max(7 * height // 8, 5 * height // 8 + 1), width // 4 : 3 * width // 4]
    r, g, b = patch.reshape(-1, 3).mean(axis=0).round().astype(int)
    return int(r), int(g), int(b)


def _write_empty_video(path: Path, size: tuple[int, int], fps: float) -> None:
    # An mp4 container with no video frames (FFmpeg's muxer drops a track without samples).
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # writes the header although no frame follows


def _write_camera(path: Path, kind: str, frames: np.ndarray, fps: float) -> None:
    if kind == "ok":
        write_video(path, frames, fps)
    elif kind == "garbage":
        path.write_bytes(b"this is not a video\n" * 64)
    elif kind == "empty":
        _write_empty_video(path, frames.shape[1:3], fps)
    elif kind != "missing":
        raise ValueError(f"video must be one of {VIDEO_KINDS}, got {kind!r}")


def _actions_array(actions: bool | np.ndarray, rows: int, action_dim: int) -> np.ndarray | None:
    if isinstance(actions, np.ndarray):
        return actions
    if not actions:
        return None
    # Row t is t + j/100, so a test can tell which frame's action it got.
    return (np.arange(rows)[:, None] + np.arange(action_dim)[None, :] / 100).astype(np.float32)


def write_episode(
    root: str | Path,
    name: str,
    num_frames: int = 30,
    fps: float = 10,
    size: tuple[int, int] = (64, 80),
    cameras: Sequence[str] | None = None,
    instruction: str | None = "pick up the cube",
    actions: bool | np.ndarray = True,
    action_dim: int = 14,
    num_actions: int | None = None,
    video: str = "ok",
    colors: Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write ``root/episodes/<name>/`` and return that directory.

    ``size`` is (height, width). ``cameras=None`` writes ``video.mp4``, a list writes
    ``video_<cam>.mp4`` per camera (colours from ``colors`` or :data:`CAMERA_COLORS`). ``video`` is
    "ok", "missing" (no file), "garbage" (bytes that are no video) or "empty" (an mp4 without
    frames), for every camera file. ``instruction=None`` writes no instruction.txt (a string is written
    as given, so "  " makes a blank one). ``actions``: True writes ``num_actions`` (default
    ``num_frames``) rows of ``action_dim``; False writes none; an array is saved as it is.
    """
    ep_dir = Path(root) / "episodes" / name
    ep_dir.mkdir(parents=True, exist_ok=True)
    palette = list(colors) if colors is not None else list(CAMERA_COLORS)
    files = ["video.mp4"] if cameras is None else [f"video_{cam}.mp4" for cam in cameras]
    for k, file in enumerate(files):
        frames = pattern_frames(num_frames, size, palette[k % len(palette)])
        _write_camera(ep_dir / file, video, frames, fps)
    if instruction is not None:
        (ep_dir / "instruction.txt").write_text(instruction, encoding="utf-8")
    array = _actions_array(actions, num_frames if num_actions is None else num_actions, action_dim)
    if array is not None:
        np.save(ep_dir / "actions.npy", array)
    return ep_dir


def write_dataset(root: str | Path, n_episodes: int = 4, manifest: bool = False, **kw) -> Path:
    """Write ``n_episodes`` episodes named :func:`episode_name` (``**kw`` as for :func:`write_episode`).

    With ``manifest=True`` also writes ``root/manifest.json`` (default split). Returns ``root``.
    """
    root = Path(root)
    for i in range(n_episodes):
        write_episode(root, episode_name(i), **kw)
    if manifest:
        from worldtune.data.formats.episodes import write_manifest

        write_manifest(root)
    return root
