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
dataset (:mod:`worldtune.systems.ctrl_world.dataset`) builds a window around it: ``num_history``
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

    python -m worldtune.systems.ctrl_world.convert --input_dir RECORDINGS \\
        --output_dir dataset_example/flexiv_data --vae_path /models/stable-video-diffusion-img2vid \\
        --dataset_name flexiv_1113 --device cuda

The work is split over sibling modules, all re-exported here: reading and checking recordings
(:mod:`~worldtune.systems.ctrl_world.convert_recording`), the episode layout, annotations and marker
(:mod:`~worldtune.systems.ctrl_world.convert_layout`) and the statistics, samples and meta info
(:mod:`~worldtune.systems.ctrl_world.convert_meta`); this module holds :func:`convert_recordings` and
the command line.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from worldtune.models.encoders.common import LatentSpace
from worldtune.models.encoders.latent_spaces import build_latent_space
from worldtune.systems.ctrl_world.convert_args import DEFAULT_CAMERAS, DESCRIPTION, add_arguments
from worldtune.systems.ctrl_world.convert_layout import (
    MARKER,
    MARKER_FORMAT,
    ConvertMismatchError,
    _check_marker,
    _convert_one,
    _Episode,
    _episode_complete,
    _load_done,
    annotation_relpath,
    latent_relpath,
)
from worldtune.systems.ctrl_world.convert_meta import (
    ConvertStats,
    meta_info_dir,
    min_episode_length,
    sample_frame_ids,
    split_episodes,
    write_meta_info,
)
from worldtune.systems.ctrl_world.convert_recording import (
    FRAME_CHUNK,
    RECORDING_SUFFIXES,
    BadRecording,
    PathLike,
    _Options,
    list_recordings,
)
from worldtune.utils.logging import get_logger
from worldtune.utils.logging import progress as progress_bar

__all__ = [
    "DEFAULT_CAMERAS",
    "FRAME_CHUNK",
    "MARKER",
    "MARKER_FORMAT",
    "RECORDING_SUFFIXES",
    "BadRecording",
    "ConvertMismatchError",
    "ConvertStats",
    "PathLike",
    "annotation_relpath",
    "build_parser",
    "convert_recordings",
    "latent_relpath",
    "list_recordings",
    "main",
    "meta_info_dir",
    "min_episode_length",
    "sample_frame_ids",
    "split_episodes",
    "write_meta_info",
]

logger = get_logger("worldtune.systems.ctrl_world.convert")


# --------------------------------------------------------------------------------------- converter


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
    down = latent_space.spatial_stride
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
    parser = argparse.ArgumentParser(prog="python -m worldtune.systems.ctrl_world.convert", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> ConvertStats:
    return convert_from_args(build_parser().parse_args(argv))


def convert_from_args(a: argparse.Namespace) -> ConvertStats:
    options: dict[str, Any] = {"device": a.device} if a.latent_space == "svd" else {}
    if a.latent_space == "svd":
        options.update(allow_download=a.allow_download, encoder_batch=a.encoder_batch)
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
