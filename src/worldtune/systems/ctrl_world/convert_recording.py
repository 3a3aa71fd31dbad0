"""Reading and checking ALOHA-convention HDF5 recordings for the Ctrl-World converter.

:func:`list_recordings` lists the ``*.hdf5`` / ``*.h5`` files of the input folder; :class:`_Recording`
opens one, checks cameras, states and actions (keys, shapes, lengths, NaN/inf, dims, episode length)
and reads / resizes / encodes its frames a chunk at a time. Any problem raises :class:`BadRecording`.
See :mod:`worldtune.systems.ctrl_world.convert` for the recording layout.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from worldtune.data.errors import DataError
from worldtune.models.encoders.common import LatentSpace
from worldtune.models.encoders.latent_spaces import encode_frames, frames_to_model_range
from worldtune.utils.logging import get_logger

logger = get_logger("worldtune.systems.ctrl_world.convert")

PathLike = str | os.PathLike[str]

RECORDING_SUFFIXES = (".hdf5", ".h5")
FRAME_CHUNK = 32  # frames read, resized and encoded at a time


class BadRecording(DataError):
    """A recording cannot be converted; the message names the file and the problem."""


def list_recordings(input_dir: PathLike) -> list[Path]:
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder of HDF5 recordings does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no *.hdf5 / *.h5 recordings found")
    return files


# ------------------------------------------------------------------------------------- recordings


def _dataset(f: h5py.File, key: str) -> h5py.Dataset | None:
    obj = f.get(key)
    return obj if isinstance(obj, h5py.Dataset) else None


def image_kind(ds: h5py.Dataset) -> str | None:
    """The image storage: "raw" (uint8 [T, H, W, 3]), "encoded" (one JPEG / PNG per element) or None."""
    if ds.ndim == 4 and ds.dtype == np.uint8 and ds.shape[-1] == 3:
        return "raw"
    if ds.ndim == 1 and (h5py.check_vlen_dtype(ds.dtype) is not None or ds.dtype.kind in "SO"):
        return "encoded"
    if ds.ndim == 2 and ds.dtype == np.uint8:
        return "encoded"  # zero-padded byte rows, as ALOHA's compressed recordings
    return None


def decode_image(data: Any) -> np.ndarray:
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    with Image.open(io.BytesIO(raw)) as image:
        return np.asarray(image.convert("RGB"))


def _read_instruction(f: h5py.File, path: Path, key: str) -> str:
    value: Any = f.attrs.get(key)
    if value is None:
        ds = _dataset(f, key)
        if ds is not None:
            value = ds[()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", errors="replace")
    if value is None or not str(value).strip():
        logger.warning("%s: no instruction (root attribute or dataset %r); using ''", path, key)
        return ""
    return str(value)


def _first_nonfinite(x: np.ndarray) -> int | None:
    bad = ~np.isfinite(x)
    if not bad.any():
        return None
    return int(np.argwhere(bad)[0][0])


@dataclass
class _Options:
    cameras: tuple[str, ...]
    image_key: str
    state_key: str
    action_key: str
    instruction_key: str
    height: int
    width: int
    fps_downsample: int
    fps: float | None
    min_length: int


class _Recording:
    """One open recording, checked; frames are read lazily per camera."""

    def __init__(self, path: Path, f: h5py.File, opt: _Options, dims: tuple[int, int] | None) -> None:
        self.path = path
        self.opt = opt
        self.images: list[h5py.Dataset] = []
        self.kinds: list[str] = []
        for cam in opt.cameras:
            key = f"{opt.image_key}/{cam}"
            ds = _dataset(f, key)
            if ds is None:
                group = f.get(opt.image_key)
                have = sorted(group.keys()) if isinstance(group, h5py.Group) else []
                raise BadRecording(
                    path, f"missing camera {cam!r}: no dataset {key!r} (cameras there: {have})"
                )
            kind = image_kind(ds)
            if kind is None:
                raise BadRecording(
                    path,
                    f"camera {cam!r}: unsupported image dataset {key!r} (shape {ds.shape}, dtype {ds.dtype})",
                )
            self.images.append(ds)
            self.kinds.append(kind)
        self.states = self._vectors(f, opt.state_key, "state")
        self.actions = self._vectors(f, opt.action_key, "action")

        lengths = {f"camera {cam!r}": ds.shape[0] for cam, ds in zip(opt.cameras, self.images, strict=True)}
        lengths[f"state {opt.state_key!r}"] = self.states.shape[0]
        lengths[f"action {opt.action_key!r}"] = self.actions.shape[0]
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{name} {n}" for name, n in lengths.items())
            raise BadRecording(path, f"frames and actions/states have different lengths ({listed})")
        self.raw_length = self.states.shape[0]
        for name, key, values in (
            ("state", opt.state_key, self.states),
            ("action", opt.action_key, self.actions),
        ):
            frame = _first_nonfinite(values)
            if frame is not None:
                raise BadRecording(path, f"{name} {key!r} has NaN/inf values (first at frame {frame})")
        got = (self.states.shape[1], self.actions.shape[1])
        if dims is not None and got != dims:
            raise BadRecording(
                path, f"state/action dims {got} differ from the other episodes' {dims} (state, action)"
            )

        self.indices = list(range(0, self.raw_length, opt.fps_downsample))
        if len(self.indices) < opt.min_length:
            raise BadRecording(
                path,
                f"episode too short: {len(self.indices)} frames after fps_downsample={opt.fps_downsample} "
                f"({self.raw_length} recorded), a sample needs at least {opt.min_length}",
            )
        self.text = _read_instruction(f, path, opt.instruction_key)
        source_fps = opt.fps
        if source_fps is None:
            for attr in ("fps", "frame_rate"):
                if attr in f.attrs:
                    source_fps = float(np.asarray(f.attrs[attr]).reshape(-1)[0])
                    break
        self.fps = None if source_fps is None else source_fps / opt.fps_downsample

    def _vectors(self, f: h5py.File, key: str, name: str) -> np.ndarray:
        ds = _dataset(f, key)
        if ds is None:
            raise BadRecording(self.path, f"missing {name} key {key!r}")
        values = np.asarray(ds[()], dtype=np.float64)
        if values.ndim != 2 or values.shape[1] < 1:
            raise BadRecording(self.path, f"{name} {key!r} must be [T, D], got shape {values.shape}")
        return values

    def frames(self, view: int, indices: Sequence[int]) -> np.ndarray:
        """uint8 ``[n, H, W, 3]`` frames of one camera at the (raw) ``indices``."""
        ds, cam = self.images[view], self.opt.cameras[view]
        if self.kinds[view] == "raw":
            step = self.opt.fps_downsample  # indices are every step-th frame: read them as one slice
            return np.asarray(ds[indices[0] : indices[-1] + 1 : step])
        out = []
        for i in indices:
            try:
                image = decode_image(ds[i])
            except Exception as e:  # PIL raises several types for corrupt data
                raise BadRecording(self.path, f"camera {cam!r}: cannot decode image frame {i} ({e})") from e
            if out and image.shape != out[0].shape:
                raise BadRecording(
                    self.path,
                    f"camera {cam!r}: frame {i} is {image.shape[:2]}, earlier frames {out[0].shape[:2]}",
                )
            out.append(image)
        return np.stack(out)

    def encode_view(self, view: int, latent_space: LatentSpace) -> torch.Tensor:
        opt = self.opt
        chunks = []
        for start in range(0, len(self.indices), FRAME_CHUNK):
            frames = self.frames(view, self.indices[start : start + FRAME_CHUNK])
            x = frames_to_model_range(frames)
            device = getattr(latent_space, "device", None)  # resize where the latent space runs
            if device is not None:
                x = x.to(device)
            if tuple(x.shape[-2:]) != (opt.height, opt.width):
                x = F.interpolate(x, size=(opt.height, opt.width), mode="bilinear", align_corners=False)
                x = x.clamp_(-1.0, 1.0)
            chunks.append(encode_frames(latent_space, x).float().cpu())
        return torch.cat(chunks)
