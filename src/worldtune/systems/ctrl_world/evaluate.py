"""`worldtune eval ctrl-world`: rollout PSNR / SSIM per view on a split, against two baselines."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.eval.fvd import VideoFeatures, frechet_distance, gaussian
from worldtune.eval.lpips import LPIPS
from worldtune.eval.metrics import split_views, view_metrics
from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import CtrlWorldEpisode, load_episode, meta_info_path
from worldtune.systems.ctrl_world.recipe import RECIPE, decode_video, latent_space
from worldtune.systems.ctrl_world.rollout import Rollout, episode_actions, rollout, rollout_starts
from worldtune.train.run import load_run

METHODS = ("model", "repeat_last_frame", "other_actions")


@dataclass
class Perceptual:
    """Optional perceptual metrics, from network weights the user supplies (nothing is downloaded)."""

    lpips: LPIPS | None = None
    fvd: VideoFeatures | None = None

    @classmethod
    def from_files(cls, lpips_backbone: str | None = None, lpips_linear: str | None = None,
                   fvd_network: str | None = None) -> Perceptual:
        if (lpips_backbone is None) != (lpips_linear is None):
            raise ValueError("LPIPS needs both weight files: --lpips_backbone (AlexNet) and --lpips_linear")
        lpips = LPIPS.from_files(lpips_backbone, lpips_linear) if lpips_backbone else None
        return cls(lpips, VideoFeatures(fvd_network) if fvd_network else None)


class _Scores:
    """Per-rollout, per-view metrics of each method, and (for FVD) each view's video features."""

    def __init__(self, space, views: int, perceptual: Perceptual) -> None:
        self.space, self.views, self.perceptual = space, views, perceptual
        self.rows: dict[str, list[list[dict[str, float]]]] = {name: [] for name in METHODS}
        self.features: dict[str, list[list[torch.Tensor]]] = {name: [] for name in ("truth", *METHODS)}

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_video(self.space, latents[None])[0]

    def add(self, name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Score one decoded video [3, T, V*H, W] against the truth."""
        self.rows[name].append(view_metrics(prediction, target, self.views, self.perceptual.lpips))
        if self.perceptual.fvd is not None:
            self.features[name].append([self.perceptual.fvd(v[None])[0] for v in split_views(prediction, self.views)])

    def add_truth(self, target: torch.Tensor) -> None:
        if self.perceptual.fvd is not None:
            self.features["truth"].append([self.perceptual.fvd(v[None])[0] for v in split_views(target, self.views)])

    def summary(self) -> dict[str, Any]:
        out = {}
        for name, rows in self.rows.items():
            if rows:
                out[name] = _average(rows)
                if self.features[name]:
                    _add_fvd(out[name], self.features["truth"], self.features[name])
        return out


def evaluate(run_dir: str | Path, *, split: str = "val", chunks: int = 2, max_episodes: int | None = None,
             baselines: bool = True, seed: int = 0, starts: int = 1,
             perceptual: Perceptual | None = None) -> dict[str, Any]:
    """Rollout PSNR / SSIM per view on a split's episodes (and LPIPS / FVD with `perceptual`); with
    `baselines`, also for repeating the last real frame and for the same model driven by another
    episode's actions.

    `starts` rollouts per episode begin at evenly spaced frames (1: only at the first frame with a full
    history; the start of a recording is often the robot at rest, where repeating a frame is hard to beat).
    """
    run = load_run(run_dir, RECIPE)
    cfg, model = run.cfg, run.model()
    episodes = [load_episode(cfg.data.dataset_root, e, cfg.data.views, cfg.data.layout, split=split)
                for e in split_episode_ids(cfg, split)[:max_episodes]]
    if not episodes:
        raise ValueError(f"{cfg.data.dataset_root}: no {split} episodes to evaluate")
    scores = _Scores(latent_space(cfg), len(cfg.data.views), perceptual or Perceptual())
    timing: list[float] = []
    for index, episode in enumerate(episodes):
        other = episodes[(index + 1) % len(episodes)] if len(episodes) > 1 else episode
        swapped = _resized(episode_actions(cfg, other), len(episode.latents))
        for start in rollout_starts(cfg, len(episode.latents), chunks, starts):
            clock = time.perf_counter()
            result = rollout(model, cfg, episode, chunks, seed=seed, start=start)
            timing.append(time.perf_counter() - clock)
            _score_rollout(scores, model, cfg, episode, result, chunks, swapped if baselines else None, seed)
    if not scores.rows["model"]:
        raise ValueError(f"{cfg.data.dataset_root}: no {split} episode is long enough for {chunks} chunks")
    still = _Scores(scores.space, scores.views, Perceptual())
    for episode in episodes:  # nothing moves: the model must keep the scene as it is
        frozen = still_episode(cfg, episode, chunks)
        result = rollout(model, cfg, frozen, chunks, seed=seed)
        still.add("model", still.decode(result.prediction), still.decode(result.target))
    report = {"split": split, "episodes": len(episodes), "chunks": chunks, "rollouts": len(scores.rows["model"]),
              "rollout_s_per_chunk": round(float(np.sum(timing)) / (len(timing) * chunks), 4),
              "views": episodes[0].views, **scores.summary(), "still_scene": still.summary()["model"]}
    return {**report, **margins(report)}


def still_episode(cfg: CtrlWorldRunConfig, episode: CtrlWorldEpisode, chunks: int,
                  start: int | None = None) -> CtrlWorldEpisode:
    """`episode` frozen at frame `start` (default: the first with a full history): every frame, state and
    action that frame's, as long as `chunks` chunks need; a recording in which nothing moves."""
    first = cfg.data.num_history * cfg.data.history_stride
    start = first if start is None else start
    length = first + 1 + chunks * (cfg.data.num_frames - 1) * max(cfg.data.frame_stride, 1)

    def held(values):
        return None if values is None else np.repeat(np.asarray(values)[start : start + 1], length, axis=0)

    latents = episode.latents[start : start + 1].expand(length, *episode.latents.shape[1:]).clone()
    return dataclasses.replace(episode, latents=latents, states=held(episode.states), actions=held(episode.actions))


def margins(report: dict[str, Any]) -> dict[str, Any]:
    """The model's PSNR margin over each baseline, overall and per view, and the views where it is worse
    than repeating the last frame (a world model should never lose to doing nothing)."""
    if "model" not in report:
        return {}
    out: dict[str, Any] = {"margins": {}}
    for baseline in METHODS[1:]:
        if baseline in report:
            per_view = [m["psnr"] - b["psnr"] for m, b in zip(report["model"]["per_view"],
                                                              report[baseline]["per_view"], strict=True)]
            out["margins"][baseline] = {"psnr": report["model"]["psnr"] - report[baseline]["psnr"],
                                        "per_view": per_view}
    if "repeat_last_frame" in out["margins"]:
        views = report.get("views") or [f"view {v}" for v in range(len(report["model"]["per_view"]))]
        out["worse_than_repeat"] = [name for name, margin in
                                    zip(views, out["margins"]["repeat_last_frame"]["per_view"], strict=True)
                                    if margin < 0]
    return out


def _score_rollout(scores: _Scores, model, cfg: CtrlWorldRunConfig, episode: CtrlWorldEpisode, run: Rollout,
                   chunks: int, other_actions: torch.Tensor | None, seed: int) -> None:
    """Score a rollout (and, given `other_actions`, the two baselines from its start)."""
    target = scores.decode(run.target)
    scores.add_truth(target)
    scores.add("model", scores.decode(run.prediction), target)
    if other_actions is None:
        return
    scores.add("repeat_last_frame", scores.decode(episode.latents[run.start].float().expand_as(run.target)), target)
    swapped = rollout(model, cfg, episode, chunks, actions=other_actions, seed=seed, start=run.start)
    scores.add("other_actions", scores.decode(swapped.prediction), target)


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


def _average(per_rollout: list[list[dict[str, float]]]) -> dict[str, Any]:
    views, keys = len(per_rollout[0]), list(per_rollout[0][0])
    per_view = [{k: float(np.mean([rollout[v][k] for rollout in per_rollout])) for k in keys} for v in range(views)]
    return {"per_view": per_view, **{k: float(np.mean([v[k] for v in per_view])) for k in keys}}


def _add_fvd(row: dict[str, Any], truth: list[list[torch.Tensor]], generated: list[list[torch.Tensor]]) -> None:
    """FVD per view over all rollouts (the truth's features against the method's), and their mean."""
    if len(truth) < 2:
        return  # a covariance needs two videos
    for view, entry in enumerate(row["per_view"]):
        real = torch.stack([features[view] for features in truth])
        fake = torch.stack([features[view] for features in generated])
        entry["fvd"] = frechet_distance(*gaussian(real), *gaussian(fake))
    row["fvd"] = float(np.mean([entry["fvd"] for entry in row["per_view"]]))


def report_table(report: dict[str, Any]) -> str:
    """PSNR / SSIM of the model and each baseline, overall and per view; the margins over each baseline;
    a warning naming every view where the model loses to repeating the last frame."""
    names = [n for n in METHODS if n in report]
    views = report.get("views") or [f"view {v}" for v in range(len(report["model"]["per_view"]))]
    extra = [k for k in ("lpips", "fvd") if k in report["model"]]
    header = (f"{'':<20} {'PSNR':>7} {'SSIM':>6}" + "".join(f" {k.upper():>7}" for k in extra)
              + "".join(f" {name[:14] + ' PSNR/SSIM':>25}" for name in views))
    lines = [f"{report['split']} split: {report['episodes']} episodes, {report['rollouts']} rollouts of "
             f"{report['chunks']} chunks ({report['rollout_s_per_chunk']} s a chunk)", header]
    for name in names:
        row = report[name]
        lines.append(f"{name:<20} {row['psnr']:>7.2f} {row['ssim']:>6.3f}"
                     + "".join(f" {row.get(k, float('nan')):>7.4g}" for k in extra)
                     + "".join(f" {view['psnr']:>18.2f} {view['ssim']:>6.3f}" for view in row["per_view"]))
    for baseline, margin in report.get("margins", {}).items():
        lines.append(f"model - {baseline}: {margin['psnr']:+.2f} dB (per view: "
                     + ", ".join(f"{v} {m:+.2f}" for v, m in zip(views, margin["per_view"], strict=True)) + ")")
    if "still_scene" in report:
        still = report["still_scene"]
        lines.append(f"still scene (each episode's first frame held, nothing moves): PSNR {still['psnr']:.2f} "
                     "(per view: " + ", ".join(f"{v} {row['psnr']:.2f}" for v, row in
                                             zip(views, still["per_view"], strict=True)) + ")")
    if report.get("worse_than_repeat"):
        lines.append("WARNING: the model is worse than repeating the last frame on "
                     + ", ".join(report["worse_than_repeat"]))
    return "\n".join(lines)
