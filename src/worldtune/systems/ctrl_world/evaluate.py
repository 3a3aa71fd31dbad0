"""`worldtune eval ctrl-world`: rollout PSNR / SSIM per view on a split, against two baselines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.eval.metrics import view_metrics
from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import CtrlWorldEpisode, load_episode, meta_info_path
from worldtune.systems.ctrl_world.recipe import RECIPE, decode_video, latent_space
from worldtune.systems.ctrl_world.rollout import Rollout, episode_actions, rollout, rollout_starts
from worldtune.train.run import load_run


def evaluate(run_dir: str | Path, *, split: str = "val", chunks: int = 2, max_episodes: int | None = None,
             baselines: bool = True, seed: int = 0, starts: int = 1) -> dict[str, Any]:
    """Rollout PSNR / SSIM per view on a split's episodes; with `baselines`, also for repeating the
    last real frame and for the same model driven by another episode's actions.

    `starts` rollouts per episode begin at evenly spaced frames (1: only at the first frame with a full
    history; the start of a recording is often the robot at rest, where repeating a frame is hard to beat).
    """
    run = load_run(run_dir, RECIPE)
    cfg, model = run.cfg, run.model()
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




def report_table(report: dict[str, Any]) -> str:
    """PSNR / SSIM of the model and each baseline: mean, then per view."""
    names = [n for n in ("model", "repeat_last_frame", "other_actions") if n in report]
    views = len(report["model"]["per_view"])
    header = f"{'':<20} {'PSNR':>7} {'SSIM':>6}" + "".join(f" {'view ' + str(v) + ' PSNR':>12}" for v in range(views))
    lines = [f"{report['split']} split: {report['episodes']} episodes, {report['rollouts']} rollouts of "
             f"{report['chunks']} chunks ({report['rollout_s_per_chunk']} s a chunk)", header]
    for name in names:
        row = report[name]
        lines.append(f"{name:<20} {row['psnr']:>7.2f} {row['ssim']:>6.3f}"
                     + "".join(f" {view['psnr']:>12.2f}" for view in row["per_view"]))
    return "\n".join(lines)
