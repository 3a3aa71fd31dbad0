"""Meta info of the Ctrl-World converter: statistics, samples and the train / val split.

:func:`write_meta_info` writes ``stat.json`` (per-dimension state / action percentiles, mean, std; per
view ``latent_delta_rms``, the RMS of one-frame latent changes, which `model.normalise_views` reads),
``train_sample.json`` and ``val_sample.json`` into :func:`meta_info_dir`; the samples are every
frame whose window fits the episode (:func:`sample_frame_ids`), split by episode
(:func:`split_episodes`). See :mod:`worldtune.systems.ctrl_world.convert` for the sample windows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldtune.systems.ctrl_world.convert_layout import _Episode, _write_json
from worldtune.systems.ctrl_world.convert_recording import PathLike
from worldtune.utils.logging import get_logger

logger = get_logger("worldtune.systems.ctrl_world.convert")


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


# ------------------------------------------------------------------------------------------ paths


def meta_info_dir(output_dir: PathLike, dataset_name: str) -> Path:
    """``<output_dir>_meta_info/<dataset_name>`` (e.g. ``flexiv_data_meta_info/flexiv_1113``)."""
    out = Path(output_dir)
    return out.parent / f"{out.name}_meta_info" / dataset_name


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


# ----------------------------------------------------------------------------------------- meta info


def _percentiles(x: np.ndarray, prefix: str) -> dict[str, list[float]]:
    return {
        f"{prefix}_01": np.percentile(x, 1, axis=0).tolist(),
        f"{prefix}_99": np.percentile(x, 99, axis=0).tolist(),
        f"{prefix}_mean": x.mean(axis=0).tolist(),
        f"{prefix}_std": x.std(axis=0).tolist(),
    }


def latent_delta_rms(episodes: list[_Episode]) -> list[float]:
    """Per view, the root mean square of the one-frame latent changes over all episodes."""
    sumsq = np.sum([e.delta_sumsq for e in episodes], axis=0)
    count = np.sum([e.delta_count for e in episodes], axis=0)
    return np.sqrt(sumsq / np.maximum(count, 1)).tolist()


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
    stat["latent_delta_rms"] = latent_delta_rms(list(episodes.values()))
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
