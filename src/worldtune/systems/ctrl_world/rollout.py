"""Ctrl-World's autoregressive rollouts (`worldtune generate ctrl-world`, and what `eval` scores).

A rollout starts from an episode's real history and current frame; each chunk predicts the next
`num_frames - 1` frames of every view from the latest frames (real or predicted) and the chunk's
actions, then slides forward, as in upstream's interactive rollouts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worldtune.systems.ctrl_world import world_edm
from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import (
    CtrlWorldEpisode,
    load_stats,
    meta_info_path,
    normalise_actions,
    window_frame_ids,
)
from worldtune.systems.ctrl_world.recipe import decode_video, latent_space


@dataclass
class Rollout:
    prediction: torch.Tensor  # [T, C, V*h, w] predicted latents after the start frame
    target: torch.Tensor  # the episode's true latents for the same frames
    start: int  # index of the real current frame the rollout starts from


def episode_actions(cfg: CtrlWorldRunConfig, episode: CtrlWorldEpisode,
                    actions: np.ndarray | None = None) -> torch.Tensor:
    """Per-frame conditioning vectors [T, A], normalised to [-1, 1] with stat.json's p01 / p99."""
    raw = actions if actions is not None else (episode.states if cfg.data.action_key == "states"
                                               else episode.actions)
    stats = load_stats(meta_info_path(cfg.data))
    prefix = "state" if cfg.data.action_key == "states" else "action"
    return torch.as_tensor(normalise_actions(np.asarray(raw, dtype=np.float64), stats[f"{prefix}_01"],
                                             stats[f"{prefix}_99"]), dtype=torch.float32)


@torch.no_grad()
def rollout(model, cfg: CtrlWorldRunConfig, episode: CtrlWorldEpisode, chunks: int,
            actions: torch.Tensor | None = None, text_emb: torch.Tensor | None = None,
            seed: int = 0, start: int | None = None) -> Rollout:
    """`chunks` autoregressive chunks from real frame `start` (default: the first with a full history)."""
    d = cfg.data
    actions = actions if actions is not None else episode_actions(cfg, episode)
    first = _first_start(cfg)
    start = first if start is None else start
    if start < first:
        raise ValueError(f"episode {episode.episode_id}: start {start} has no full history (first is {first})")
    new_per_chunk = _new_frames_per_chunk(cfg)
    total = len(episode.latents)
    if start + chunks * new_per_chunk >= total or len(actions) < total:
        raise ValueError(f"episode {episode.episode_id}: {total} frames are too few for {chunks} chunks "
                         f"from frame {start}")
    frames = list(episode.latents[: start + 1].float())
    generator = torch.Generator().manual_seed(seed)
    for chunk in range(chunks):
        now = start + chunk * new_per_chunk
        ids = window_frame_ids(now, total, d.num_history, d.num_frames, d.history_stride, d.frame_stride)
        history = torch.stack([frames[i] for i in ids[: d.num_history + 1]])[None]
        future = world_edm.sample(model, cfg.model, d.num_history, history, actions[ids][None], text_emb, generator=generator)[0]
        frames.extend(fill_strided(frames[-1], future[1:], d.frame_stride))
    end = start + 1 + chunks * new_per_chunk
    return Rollout(torch.stack(frames[start + 1:end]), episode.latents[start + 1:end].float(), start)


def fill_strided(last: torch.Tensor, predicted: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """Predicted frames are `stride` apart; the frames between are linear blends (stride 1: none)."""
    out, previous = [], last
    for frame in predicted:
        out.extend(previous + (frame - previous) * (k / stride) for k in range(1, stride + 1))
        previous = frame
    return out


def _first_start(cfg: CtrlWorldRunConfig) -> int:
    """The first real frame with a full history in front of it."""
    return cfg.data.num_history * cfg.data.history_stride


def _new_frames_per_chunk(cfg: CtrlWorldRunConfig) -> int:
    return (cfg.data.num_frames - 1) * cfg.data.frame_stride


def rollout_starts(cfg: CtrlWorldRunConfig, length: int, chunks: int, count: int) -> list[int]:
    """Up to `count` evenly spaced real start frames of an episode of `length` frames for `chunks` chunks."""
    first = _first_start(cfg)
    last = length - 1 - chunks * _new_frames_per_chunk(cfg)
    if last < first:
        return []
    return sorted({int(round(x)) for x in np.linspace(first, last, max(1, count))})


def write_rollout_video(out: str | Path, cfg: CtrlWorldRunConfig, run: Rollout, fps: float = 5.0,
                        upscale: int = 1, view_names: list[str] | None = None) -> Path:
    """A labelled comparison: one row per camera, truth | prediction | |difference|, the first frame of
    every chunk marked; `upscale` repeats every pixel that many times each way (tiny frames are
    otherwise unreadable in a player)."""
    from worldtune.data.video_panels import comparison_panel
    from worldtune.data.video_write import write_video
    from worldtune.eval.metrics import split_views

    views = len(cfg.data.views)
    space = latent_space(cfg)
    truth = split_views(decode_video(space, run.target[None])[0], views)
    prediction = split_views(decode_video(space, run.prediction[None])[0], views)
    names = view_names or [f"view {v}" for v in cfg.data.views]
    chunk_starts = list(range(0, len(run.target), _new_frames_per_chunk(cfg)))
    return write_video(out, comparison_panel(truth, prediction, names, chunk_starts, upscale=upscale), fps=fps)


def data_config_for_episode(cfg: CtrlWorldRunConfig, episode_dir: str | Path):
    """The run's data config pointed at the dataset that holds `episode_dir` (flexiv layout)."""
    root = Path(episode_dir).parent
    if root.resolve() == Path(cfg.data.dataset_root).resolve():
        return cfg.data
    return dataclasses.replace(cfg.data, dataset_root=str(root))
