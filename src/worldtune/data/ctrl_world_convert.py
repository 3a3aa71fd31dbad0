"""Convert ALOHA-convention HDF5 robot recordings into Ctrl-World's latent format (Flexiv layout, seed 5).

Every ``*.hdf5`` / ``*.h5`` file in ``input_dir`` (sorted by name) is one episode; recording number
``i`` in that order becomes episode ``i`` (a recording skipped as bad leaves its number unused, so
the numbers never shift when a bad file is fixed and the conversion rerun). A recording holds
``observations/images/<camera>`` (uint8 ``[T, H, W, 3]``, or one JPEG per frame: variable-length
uint8, fixed-length bytes, or zero-padded uint8 ``[T, N]``), ``observations/qpos`` ``[T, D]`` and
``action`` ``[T, D]``; the instruction is a root attribute (or a dataset) named ``instruction``.

Output, for ``output_dir=.../flexiv_data`` and ``dataset_name=flexiv_1113``::

    flexiv_data/
    ├── .worldtune_convert.json          # what was converted (refuses a different dataset)
    ├── 0/                               # episode 0
    │   ├── latent_videos/0/0.pt         # view 0 (first camera): float [T, C, h, w], scaled latents
    │   ├── latent_videos/1/0.pt
    │   ├── latent_videos/2/0.pt
    │   └── annotation/{0,1,2}.json      # one per view: texts, states, actions, latent_videos, ...
    └── 1/ ...
    flexiv_data_meta_info/flexiv_1113/
    ├── stat.json                        # per-dimension state_/action_ 01, 99, mean, std
    ├── train_sample.json                # [{"episode_id": 0, "frame_ids": [t]}, ...]
    └── val_sample.json

Frames are kept every ``fps_downsample``-th (states and actions too), resized straight to
``height x width`` (bilinear, as upstream's ``extract_latent.py``) and encoded with the latent space.

Samples. A sample ``{"episode_id": e, "frame_ids": [t]}`` names the *current* frame ``t``. The
dataset (:mod:`worldtune.data.formats.ctrl_world`) builds a window around it: ``num_history``
history frames ``t - num_history*history_stride, ..., t - history_stride``, then ``t``, then
``num_frames - 1`` future frames ``t + frame_stride, ...``. The converter lists every ``t`` whose
window lies inside the episode: ``num_history*history_stride <= t <= T - 1 - (num_frames-1)*frame_stride``,
so an episode needs at least ``num_history*history_stride + (num_frames-1)*frame_stride + 1`` frames
(``num_history + num_frames`` with unit strides). The dataset clips windows to the episode like
upstream, so a reader with longer windows than the converter's still works. The train / val split
is by episode, reproducible from ``seed`` and ``val_ratio`` (at least one val episode when there are
two or more and ``val_ratio > 0``).

Resuming. Every file is written atomically (temp + rename), the annotations last, so an episode
whose latents and annotations all exist is complete and skipped on a rerun; the meta info is always
recomputed from all complete episodes. ``.worldtune_convert.json`` records the dataset name,
cameras, size, frame downsampling, keys, latent space and input folder; converting anything else
into the same folder is refused with the differences listed.

Command line (mirrors the seed's ``flexiv_to_ctrlworld.py``)::

    python -m worldtune.data.ctrl_world_convert --input_dir RECORDINGS \\
        --output_dir dataset_example/flexiv_data --vae_path /models/stable-video-diffusion-img2vid \\
        --dataset_name flexiv_1113 --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from worldtune.models.latent_spaces import LatentSpace, build_latent_space, frames_to_model_range
from worldtune.train.logging import get_logger
from worldtune.train.logging import progress as progress_bar

logger = get_logger("worldtune.data.ctrl_world_convert")

PathLike = str | os.PathLike[str]

MARKER = ".worldtune_convert.json"
MARKER_FORMAT = "worldtune.ctrl_world_convert.v1"
RECORDING_SUFFIXES = (".hdf5", ".h5")
DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
FRAME_CHUNK = 32  # frames read, resized and encoded at a time


class BadRecording(ValueError):
    """A recording cannot be converted; the message names the file and the problem."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConvertMismatchError(ValueError):
    """The output folder holds a different conversion; the message says what differs."""


@dataclass
class ConvertStats:
    converted: int = 0  # episodes converted in this run
    already_done: int = 0  # episodes found complete and left as they were
    skipped: int = 0  # bad recordings skipped (on_bad_sample="skip")
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)
    num_episodes: int = 0  # complete episodes in the meta info
    num_frames: int = 0  # their frames (after downsampling)
    train_episodes: list[int] = field(default_factory=list)
    val_episodes: list[int] = field(default_factory=list)
    train_samples: int = 0
    val_samples: int = 0
    output_dir: str = ""
    meta_info_dir: str = ""


@dataclass
class _Episode:
    """What the meta info needs of one complete episode."""

    states: np.ndarray
    actions: np.ndarray
    video_length: int


# ------------------------------------------------------------------------------------------ paths


def meta_info_dir(output_dir: PathLike, dataset_name: str) -> Path:
    """``<output_dir>_meta_info/<dataset_name>`` (e.g. ``flexiv_data_meta_info/flexiv_1113``)."""
    out = Path(output_dir)
    return out.parent / f"{out.name}_meta_info" / dataset_name


def latent_relpath(view: int) -> str:
    return f"latent_videos/{view}/0.pt"


def annotation_relpath(view: int) -> str:
    return f"annotation/{view}.json"


def list_recordings(input_dir: PathLike) -> list[Path]:
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder of HDF5 recordings does not exist")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in RECORDING_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no *.hdf5 / *.h5 recordings found")
    return files


def min_episode_length(num_history: int, num_frames: int, history_stride: int, frame_stride: int) -> int:
    """Frames an episode needs for one full sample window."""
    return num_history * history_stride + (num_frames - 1) * frame_stride + 1


def sample_frame_ids(
    video_length: int, num_history: int, num_frames: int, history_stride: int, frame_stride: int
) -> list[int]:
    """Every current frame ``t`` whose history and future window fits inside the episode."""
    first = num_history * history_stride
    last = video_length - 1 - (num_frames - 1) * frame_stride
    return list(range(first, last + 1))


# ------------------------------------------------------------------------------------ atomic writes


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def _write_tensor(path: Path, tensor: torch.Tensor) -> None:
    _atomic_write(path, lambda tmp: torch.save(tensor.detach().cpu().contiguous().clone(), tmp))


# ------------------------------------------------------------------------------------- recordings


def _dataset(f: h5py.File, key: str) -> h5py.Dataset | None:
    obj = f.get(key)
    return obj if isinstance(obj, h5py.Dataset) else None


def _image_kind(ds: h5py.Dataset) -> str | None:
    """The image storage: "raw" (uint8 [T, H, W, 3]), "encoded" (one JPEG / PNG per element) or None."""
    if ds.ndim == 4 and ds.dtype == np.uint8 and ds.shape[-1] == 3:
        return "raw"
    if ds.ndim == 1 and (h5py.check_vlen_dtype(ds.dtype) is not None or ds.dtype.kind in "SO"):
        return "encoded"
    if ds.ndim == 2 and ds.dtype == np.uint8:
        return "encoded"  # zero-padded byte rows, as ALOHA's compressed recordings
    return None


def _decode_image(data: Any) -> np.ndarray:
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
            kind = _image_kind(ds)
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
                image = _decode_image(ds[i])
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
            chunks.append(latent_space.encode(x).float().cpu())
        return torch.cat(chunks)


# ---------------------------------------------------------------------------------------- marker


def _check_marker(out: Path, expected: dict[str, Any]) -> None:
    path = out / MARKER
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConvertMismatchError(f"{path}: unreadable conversion marker ({e})") from e
        diffs = [
            f"{key}: {recorded.get(key)!r} there, {value!r} now"
            for key, value in expected.items()
            if recorded.get(key) != value
        ]
        if diffs:
            raise ConvertMismatchError(
                f"{out} already holds a different dataset ({'; '.join(diffs)}); "
                "convert into another output folder, or delete this one"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ConvertMismatchError(f"{out} is not empty and holds no {MARKER}: refusing to convert into it")
    _write_json(path, expected, indent=2)


def _episode_complete(ep_dir: Path, num_views: int) -> bool:
    return all(
        (ep_dir / latent_relpath(v)).is_file() and (ep_dir / annotation_relpath(v)).is_file()
        for v in range(num_views)
    )


def _load_done(ep_dir: Path, recording: Path) -> _Episode:
    """The meta-info part of a complete episode; it must come from the same recording."""
    path = ep_dir / annotation_relpath(0)
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
        episode = _Episode(
            np.asarray(ann["states"], dtype=np.float64),
            np.asarray(ann["actions"], dtype=np.float64),
            int(ann["video_length"]),
        )
        source = ann["source"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConvertMismatchError(f"{path}: unreadable annotation of a converted episode ({e})") from e
    if source != recording.name:
        raise ConvertMismatchError(
            f"{ep_dir}: converted from {source!r}, but recording #{ep_dir.name} is now {recording.name!r} "
            "(the input folder changed); convert into a new output folder"
        )
    return episode


# ----------------------------------------------------------------------------------------- meta info


def _percentiles(x: np.ndarray, prefix: str) -> dict[str, list[float]]:
    return {
        f"{prefix}_01": np.percentile(x, 1, axis=0).tolist(),
        f"{prefix}_99": np.percentile(x, 99, axis=0).tolist(),
        f"{prefix}_mean": x.mean(axis=0).tolist(),
        f"{prefix}_std": x.std(axis=0).tolist(),
    }


def split_episodes(episode_ids: Sequence[int], val_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Reproducible episode-level split: (train ids, val ids), both sorted."""
    ids = sorted(episode_ids)
    n_val = 0
    if len(ids) >= 2 and val_ratio > 0:
        n_val = min(len(ids) - 1, max(1, round(len(ids) * val_ratio)))
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    val = sorted(shuffled[:n_val])
    val_set = set(val)
    return [e for e in ids if e not in val_set], val


def write_meta_info(
    meta_dir: Path,
    episodes: dict[int, _Episode],
    *,
    val_ratio: float,
    seed: int,
    num_history: int,
    num_frames: int,
    history_stride: int,
    frame_stride: int,
    stats: ConvertStats,
) -> None:
    states = np.concatenate([e.states for e in episodes.values()])
    actions = np.concatenate([e.actions for e in episodes.values()])
    stat: dict[str, Any] = {**_percentiles(states, "state"), **_percentiles(actions, "action")}
    stat["num_episodes"] = len(episodes)
    stat["num_frames"] = int(sum(e.video_length for e in episodes.values()))
    train, val = split_episodes(list(episodes), val_ratio, seed)

    def samples(ids: list[int]) -> list[dict[str, Any]]:
        out = []
        for e in ids:
            frames = sample_frame_ids(
                episodes[e].video_length, num_history, num_frames, history_stride, frame_stride
            )
            out.extend({"episode_id": e, "frame_ids": [t]} for t in frames)
        return out

    train_samples, val_samples = samples(train), samples(val)
    _write_json(meta_dir / "stat.json", stat, indent=2)
    _write_json(meta_dir / "train_sample.json", train_samples, indent=4)
    _write_json(meta_dir / "val_sample.json", val_samples, indent=4)
    stats.num_episodes, stats.num_frames = len(episodes), stat["num_frames"]
    stats.train_episodes, stats.val_episodes = train, val
    stats.train_samples, stats.val_samples = len(train_samples), len(val_samples)
    if not val:
        logger.warning("%s: no validation episodes (%d episode(s) converted)", meta_dir, len(episodes))


# --------------------------------------------------------------------------------------- converter


def _convert_one(
    path: Path, ep: int, ep_dir: Path, opt: _Options, latent_space: LatentSpace, dims: tuple[int, int] | None
) -> _Episode:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise BadRecording(path, f"cannot open as HDF5 ({e})") from e
    with f:
        rec = _Recording(path, f, opt, dims)
        latents = [rec.encode_view(v, latent_space) for v in range(len(opt.cameras))]
    states, actions = rec.states[rec.indices], rec.actions[rec.indices]
    n = len(rec.indices)
    if any(lat.shape[0] != n for lat in latents):
        raise RuntimeError(
            f"{path}: the latent space returned {[lat.shape[0] for lat in latents]} frames for {n}"
        )
    for v, lat in enumerate(latents):  # latents first, annotations last: complete once all JSONs exist
        _write_tensor(ep_dir / latent_relpath(v), lat)
    for v, cam in enumerate(opt.cameras):
        annotation = {
            "texts": [rec.text],
            "episode_id": ep,
            "video_length": n,
            "raw_length": rec.raw_length,
            "states": states.tolist(),
            "actions": actions.tolist(),
            "view": v,
            "camera": cam,
            "latent_videos": [{"latent_video_path": latent_relpath(v)}],
            "source": path.name,
            "fps": rec.fps,
        }
        _write_json(ep_dir / annotation_relpath(v), annotation)
    return _Episode(states, actions, n)


def convert_recordings(
    input_dir: PathLike,
    output_dir: PathLike,
    latent_space: LatentSpace,
    *,
    dataset_name: str,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    image_key: str = "observations/images",
    state_key: str = "observations/qpos",
    action_key: str = "action",
    instruction_key: str = "instruction",
    height: int = 192,
    width: int = 320,
    fps_downsample: int = 1,
    fps: float | None = None,
    val_ratio: float = 0.1,
    seed: int = 42,
    num_history: int = 6,
    num_frames: int = 5,
    history_stride: int = 1,
    frame_stride: int = 1,
    on_bad_sample: str = "error",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ConvertStats:
    """Convert every recording of ``input_dir`` into ``output_dir`` (see the module docstring).

    ``fps`` is the recordings' frame rate (default: their root attribute ``fps`` / ``frame_rate``);
    the annotations store it divided by ``fps_downsample``. ``device`` moves the latent space.
    Bad recordings raise :class:`BadRecording`, or with ``on_bad_sample="skip"`` are logged and
    counted in ``ConvertStats.skipped``.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    if not dataset_name or "/" in dataset_name:
        raise ValueError(f"dataset_name must be a plain folder name, got {dataset_name!r}")
    cameras = tuple(cameras)
    if not cameras or len(set(cameras)) != len(cameras):
        raise ValueError(f"cameras must be distinct and non-empty, got {cameras}")
    if fps_downsample < 1:
        raise ValueError(f"fps_downsample must be >= 1, got {fps_downsample}")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    if num_history < 0 or num_frames < 1 or history_stride < 1 or frame_stride < 1:
        raise ValueError("need num_history >= 0, num_frames >= 1, history_stride >= 1 and frame_stride >= 1")
    down = latent_space.downsample
    if height < 1 or width < 1 or height % down or width % down:
        raise ValueError(
            f"height x width {height}x{width} must be positive multiples of {down} ({latent_space.identity})"
        )
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")

    recordings = list_recordings(input_dir)
    out = Path(output_dir)
    meta_dir = meta_info_dir(out, dataset_name)
    _check_marker(
        out,
        {
            "format": MARKER_FORMAT,
            "dataset_name": dataset_name,
            "cameras": list(cameras),
            "height": height,
            "width": width,
            "fps_downsample": fps_downsample,
            "image_key": image_key,
            "state_key": state_key,
            "action_key": action_key,
            "latent_space": latent_space.identity,
            "input_dir": str(Path(input_dir).resolve()),
        },
    )
    if device is not None:
        latent_space.to(device)
    opt = _Options(
        cameras, image_key, state_key, action_key, instruction_key, height, width, fps_downsample, fps,
        min_episode_length(num_history, num_frames, history_stride, frame_stride),
    )  # fmt: skip
    stats = ConvertStats(output_dir=str(out), meta_info_dir=str(meta_dir))
    episodes: dict[int, _Episode] = {}
    dims: tuple[int, int] | None = None
    bar = progress_bar(recordings, desc="ctrl-world convert", unit="episode", enabled=progress)
    for ep, path in enumerate(bar):
        ep_dir = out / str(ep)
        if _episode_complete(ep_dir, len(cameras)):
            episode = _load_done(ep_dir, path)
            stats.already_done += 1
        else:
            try:
                episode = _convert_one(path, ep, ep_dir, opt, latent_space, dims)
            except BadRecording as err:
                if on_bad_sample == "error":
                    raise
                logger.warning("skipping %s", err)
                stats.skipped += 1
                stats.skipped_files.append((path.name, err.problem))
                continue
            stats.converted += 1
        dims = dims or (episode.states.shape[1], episode.actions.shape[1])
        episodes[ep] = episode
        bar.set_postfix(converted=stats.converted, done=stats.already_done, skipped=stats.skipped)
    bar.close()

    if not episodes:
        raise RuntimeError(f"{input_dir}: no recording could be converted ({stats.skipped} skipped)")
    write_meta_info(
        meta_dir, episodes, val_ratio=val_ratio, seed=seed, num_history=num_history, num_frames=num_frames,
        history_stride=history_stride, frame_stride=frame_stride, stats=stats,
    )  # fmt: skip
    logger.info(
        "%s: %d converted, %d already done, %d skipped; %d episodes (%d train / %d val), %d frames -> %s",
        out, stats.converted, stats.already_done, stats.skipped, stats.num_episodes,
        len(stats.train_episodes), len(stats.val_episodes), stats.num_frames, meta_dir,
    )  # fmt: skip
    return stats


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m worldtune.data.ctrl_world_convert",
        description="Convert ALOHA-style HDF5 recordings to Ctrl-World latents (Flexiv layout).",
    )
    p.add_argument("--input_dir", required=True, help="folder of *.hdf5 / *.h5 recordings")
    p.add_argument("--output_dir", required=True, help="e.g. dataset_example/flexiv_data")
    p.add_argument("--dataset_name", required=True, help="meta info goes to <output_dir>_meta_info/<name>")
    p.add_argument("--latent_space", default="svd", choices=["svd", "space_to_depth"])
    p.add_argument("--vae_path", help="local SVD folder (with vae/) for --latent_space svd")
    p.add_argument("--allow_download", action="store_true", help="allow --vae_path to be a hub id")
    p.add_argument("--factor", type=int, default=4, help="space_to_depth factor")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--cameras", nargs="+", default=list(DEFAULT_CAMERAS))
    p.add_argument("--image_key", default="observations/images")
    p.add_argument("--state_key", default="observations/qpos")
    p.add_argument("--action_key", default="action")
    p.add_argument("--instruction_key", default="instruction")
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--fps_downsample", type=int, default=1)
    p.add_argument("--fps", type=float, default=None, help="recording frame rate (default: file attribute)")
    p.add_argument("--val_ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num_history", type=int, default=6)
    p.add_argument("--num_frames", type=int, default=5)
    p.add_argument("--history_stride", type=int, default=1)
    p.add_argument("--frame_stride", type=int, default=1)
    p.add_argument("--on_bad_sample", default="error", choices=["error", "skip"])
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> ConvertStats:
    a = build_parser().parse_args(argv)
    options: dict[str, Any] = {"device": a.device} if a.latent_space == "svd" else {}
    if a.latent_space == "svd":
        options["allow_download"] = a.allow_download
    space = build_latent_space(a.latent_space, svd_path=a.vae_path, factor=a.factor, **options)
    stats = convert_recordings(
        a.input_dir, a.output_dir, space, dataset_name=a.dataset_name, cameras=a.cameras,
        image_key=a.image_key, state_key=a.state_key, action_key=a.action_key,
        instruction_key=a.instruction_key, height=a.height, width=a.width,
        fps_downsample=a.fps_downsample, fps=a.fps, val_ratio=a.val_ratio, seed=a.seed,
        num_history=a.num_history, num_frames=a.num_frames, history_stride=a.history_stride,
        frame_stride=a.frame_stride, on_bad_sample=a.on_bad_sample, device=a.device,
        progress=not a.no_progress,
    )  # fmt: skip
    for name, problem in stats.skipped_files:
        logger.warning("skipped %s: %s", name, problem)
    return stats


if __name__ == "__main__":
    main()
