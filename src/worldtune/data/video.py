"""Video IO on PyAV: probing, frame-exact decoding, temporal resampling and resizing (writing is in
`worldtune.data.video_write`).

Layout conventions used throughout this module:

* decoded frames are ``uint8`` numpy arrays ``[T, H, W, 3]`` in RGB order;
* model tensors are ``float32`` torch tensors ``[C, T, H, W]`` with values in ``[-1, 1]``;
* :func:`resize_center_crop` alone takes float torch ``[T, C, H, W]``, the layout
  ``torch.nn.functional.interpolate`` resizes in one call.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.container import InputContainer
from av.video.stream import VideoStream

from worldtune.data.errors import DataError, MessageDataError

PathLike = str | os.PathLike[str]

# A frame time this close (in source frames) below a frame boundary counts as that frame, so that
# float error in k * src_fps / target_fps cannot drop an index by one.
_EPS = 1e-6


class VideoError(MessageDataError):
    """A video file is missing, unreadable, or cannot satisfy the request; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """Basic facts about the first video stream of a file."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str

    @property
    def duration(self) -> float:
        """Length in seconds, from the frame count and the frame rate."""
        return self.num_frames / self.fps


# --------------------------------------------------------------------------------------------- reading


@contextmanager
def _open_video(path: PathLike) -> Iterator[tuple[InputContainer, VideoStream]]:
    """Open ``path`` and yield its first video stream; every failure becomes a :class:`VideoError`."""
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{p}: {'not a regular file' if p.exists() else 'no such file'}")
    try:
        container = av.open(str(p), mode="r")
    except (av.FFmpegError, OSError) as e:
        raise VideoError(f"{p}: cannot open as a video ({e})") from e
    try:
        if not container.streams.video:
            raise VideoError(f"{p}: no video stream")
        yield container, container.streams.video[0]
    except av.FFmpegError as e:
        # Demux/decode errors surface lazily, inside the caller's loop.
        raise VideoError(f"{p}: cannot decode ({e})") from e
    finally:
        container.close()


def _stream_fps(stream: VideoStream) -> float | None:
    """Frame rate from the container's average rate, falling back to FFmpeg's guesses."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _codec_name(stream: VideoStream) -> str:
    # The decoder's own name may be a library ("libdav1d"); report the format ("av1") instead.
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _count_packets(container: InputContainer, stream: VideoStream) -> int:
    # Demuxing only reads packet headers and payloads; nothing is decoded. Size-0 packets are flushes.
    return sum(1 for packet in container.demux(stream) if packet.size)


def probe_video(path: PathLike) -> VideoInfo:
    """Frame count, frame rate, size and codec of the first video stream of ``path``."""
    with _open_video(path) as (container, stream):
        fps = _stream_fps(stream)
        width, height = stream.codec_context.width, stream.codec_context.height
        codec = _codec_name(stream)
        # mp4 headers carry the sample count; other containers (mkv, webm) often do not.
        num_frames = stream.frames if stream.frames > 0 else _count_packets(container, stream)
    if num_frames <= 0:
        raise VideoError(f"{path}: video stream has no frames")
    if fps is None or not math.isfinite(fps) or fps <= 0:
        raise VideoError(f"{path}: video stream has no usable frame rate")
    return VideoInfo(num_frames=num_frames, fps=fps, width=width, height=height, codec=codec)


@dataclass(frozen=True, eq=False)
class _FrameTable:
    """Per-file map from frame index to presentation timestamp, built by demuxing once."""

    num_frames: int
    width: int
    height: int
    # Sorted presentation timestamps (stream time base); None when packets lack unique timestamps,
    # in which case frames can only be identified by counting from the start.
    pts: tuple[int, ...] | None
    keyframes: tuple[int, ...]  # frame indices of keyframes, sorted; only valid when pts is set
    index_of: Mapping[int, int] = field(default_factory=dict)


def _build_frame_table(path: PathLike) -> _FrameTable:
    with _open_video(path) as (container, stream):
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        width, height = stream.codec_context.width, stream.codec_context.height
    if not packets:
        raise VideoError(f"{path}: video stream has no frames")
    stamps = [pts for pts, _ in packets]
    if any(pts is None for pts in stamps) or len(set(stamps)) != len(stamps):
        return _FrameTable(len(packets), width, height, pts=None, keyframes=())
    pts = tuple(sorted(stamps))  # packets come in decode order; frame indices follow presentation order
    index_of = {p: i for i, p in enumerate(pts)}
    keyframes = tuple(sorted(index_of[p] for p, key in packets if key))
    return _FrameTable(len(packets), width, height, pts=pts, keyframes=keyframes, index_of=index_of)


@functools.lru_cache(maxsize=256)
def _cached_frame_table(path: str, size: int, mtime_ns: int) -> _FrameTable:
    # size and mtime are part of the key so that a rewritten file is demuxed again.
    return _build_frame_table(path)


def _frame_table(path: PathLike) -> _FrameTable:
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise VideoError(f"{p}: no such file") from e
    return _cached_frame_table(str(p.resolve()), st.st_size, st.st_mtime_ns)


class _PositionLost(Exception):
    """Decoded timestamps do not match the frame table, so pts-based indexing cannot be trusted."""


@dataclass
class _DecodeStats:
    """What a read cost; lets tests check that seeking really skipped frames."""

    start: int = 0  # frame index decoding was positioned at (0: decoded from the beginning)
    decoded: int = 0  # frames pulled out of the decoder


def _seek_start(table: _FrameTable, first: int) -> int:
    """Index of the last keyframe at or before ``first``: the latest frame decoding can start from."""
    pos = bisect.bisect_right(table.keyframes, first) - 1
    return table.keyframes[pos] if pos >= 0 else 0


def _decode_from(
    path: PathLike, table: _FrameTable, wanted: set[int], start: int, use_pts: bool
) -> tuple[dict[int, np.ndarray], _DecodeStats]:
    """Decode frames from ``start`` until every wanted index is seen; convert only the wanted ones."""
    first, last = min(wanted), max(wanted)
    stats = _DecodeStats(start=start)
    out: dict[int, np.ndarray] = {}
    with _open_video(path) as (container, stream):
        stream.thread_type = "AUTO"  # frame threading speeds up long GOPs; output order is unchanged
        if start > 0 and table.pts is not None:
            # backward=True lands on the keyframe at or before the timestamp.
            container.seek(table.pts[start], stream=stream)
        for count, frame in enumerate(container.decode(stream)):
            stats.decoded += 1
            if use_pts:
                index = table.index_of.get(frame.pts) if frame.pts is not None else None
                # A seek that overshoots would silently return later frames: verify the landing point.
                if index is None or (count == 0 and index > first):
                    raise _PositionLost
            else:
                index = count
            if index in wanted and index not in out:
                out[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
    return out, stats


def _decode_wanted(
    path: PathLike, table: _FrameTable, wanted: set[int]
) -> tuple[dict[int, np.ndarray], _DecodeStats]:
    if table.pts is not None:
        try:
            # Seek only when a keyframe after frame 0 precedes the first wanted frame: anything
            # else would decode the same frames as starting from the beginning.
            return _decode_from(path, table, wanted, _seek_start(table, min(wanted)), use_pts=True)
        except _PositionLost:
            pass  # fall back to counting frames from the start, which needs no timestamps
    return _decode_from(path, table, wanted, 0, use_pts=False)


def _read_frames(path: PathLike, indices: Sequence[int]) -> tuple[np.ndarray, _DecodeStats]:
    table = _frame_table(path)
    order = [operator.index(i) for i in indices]
    for i in order:
        if not 0 <= i < table.num_frames:
            raise VideoError(f"{path}: frame index {i} out of range for a video of {table.num_frames} frames")
    if not order:
        return np.empty((0, table.height, table.width, 3), dtype=np.uint8), _DecodeStats()
    wanted = set(order)
    decoded, stats = _decode_wanted(path, table, wanted)
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise VideoError(
            f"{path}: decoder returned no frame for indices {missing[:8]} "
            f"(video has {table.num_frames} frames)"
        )
    return np.stack([decoded[i] for i in order]), stats


def read_frames(path: PathLike, indices: Sequence[int]) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``[T, H, W, 3]``.

    The file is decoded once, from the keyframe before the smallest index up to the largest one.
    """
    return _read_frames(path, indices)[0]


# ------------------------------------------------------------------------------------ temporal sampling


def _check_rates(src_fps: float, target_fps: float, num_frames: int) -> None:
    if not (math.isfinite(src_fps) and src_fps > 0 and math.isfinite(target_fps) and target_fps > 0):
        raise ValueError(f"frame rates must be positive and finite, got src={src_fps}, target={target_fps}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _clip_offsets(src_fps: float, target_fps: float, num_frames: int) -> list[int]:
    """Source-frame offsets (from the clip start) of ``num_frames`` frames sampled at ``target_fps``."""
    _check_rates(src_fps, target_fps, num_frames)
    # Frame k sits at time k / target_fps; the source frame showing then is floor(time * src_fps).
    return [math.floor(k * src_fps / target_fps + _EPS) for k in range(num_frames)]


def resample_indices(
    num_src_frames: int, src_fps: float, target_fps: float, num_frames: int, start: int = 0
) -> list[int]:
    """Source indices of ``num_frames`` frames at ``target_fps``, starting at source frame ``start``.

    Each frame takes the nearest source frame at or before its time. Raises ``ValueError`` when the
    clip runs past the end of the source.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    indices = [start + off for off in _clip_offsets(src_fps, target_fps, num_frames)]
    needed = indices[-1] + 1
    if needed > num_src_frames:
        raise ValueError(
            f"clip of {num_frames} frames at {target_fps:g} fps from frame {start} needs {needed} "
            f"source frames, but only {num_src_frames} are available"
        )
    return indices


def max_clip_start(num_src_frames: int, src_fps: float, target_fps: float, num_frames: int) -> int:
    """Largest ``start`` accepted by :func:`resample_indices`, or -1 if even ``start=0`` does not fit."""
    span = _clip_offsets(src_fps, target_fps, num_frames)[-1] + 1
    return max(num_src_frames - span, -1)


def valid_num_frames(n: int, temporal_stride: int = 4) -> bool:
    """True iff ``n == temporal_stride * k + 1`` for some ``k >= 0`` (causal video VAE frame counts)."""
    if temporal_stride < 1:
        raise ValueError(f"temporal_stride must be >= 1, got {temporal_stride}")
    return n >= 1 and (n - 1) % temporal_stride == 0


def round_num_frames(n: int, stride: int = 4) -> int:
    """Largest ``stride * k + 1`` that is ``<= n``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if n < 1:
        raise ValueError(f"need at least 1 frame, got {n}")
    return (n - 1) // stride * stride + 1


# ----------------------------------------------------------------------------------- spatial / value range


def _check_size(height: int, width: int, stride: int) -> None:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if height % stride or width % stride:
        raise ValueError(f"height and width must be multiples of stride {stride}, got {height}x{width}")


def resize_center_crop(frames: torch.Tensor, height: int, width: int, stride: int = 1) -> torch.Tensor:
    """Scale float ``[T, C, H, W]`` frames to cover ``height x width`` keeping aspect, then centre-crop.

    Uses bilinear interpolation with antialiasing (matters when downscaling). ``height`` and ``width``
    must be multiples of ``stride`` (e.g. the VAE's spatial downsampling factor).
    """
    _check_size(height, width, stride)
    if not isinstance(frames, torch.Tensor) or not frames.is_floating_point() or frames.ndim != 4:
        raise TypeError("resize_center_crop expects a floating-point torch tensor [T, C, H, W]")
    src_h, src_w = frames.shape[-2:]
    scale = max(height / src_h, width / src_w)
    # max() guards the covering side against rounding just below the target.
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    if (new_h, new_w) != (src_h, src_w):
        frames = F.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return frames[:, :, top : top + height, left : left + width]


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[T, H, W, C]`` frames -> float32 ``[C, T, H, W]`` in ``[-1, 1]``."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
        raise TypeError("to_model_range expects a uint8 numpy array [T, H, W, C]")
    if not frames.flags.writeable:
        frames = frames.copy()  # torch.from_numpy warns on read-only memory
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous().to(torch.float32)
    return video.div_(127.5).sub_(1.0)


def from_model_range(video: torch.Tensor) -> np.ndarray:
    """Float ``[C, T, H, W]`` in ``[-1, 1]`` (values outside are clamped) -> uint8 ``[T, H, W, C]``."""
    if not isinstance(video, torch.Tensor) or video.ndim != 4:
        raise TypeError("from_model_range expects a torch tensor [C, T, H, W]")
    scaled = (video.detach().to("cpu", torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round_().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


# ------------------------------------------------------------------------------------------ loading clips


def load_clip(
    path: PathLike,
    num_frames: int,
    target_fps: float | None = None,
    start: int = 0,
    height: int | None = None,
    width: int | None = None,
    stride: int = 1,
) -> torch.Tensor:
    """Load ``num_frames`` frames at ``target_fps`` (default: the file's rate) from source frame ``start``.

    With ``height`` and ``width`` the clip is resized to cover that size and centre-cropped; without them
    the native size must already be a multiple of ``stride``. Returns float32 ``[C, T, H, W]`` in ``[-1, 1]``.
    """
    if (height is None) != (width is None):
        raise ValueError(f"{path}: give both height and width, or neither")
    if height is not None and width is not None:
        try:
            _check_size(height, width, stride)  # fail before paying for decoding
        except ValueError as e:
            raise VideoError(f"{path}: {e}") from e
    info = probe_video(path)
    fps = info.fps if target_fps is None else target_fps
    try:
        indices = resample_indices(info.num_frames, info.fps, fps, num_frames, start)
    except ValueError as e:
        raise VideoError(f"{path}: {e}") from e
    video = to_model_range(read_frames(path, indices))
    if height is not None and width is not None:
        resized = resize_center_crop(video.permute(1, 0, 2, 3), height, width, stride)
        # Interpolation weights are non-negative, but float rounding can step just outside [-1, 1].
        return resized.permute(1, 0, 2, 3).clamp(-1.0, 1.0).contiguous()
    if video.shape[-2] % stride or video.shape[-1] % stride:
        raise VideoError(
            f"{path}: size {video.shape[-2]}x{video.shape[-1]} is not a multiple of stride {stride}"
        )
    return video


def check_image(path: str | Path) -> None:
    """Raise `DataError` naming `path` unless it is a readable image (header and data checked)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (FileNotFoundError, UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(Path(path), f"unreadable image ({err})") from err


def load_image(path: str | Path, height: int, width: int) -> torch.Tensor:
    """An image file as float [3, 1, height, width] in [-1, 1], resized to cover and centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
        raise DataError(Path(path), f"unreadable image ({err})") from err
    frame = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return resize_center_crop(frame, height, width).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()
