"""Ctrl-World's jobs besides training: autoregressive rollouts and their evaluation (PSNR / SSIM).

A rollout starts from an episode's real history and current frame; each chunk predicts the next
`num_frames - 1` frames of every view from the latest frames (real or predicted) and the chunk's
actions, then slides forward, as in upstream's interactive rollouts.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.config import build_config, read_yaml
from worldtune.data.formats.ctrl_world import (
    CtrlWorldEpisode,
    load_episode,
    load_stats,
    meta_info_path,
    normalise_actions,
    window_frame_ids,
)
from worldtune.recipes.ctrl_world import CtrlWorldRunConfig, build_world_model, decode_video, latent_space
from worldtune.train.export import find_checkpoint, load_weights


def load_run(run_dir: str | Path, ema: bool | None = None) -> tuple[CtrlWorldRunConfig, torch.nn.Module]:
    """A trained world model from a run directory (its config and newest complete checkpoint).

    `ema` (default: whether the run kept one, `train.ema_decay`) puts the EMA weights over the trained ones.
    """
    cfg = build_config(CtrlWorldRunConfig, read_yaml(Path(run_dir) / "config.yaml"), source=str(run_dir))
    model = build_world_model(cfg)
    path = find_checkpoint(run_dir)
    model.load_state_dict(load_weights(path))
    if cfg.train.ema_decay if ema is None else ema:
        model.load_state_dict(load_weights(path, "ema"), strict=False)
    return cfg, model.eval()


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
        future = model.sample(history, actions[ids][None], text_emb, num_inference_steps=cfg.model.num_inference_steps,
                              guidance_scale=cfg.model.guidance_scale, generator=generator)[0]
        frames.extend(_fill_strided(frames[-1], future[1:], d.frame_stride))
    end = start + 1 + chunks * new_per_chunk
    return Rollout(torch.stack(frames[start + 1:end]), episode.latents[start + 1:end].float(), start)


def _fill_strided(last: torch.Tensor, predicted: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """Predicted frames are `stride` apart; the frames between are linear blends (stride 1: none)."""
    out, previous = [], last
    for frame in predicted:
        out.extend(previous + (frame - previous) * (k / stride) for k in range(1, stride + 1))
        previous = frame
    return out


# ----------------------------------------------------------------------------- metrics


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR in dB over frames of videos in [-1, 1] (pixel range 2)."""
    mse = ((prediction - target) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def ssim(prediction: torch.Tensor, target: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM over frames [T, 3, H, W] in [-1, 1], Gaussian window (sigma 1.5), per channel."""
    x, y = (prediction + 1) / 2, (target + 1) / 2
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, kernel, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def view_metrics(prediction: torch.Tensor, target: torch.Tensor, views: int) -> list[dict[str, float]]:
    """PSNR / SSIM per view of decoded videos [3, T, V*H, W] (views stacked along height)."""
    rows = []
    for pred_view, true_view in zip(prediction.chunk(views, dim=2), target.chunk(views, dim=2), strict=True):
        p, t = pred_view.permute(1, 0, 2, 3), true_view.permute(1, 0, 2, 3)
        rows.append({"psnr": psnr(p, t), "ssim": ssim(p, t)})
    return rows


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


def evaluate(run_dir: str | Path, *, split: str = "val", chunks: int = 2, max_episodes: int | None = None,
             baselines: bool = True, seed: int = 0, starts: int = 1) -> dict[str, Any]:
    """Rollout PSNR / SSIM per view on a split's episodes; with `baselines`, also for repeating the
    last real frame and for the same model driven by another episode's actions.

    `starts` rollouts per episode begin at evenly spaced frames (1: only at the first frame with a full
    history; the start of a recording is often the robot at rest, where repeating a frame is hard to beat).
    """
    cfg, model = load_run(run_dir)
    episodes = [load_episode(cfg.data.dataset_root, e, cfg.data.views, cfg.data.layout, split=split)
                for e in split_episode_ids(cfg, split)[:max_episodes]]
    if not episodes:
        raise ValueError(f"{cfg.data.dataset_root}: no {split} episodes to evaluate")
    space = latent_space(cfg)
    results: dict[str, list] = {"model": [], "repeat_last_frame": [], "other_actions": []}
    timing: list[float] = []
    for index, episode in enumerate(episodes):
        other = episodes[(index + 1) % len(episodes)] if len(episodes) > 1 else episode
        swapped = _resized(episode_actions(cfg, other), len(episode.latents))
        for start in rollout_starts(cfg, len(episode.latents), chunks, starts):
            clock = time.perf_counter()
            run = rollout(model, cfg, episode, chunks, seed=seed, start=start)
            timing.append(time.perf_counter() - clock)
            _score_rollout(results, space, model, cfg, episode, run, chunks, swapped if baselines else None,
                           seed)
    if not results["model"]:
        raise ValueError(f"{cfg.data.dataset_root}: no {split} episode is long enough for {chunks} chunks")
    return {"split": split, "episodes": len(episodes), "chunks": chunks, "rollouts": len(results["model"]),
            "rollout_s_per_chunk": round(float(np.sum(timing)) / (len(timing) * chunks), 4),
            **{name: _average(rows) for name, rows in results.items() if rows}}


def _score_rollout(results: dict[str, list], space, model, cfg: CtrlWorldRunConfig, episode: CtrlWorldEpisode,
                   run: Rollout, chunks: int, other_actions: torch.Tensor | None, seed: int) -> None:
    """Append a rollout's per-view metrics (and, given `other_actions`, the two baselines' from its start)."""
    views = len(cfg.data.views)
    target = decode_video(space, run.target[None])[0]

    def score(latents: torch.Tensor) -> list[dict[str, float]]:
        return view_metrics(decode_video(space, latents[None])[0], target, views)

    results["model"].append(score(run.prediction))
    if other_actions is None:
        return
    results["repeat_last_frame"].append(score(episode.latents[run.start].float().expand_as(run.target)))
    swapped = rollout(model, cfg, episode, chunks, actions=other_actions, seed=seed, start=run.start)
    results["other_actions"].append(score(swapped.prediction))


def split_episode_ids(cfg: CtrlWorldRunConfig, split: str) -> list[Any]:
    """The episode ids of a split, from its `<split>_sample.json`, in first-seen order."""
    import json

    samples = json.loads((meta_info_path(cfg.data) / f"{split}_sample.json").read_text())
    return list(dict.fromkeys(sample["episode_id"] for sample in samples))


def _resized(actions: torch.Tensor, length: int) -> torch.Tensor:
    """Another episode's actions cut or padded (last row repeated) to this episode's length."""
    if len(actions) >= length:
        return actions[:length]
    return torch.cat([actions, actions[-1:].expand(length - len(actions), -1)])


def _average(per_episode: list[list[dict[str, float]]]) -> dict[str, Any]:
    views = len(per_episode[0])
    per_view = [{k: float(np.mean([ep[v][k] for ep in per_episode])) for k in ("psnr", "ssim")}
                for v in range(views)]
    return {"per_view": per_view, "psnr": float(np.mean([v["psnr"] for v in per_view])),
            "ssim": float(np.mean([v["ssim"] for v in per_view]))}


def write_rollout_video(out: str | Path, cfg: CtrlWorldRunConfig, run: Rollout, fps: float = 5.0,
                        upscale: int = 1) -> Path:
    """Ground truth beside the prediction, all views stacked along height; `upscale` repeats every
    pixel that many times each way (tiny frames are otherwise unreadable in a player)."""
    from worldtune.data.video_write import side_by_side, write_video

    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    space = latent_space(cfg)
    video = side_by_side(decode_video(space, run.target[None])[0], decode_video(space, run.prediction[None])[0])
    video = video.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    return write_video(out, video, fps=fps)


def data_config_for_episode(cfg: CtrlWorldRunConfig, episode_dir: str | Path):
    """The run's data config pointed at the dataset that holds `episode_dir` (flexiv layout)."""
    root = Path(episode_dir).parent
    if root.resolve() == Path(cfg.data.dataset_root).resolve():
        return cfg.data
    return dataclasses.replace(cfg.data, dataset_root=str(root))
