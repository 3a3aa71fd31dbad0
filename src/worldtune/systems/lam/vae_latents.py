"""Encode a folder of videos into latent H5 files for the latent action model (seed 3).

Each video becomes ``OUT_DIR/<stem>.h5`` with dataset ``latents`` of shape
``[N_chunks, 16, T_latent, size/8, size/8]``: the video is resized and centre-cropped to
``size x size``, cut into consecutive chunks of ``chunk_frames`` frames (the remainder dropped), and
every chunk is encoded on its own with the Wan2.1 VAE.

The Wan VAE is causal and takes ``1 + 4k`` frames: of an 8-frame chunk it encodes frames 0-4 into 2
latent frames (frame 0, then frames 1-4). ``AutoencoderKLWan`` itself silently ignores the 3 frames
beyond ``1 + 4k``; here only the frames it uses are decoded, and ``frames_encoded`` is stored.

Latents are the VAE's raw posterior mean by default, as a plain VAE encode gives (the seed's LAM does
no normalisation of its own); ``normalise=True`` stores Wan's per-channel normalised latents instead,
the ones the Wan DiT trains on. Outputs appear atomically (temp file + rename), so a rerun skips every
video whose output exists with the same settings.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from worldtune.data.video import (
    VideoError,
    VideoInfo,
    probe_video,
    read_frames,
    resize_center_crop,
    round_num_frames,
    to_model_range,
)
from worldtune.models.encoders.vae import WanVAE
from worldtune.utils.logging import progress as progress_bar

logger = logging.getLogger("worldtune.systems.lam.vae_latents")

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")
FORMAT = "worldtune.latent_h5.v1"
DTYPES = {"float32": np.float32, "float16": np.float16}
PathLike = str | os.PathLike[str]


class LatentEncodeError(RuntimeError):
    """A video could not be encoded; the message names the video file."""


class OutputMismatchError(ValueError):
    """An output file exists but was written with other settings; the message names it."""


def list_videos(video_dir: PathLike) -> list[Path]:
    """Video files directly in ``video_dir``, sorted; two with the same stem are an error."""
    root = Path(video_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    videos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    stems: dict[str, Path] = {}
    for video in videos:
        if video.stem in stems:
            raise ValueError(f"{stems[video.stem]} and {video} would both be written to {video.stem}.h5")
        stems[video.stem] = video
    return videos


def vae_identity(vae: WanVAE) -> str:
    """A readable name of the VAE: class, where it was loaded from, channels and strides."""
    source = vae.vae.config.get("_name_or_path") or "unnamed"
    s = vae.spatial_stride
    return f"{type(vae.vae).__name__}({source}) z{vae.z_dim} stride {vae.temporal_stride}x{s}x{s}"


def chunk_indices(chunks: Sequence[int], chunk_frames: int, frames_encoded: int) -> list[int]:
    """Source frame indices of the encoded frames of each chunk, chunk after chunk."""
    return [c * chunk_frames + i for c in chunks for i in range(frames_encoded)]


def _preprocess(frames: np.ndarray, num_chunks: int, size: int, stride: int) -> torch.Tensor:
    """uint8 ``[n*t, H, W, 3]`` -> float ``[n, 3, t, size, size]`` in [-1, 1], one chunk at a time."""
    out = []
    for part in np.split(frames, num_chunks):
        # Per chunk: a float copy of a whole batch of full-resolution frames can take gigabytes.
        video = to_model_range(part).permute(1, 0, 2, 3)  # [t, 3, H, W] for resize_center_crop
        out.append(resize_center_crop(video, size, size, stride).clamp(-1.0, 1.0).permute(1, 0, 2, 3))
    return torch.stack(out)


def _settings(
    vae: WanVAE, chunk_frames: int, frames_encoded: int, size: int, normalise: bool, dtype: str
) -> dict[str, Any]:
    """The attributes that must match for an existing output to be reused."""
    return {
        "format": FORMAT,
        "chunk_frames": chunk_frames,
        "frames_encoded": frames_encoded,
        "size": size,
        "normalised": normalise,
        "dtype": dtype,
        "vae": vae_identity(vae),
    }


def _existing_output(path: Path, dataset: str, shape: tuple[int, ...], settings: dict[str, Any]) -> bool:
    """True when ``path`` is a finished output with these settings; a mismatch raises."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            stored = {key: f.attrs.get(key) for key in settings}
            stored_shape = tuple(f[dataset].shape) if dataset in f else None
    except OSError as e:
        logger.warning("%s: unreadable (%s); encoding it again", path, e)
        return False
    differing = {k: (stored[k], v) for k, v in settings.items() if stored[k] != v}
    if stored_shape != shape:
        differing["shape"] = (stored_shape, shape)
    if differing:
        detail = ", ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in differing.items())
        raise OutputMismatchError(
            f"{path}: exists with other settings ({detail}); delete it or use another out_dir"
        )
    return True


def _encode_batch(vae: WanVAE, video: torch.Tensor, normalise: bool) -> np.ndarray:
    latents = vae.encode(video) if normalise else vae.encode_raw(video)
    return latents.cpu().numpy()


def _encode_video(
    video: Path, tmp: Path, vae: WanVAE, info: VideoInfo, shape: tuple[int, ...], opts: dict[str, Any]
) -> None:
    """Write every chunk's latents of ``video`` into a new H5 file ``tmp``."""
    num_chunks, frames, batch = shape[0], opts["frames_encoded"], opts["batch_chunks"]
    with h5py.File(tmp, "w") as f:
        # One HDF5 chunk per latent chunk: a sequence read touches only the chunks it needs.
        ds = f.create_dataset(opts["dataset_name"], shape=shape, dtype=opts["dtype"], chunks=(1, *shape[1:]))
        bar = progress_bar(total=num_chunks, desc=video.name, unit="chunk", enabled=opts["progress"])
        with bar:
            for first in range(0, num_chunks, batch):
                chunks = range(first, min(first + batch, num_chunks))
                pixels = read_frames(video, chunk_indices(chunks, opts["chunk_frames"], frames))
                x = _preprocess(pixels, len(chunks), opts["size"], vae.spatial_stride)
                latents = _encode_batch(vae, x, opts["normalise"])
                ds[chunks.start : chunks.stop] = latents.astype(opts["dtype"])
                bar.update(len(chunks))
        f.attrs.update(opts["settings"])
        f.attrs.update(source_video=str(video), fps=info.fps, source_frames=info.num_frames)


def _encode_one(video: Path, out_dir: Path, vae: WanVAE, opts: dict[str, Any]) -> Path | None:
    """Encode one video unless its output already exists; None when it is shorter than a chunk."""
    info = probe_video(video)
    num_chunks = info.num_frames // opts["chunk_frames"]
    if num_chunks == 0:
        logger.info(
            "skipping %s: %d frames, fewer than one chunk of %d", video, info.num_frames, opts["chunk_frames"]
        )
        return None
    out = out_dir / f"{video.stem}.h5"
    shape = (num_chunks, *vae.latent_shape(opts["frames_encoded"], opts["size"], opts["size"]))
    if _existing_output(out, opts["dataset_name"], shape, opts["settings"]):
        logger.info("%s: already encoded", out)
        return out
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        _encode_video(video, tmp, vae, info, shape, opts)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)  # still there only if encoding or the rename failed
    return out


def encode_videos_to_h5(
    video_dir: PathLike,
    out_dir: PathLike,
    vae: WanVAE,
    *,
    chunk_frames: int = 8,
    size: int = 512,
    dataset_name: str = "latents",
    normalise: bool = False,
    dtype: str = "float32",
    batch_chunks: int = 4,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Path]:
    """Encode every video in ``video_dir`` (mp4/mkv/webm/avi, sorted) to ``out_dir/<stem>.h5``.

    ``batch_chunks`` chunks go through the VAE per call; ``device`` moves ``vae`` there first.
    ``dtype`` is "float32" or "float16". Returns the outputs (new or reused) in video order; videos
    shorter than one chunk are logged and left out.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if chunk_frames < 1 or batch_chunks < 1:
        raise ValueError(f"chunk_frames and batch_chunks must be >= 1, got {chunk_frames}, {batch_chunks}")
    frames_encoded = round_num_frames(chunk_frames, vae.temporal_stride)
    vae.latent_shape(frames_encoded, size, size)  # size must be a multiple of the spatial stride
    if device is not None:
        vae.to(device)
    videos = list_videos(video_dir)
    if not videos:
        logger.warning("%s: no video files (%s)", video_dir, ", ".join(VIDEO_SUFFIXES))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(
        chunk_frames=chunk_frames, frames_encoded=frames_encoded, size=size, dataset_name=dataset_name,
        normalise=normalise, dtype=DTYPES[dtype], batch_chunks=batch_chunks, progress=progress,
        settings=_settings(vae, chunk_frames, frames_encoded, size, normalise, dtype),
    )  # fmt: skip
    written = []
    for video in videos:
        try:
            path = _encode_one(video, out, vae, opts)
        except (VideoError, OutputMismatchError):
            raise  # these already name the file
        except Exception as e:
            raise LatentEncodeError(f"{video}: cannot encode to latents ({type(e).__name__}: {e})") from e
        if path is not None:
            written.append(path)
    return written
