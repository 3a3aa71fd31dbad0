"""Video writing on PyAV: mp4 (yuv420p, H.264 by default) from decoded frames or model tensors,
written atomically, and side-by-side comparisons. Layouts as in `worldtune.data.video`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from av.codec.codec import UnknownCodecError

from worldtune.data.video import PathLike, VideoError, from_model_range
from worldtune.utils.atomic import atomic_path

__all__ = ["side_by_side", "write_video"]


def _as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = from_model_range(frames)
    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[-1] != 3
    ):
        raise TypeError("write_video expects uint8 numpy [T, H, W, 3] or a float torch tensor [3, T, H, W]")
    if frames.shape[0] < 1:
        raise ValueError("write_video needs at least one frame")
    return frames


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    # yuv420p stores chroma at half resolution, so encoders need even sizes; repeating the last
    # row/column keeps every input pixel (cropping would drop one).
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _encode(path: Path, frames: np.ndarray, fps: float, codec: str, options: Mapping[str, str]) -> None:
    # limit_denominator(1001) maps float NTSC rates such as 29.97002997 back to 30000/1001.
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = dict(options)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i  # in the encoder's time base, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed (B-)frames


def write_video(
    path: PathLike,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    codec: str = "libx264",
    crf: int | None = 18,
    options: Mapping[str, str] | None = None,
) -> Path:
    """Write an mp4 (yuv420p) from uint8 ``[T, H, W, 3]`` or float ``[3, T, H, W]`` in ``[-1, 1]``.

    Odd heights/widths are padded to even by repeating the last row/column. ``crf`` (``None`` to omit,
    for encoders without it) and ``options`` (e.g. ``{"g": "5"}`` for the keyframe interval) are
    passed to the encoder (libx264 gets ``x264-params=mbtree=0`` unless ``options`` say otherwise: the
    same frames then always give the same file). The file appears atomically: it is written to a temporary name in the same
    directory and renamed. Returns the path written.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    data = _pad_to_even(_as_uint8_frames(frames))
    dest = Path(path)
    encoder_options = {} if crf is None else {"crf": str(crf)}
    if codec == "libx264":
        # libx264's macroblock tree (PyAV 18 / FFmpeg 8) encoded the same frames into visibly
        # different files from run to run (measured: 5 distinct files in 6); a rerun must reproduce
        # a video exactly, and at crf 18 the tree's bit saving does not matter.
        encoder_options["x264-params"] = "mbtree=0"
    encoder_options.update(options or {})
    try:
        with atomic_path(dest) as tmp:
            _encode(tmp, data, fps, codec, encoder_options)
    except (av.FFmpegError, UnknownCodecError) as e:
        raise VideoError(f"{dest}: cannot encode with {codec} ({e})") from e
    return dest


def side_by_side(*videos: torch.Tensor) -> torch.Tensor:
    """Concatenate ``[C, T, H, W]`` videos along width, e.g. ground truth beside prediction."""
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    shapes = [tuple(v.shape) for v in videos]
    if any(len(s) != 4 for s in shapes) or len({s[:3] for s in shapes}) != 1:
        raise ValueError(f"side_by_side needs [C, T, H, W] videos with equal C, T and H; got shapes {shapes}")
    return torch.cat(videos, dim=3)
