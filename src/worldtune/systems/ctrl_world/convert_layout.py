"""The converted episode layout of the Ctrl-World converter: paths, atomic writes, marker, episodes.

An episode folder holds ``latent_videos/<view>/0.pt`` and ``annotation/<view>.json``; every file is
written atomically, the annotations last, so an episode is complete once all of them exist
(:func:`_episode_complete`, :func:`_load_done`). :func:`_check_marker` writes or checks the
``.worldtune_convert.json`` marker, and :func:`_convert_one` converts one recording into its folder.
See :mod:`worldtune.systems.ctrl_world.convert` for the whole output layout.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from worldtune.models.encoders.common import LatentSpace
from worldtune.systems.ctrl_world.convert_recording import BadRecording, _Options, _Recording

MARKER = ".worldtune_convert.json"
MARKER_FORMAT = "worldtune.ctrl_world_convert.v1"


class ConvertMismatchError(ValueError):
    """The output folder holds a different conversion; the message says what differs."""


@dataclass
class _Episode:
    """What the meta info needs of one complete episode."""

    states: np.ndarray
    actions: np.ndarray
    video_length: int
    # Per view: the sum of squared one-frame latent changes and how many values it sums (stat.json's
    # `latent_delta_rms`: how much each camera's picture changes from frame to frame).
    delta_sumsq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    delta_count: np.ndarray = field(default_factory=lambda: np.zeros(0))


def latent_change_moments(latents: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(sum of squared one-frame changes, number of values) of each view's latents `[T, C, h, w]`."""
    sumsq = [float((lat[1:].double() - lat[:-1].double()).pow(2).sum()) for lat in latents]
    count = [float(lat[1:].numel()) for lat in latents]
    return np.asarray(sumsq), np.asarray(count)


# ------------------------------------------------------------------------------------------ paths


def latent_relpath(view: int) -> str:
    return f"latent_videos/{view}/0.pt"


def annotation_relpath(view: int) -> str:
    return f"annotation/{view}.json"


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
        views = sorted(ep_dir.glob("latent_videos/*/0.pt"), key=lambda f: int(f.parent.name))
        latents = [torch.load(f, map_location="cpu", weights_only=True) for f in views]
        episode.delta_sumsq, episode.delta_count = latent_change_moments(latents)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ConvertMismatchError(f"{path}: unreadable annotation or latents of a converted episode ({e})") from e
    if source != recording.name:
        raise ConvertMismatchError(
            f"{ep_dir}: converted from {source!r}, but recording #{ep_dir.name} is now {recording.name!r} "
            "(the input folder changed); convert into a new output folder"
        )
    return episode


# ---------------------------------------------------------------------------------------- episodes


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
    return _Episode(states, actions, n, *latent_change_moments(latents))
