"""`worldtune eval physics RUN --split val`: the heads on held-out scenes against their baselines,
and the video loss of the trained DiT against the base it started from.

- motion: end-point error (pixels of the output frames) of the heads and of predicting no motion;
- depth: AbsRel and delta < 1.25 of the heads and of each clip's median true depth;
- video: the flow-matching loss at sigma 0.25, 0.5, 0.75 (fixed noise) with the run's weights and
  with the base model alone (`video/base_mse_loss`): stage 2 should lower it.
Heads are read at `model.eval_timestep`. `--videos DIR` writes true | predicted panels per scene.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from worldtune.data.formats.sim_physics import SimPhysicsDataset
from worldtune.systems.physics.recipe import RECIPE, at_latent_grid, head_metrics
from worldtune.utils.device import default_device

SIGMAS = (0.25, 0.5, 0.75)


@torch.no_grad()
def evaluate(run_dir: str | Path, split: str = "val", videos: str | Path | None = None) -> dict[str, Any]:
    from worldtune.train.data import move_to_device
    from worldtune.train.run import load_run

    run = load_run(run_dir, RECIPE)
    cfg, device = run.cfg, default_device()
    dataset = SimPhysicsDataset(dataclasses.replace(cfg.data, split=split))
    trained = _parts(cfg, run.weights(), device)
    base = _parts(cfg, None, device)
    rows: list[dict[str, float]] = []
    for index in range(len(dataset)):
        batch = move_to_device(_collate([dataset[index]]), device)
        row = _heads(trained, batch, videos, dataset.scenes[index][0].scene, cfg.validation.fps)
        row["video/mse_loss"] = _video_loss(trained, batch)
        row["video/base_mse_loss"] = _video_loss(base, batch)
        rows.append(row)
    metrics = _mean_over_scenes(rows)
    return {"run": str(run_dir), "split": split, "scenes": len(rows), "metrics": metrics}


def _mean_over_scenes(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the scenes that have it (a scene with nothing moving has no
    moving-pixel EPE)."""
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}


def _parts(cfg, weights, device):
    parts = RECIPE.build_models(cfg, dit_weights=weights)
    parts.model.to(device).eval()
    for module in parts.frozen.values():
        module.to(device)
    return parts


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor) else [it[k] for it in items]
            for k in items[0]}


def _heads(parts, batch, videos, scene: str, fps: int) -> dict[str, float]:
    sigma = torch.full((1,), parts.cfg.model.eval_timestep / 1000.0, device=batch["video"].device)
    torch.manual_seed(0)
    _, _, out = RECIPE.forward(parts, batch, sigma=sigma, drop_text=False)
    if not parts.cfg.model.full_res_heads:
        batch = at_latent_grid(batch, tuple(out.motion.shape[-2:]))
    motion, log_depth = RECIPE.heads_at_targets(parts, out, batch)
    if videos:
        from worldtune.data.video_write import side_by_side, write_video
        from worldtune.systems.physics.visualise import physics_panels

        truth = physics_panels(batch["motion"], batch["depth"])[0].cpu()
        predicted = physics_panels(motion, log_depth.exp())[0].cpu()
        write_video(Path(videos) / f"{scene.replace('/', '__')}.mp4", side_by_side(truth, predicted), fps=fps)
    return head_metrics(motion, log_depth, batch)


def _video_loss(parts, batch) -> float:
    from worldtune.diffusion.flow_matching import flow_matching_loss, ti2v_loss_mask

    losses = []
    for sigma in SIGMAS:
        torch.manual_seed(0)  # the same noise for the trained and the base model
        x0, noise, out = RECIPE.forward(parts, batch, sigma=torch.full((1,), sigma, device=batch["video"].device),
                                        drop_text=False)
        losses.append(float(flow_matching_loss(out.sample, x0, noise, mask=ti2v_loss_mask(x0.shape, device=x0.device))))
    return sum(losses) / len(losses)


def table(report: dict[str, Any]) -> str:
    m = report["metrics"]
    lines = [f"Sim-Physics heads on {report['split']} ({report['scenes']} scenes)",
             f"  motion EPE (px)      {m['motion/epe']:9.4f}   zero motion {m['motion/zero_epe']:9.4f}",
             *([f"    moving pixels      {m['motion/epe_moving']:9.4f}   zero motion {m['motion/zero_epe_moving']:9.4f}"]
               if "motion/epe_moving" in m else []),
             *([f"    still pixels       {m['motion/epe_still']:9.4f}   zero motion    0.0000"]
               if "motion/epe_still" in m else []),
             f"  depth AbsRel         {m['depth/abs_rel']:9.4f}   clip median {m['depth/median_abs_rel']:9.4f}",
             f"  depth delta<1.25     {m['depth/delta1']:9.4f}   clip median {m['depth/median_delta1']:9.4f}",
             f"  video loss           {m['video/mse_loss']:9.4f}   base model  {m['video/base_mse_loss']:9.4f}"]
    return "\n".join(lines)
