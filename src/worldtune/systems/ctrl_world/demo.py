"""`worldtune demo`: the whole Ctrl-World pipeline on the built-in robot simulator, on a CPU.

1. simulate episodes of a gripper moving blocks (two cameras, 7-D actions) -> ALOHA-style HDF5;
2. convert them into Ctrl-World's layout (lossless space-to-depth pixel latents);
3. train a tiny action-conditioned world model;
4. roll it out on held-out episodes and compare with two baselines: repeating the last frame, and
   the same model driven by another episode's actions (does the model use the actions?);
5. write `rollout.mp4` (ground truth beside prediction), `loss_curve.png` and `metrics.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from worldtune.utils.logging import get_logger

log = get_logger()

DEMO_DATASET = "sim"
DEMO_CAMERAS = ["cam_high", "cam_left_wrist"]

# The demo's world model (configs/ctrl_world/tiny.yaml plus these `model:` keys), measured on 2 CPU
# cores (docs/architecture.md, "The demo"): frame changes rather than frames (`residual`) with EDM scaled
# to their spread (`sigma_data`), trained around the one noise level it samples at (`p_mean`, `p_std`,
# `sigma_max`: one Euler step from sigma 5 gives the conditional mean), pose actions relative to the
# current frame (the gripper stays absolute), clean history and condition frames, 16-wide attention heads.
DEMO_MODEL: dict[str, Any] = {
    "residual": True, "normalise_views": True, "sigma_data": 0.2, "p_mean": 1.6, "p_std": 0.5, "sigma_max": 5.0,
    "relative_action_dims": [0, 1, 2, 3, 4, 5], "relative_action_scale": 8.0,
    "history_noise": 0.0, "cond_noise_max": 0.0, "tiny_num_attention_heads": 2, "still_prob": 0.1,
    "change_deadzone": 0.5,
}


def demo_config(out: Path, steps: int, image_size: int = 64, *, num_history: int = 0, num_frames: int = 3,
                views: int = 2, batch_size: int = 16, learning_rate: float = 1e-2, warmup_steps: int = 20,
                min_lr_ratio: float = 0.1, widths: tuple[int, ...] = (32, 64), cross_attention_dim: int = 32,
                action_widths: tuple[int, ...] = (64, 64), num_inference_steps: int = 2,
                guidance_scale: float = 1.25, cfg_drop: float = 0.05, action_key: str = "states",
                factor: int = 8, ema_decay: float | None = None,
                model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny Ctrl-World run of the demo (configs/ctrl_world/tiny.yaml with the demo's paths).

    Space-to-depth x8 of 64x64 views gives 192-channel 8x8 latents: a step costs what the 16 px demo's
    (x2, 12 channels) did, since only the UNet's first and last layers see the channels, while x4 at
    64 px (16x16 latents) costs 3.4 times as much; 1e-2 is the highest learning rate that
    stays stable; batch 16 beat batch 8 and 32 at equal compute. No history frame (upstream: 6): the
    model sees the current frame and the actions only, a step is a fifth cheaper than with one, and
    the motion must come from the actions (it cannot be extrapolated from past frames). Guidance 1.25
    (upstream ramps 1 -> 2 over the frames) makes the model follow the actions more closely.
    """
    return {
        "recipe": "ctrl_world", "output_dir": str(out / "run"), "seed": 0,
        "model": {"size": "tiny", "latent_space": "space_to_depth", "space_to_depth_factor": factor,
                  "latent_channels": 3 * factor * factor, "action_dim": 7, "text_cond": False,
                  "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                  "cfg_drop": cfg_drop, "tiny_block_out_channels": list(widths),
                  "tiny_cross_attention_dim": cross_attention_dim, "tiny_action_widths": list(action_widths),
                  **DEMO_MODEL, **(model_overrides or {})},
        "data": {"dataset_root": str(out / "sim_data"), "dataset_name": DEMO_DATASET,
                 "num_frames": num_frames,
                 "num_history": num_history, "views": list(range(views)), "action_key": action_key},
        "train": {"max_steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
                  "warmup_steps": warmup_steps, "lr_scheduler": "cosine", "min_lr_ratio": min_lr_ratio,
                  "weight_decay": 0.0, "max_grad_norm": 1.0, "ema_decay": ema_decay},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "validation": {"every_steps": 0},
        "log": {"log_frequency": 50, "tensorboard": False, "progress_bar": True},
        "dist": {"mixed_precision": "fp32"},
    }


def run_demo(out: str | Path = "runs/demo", *, episodes: int = 48, steps: int = 1200, image_size: int = 64,
             chunks: int = 2, eval_episodes: int = 8, eval_starts: int = 6, video_chunks: int = 4,
             fresh: bool = True, episode_steps: int = 120, fps_downsample: int = 3, cameras: tuple[str, ...] = tuple(DEMO_CAMERAS),
             num_objects: int | None = None, supersample: int = 2, table: str = "gradient",
             rotation: float = 0.0, world: str = "blocks", workers: int | None = None,
             policy_starts: int = 2, policy_chunks: int = 6, **train_settings: Any) -> dict[str, Any]:
    """Simulate, convert, train, evaluate; returns (and writes) `metrics.json`'s content.

    The simulator runs at 10 fps and the converter keeps every `fps_downsample`-th frame (a frame then
    shows visible motion); frames are rendered `supersample` times larger and averaged down (a
    checker that moves by less than a pixel would otherwise flicker). The policy moves the gripper without turning it (`rotation` 0;
    a turning wrist camera is hard for the tiny model). Rollouts of `chunks` chunks start at
    `eval_starts` frames spread over each of `eval_episodes` held-out episodes; `rollout.mp4` shows
    one of `video_chunks` chunks from mid-episode. `train_settings` go to `demo_config`
    (num_history, num_frames, batch_size, learning_rate, model_overrides, ...). `world` is the built-in
    robot simulator ("blocks") or a planar pushing world (`data/pushworld`: "textured", "clutter",
    "still"); `workers` processes simulate (default: one per usable core). In the blocks world the
    demo's scripted policies then run `policy_chunks` chunks from `policy_starts` held-out starts per
    evaluated episode, in imagination and in the simulator (0: skip).
    """
    from worldtune.config import build_config
    from worldtune.models.encoders.pixel import PixelLatents
    from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
    from worldtune.systems.ctrl_world.convert import convert_recordings
    from worldtune.systems.ctrl_world.evaluate import evaluate
    from worldtune.systems.ctrl_world.recipe import RECIPE
    from worldtune.train.loop import Trainer

    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = round(now - clock, 2)
        clock = now

    cameras = list(cameras)
    num_history, num_frames = train_settings.get("num_history", 0), train_settings.get("num_frames", 3)
    factor = train_settings.get("factor", 8)
    simulate_world(out / "raw", world, episodes, image_size=image_size, num_steps=episode_steps, cameras=cameras,
                   supersample=supersample, workers=workers, num_objects=num_objects, table=table, rotation=rotation)
    phase("simulation_s")
    convert_recordings(out / "raw", out / "sim_data", PixelLatents(patch=factor), dataset_name=DEMO_DATASET,
                       cameras=cameras, height=image_size, width=image_size, num_history=num_history,
                       num_frames=num_frames, val_ratio=0.2, seed=0, fps_downsample=fps_downsample)
    phase("conversion_s")
    run_config = demo_config(out, steps, image_size, views=len(cameras), **train_settings)
    cfg = build_config(CtrlWorldRunConfig, run_config, source="worldtune demo")
    Trainer(cfg, RECIPE).fit()
    phase("training_s")
    report = evaluate(out / "run", split="val", chunks=chunks, max_episodes=eval_episodes, starts=eval_starts)
    _write_example(out, cfg, video_chunks, image_size)
    phase("evaluation_s")
    if world == "blocks" and policy_starts > 0:
        from worldtune.systems.ctrl_world.demo_policies import POLICIES, reached_block
        from worldtune.systems.ctrl_world.demo_simulator import SimulatorSettings, rank_policies

        settings = SimulatorSettings(image_size, cameras, fps_downsample, supersample, table, rotation, num_objects)
        report["policies"] = rank_policies(out / "run", POLICIES, reached_block, settings, episodes=eval_episodes,
                                           starts=policy_starts, chunks=policy_chunks, video_dir=out / "policies")
        phase("policies_s")
    metrics = {**report, "episodes_evaluated": report.pop("episodes"), "episodes_simulated": episodes,
               "world": world, "image_size": image_size, "train_steps": steps, "phases": phases,
               "total_s": round(sum(phases.values()), 2)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    shutil.copy(out / "run" / "loss_curve.png", out / "loss_curve.png")
    return metrics


WORLDS = ("blocks", "textured", "clutter", "still")


def simulate_world(raw: Path, world: str, episodes: int, *, image_size: int, num_steps: int, cameras: list[str],
                   supersample: int, workers: int | None = None, **blocks_settings: Any) -> None:
    """`episodes` ALOHA-style HDF5 recordings of `world` in `raw` (dataset seed 0)."""
    from worldtune.data.pushworld import generate_push_dataset
    from worldtune.data.toyenv import generate_dataset
    from worldtune.utils.threads import usable_cores

    workers = workers or usable_cores()
    common = {"image_size": image_size, "num_steps": num_steps, "cameras": cameras, "supersample": supersample,
              "workers": workers}
    if world == "blocks":
        generate_dataset(raw, episodes, seed=0, **common, **blocks_settings)
    elif world in WORLDS:
        generate_push_dataset(raw, episodes, seed=0, world=world, **common)
    else:
        raise ValueError(f"unknown demo world {world!r}: expected one of {', '.join(WORLDS)}")


def _write_example(out: Path, cfg, chunks: int, image_size: int) -> None:
    from worldtune.systems.ctrl_world.dataset import load_episode
    from worldtune.systems.ctrl_world.evaluate import split_episode_ids
    from worldtune.systems.ctrl_world.recipe import RECIPE
    from worldtune.systems.ctrl_world.rollout import rollout, rollout_starts, write_rollout_video
    from worldtune.train.run import load_run

    loaded = load_run(out / "run", RECIPE)
    cfg, model = loaded.cfg, loaded.model()
    episode_id = split_episode_ids(cfg, "val")[0]
    episode = load_episode(cfg.data.dataset_root, episode_id, cfg.data.views, cfg.data.layout, split="val")
    starts = rollout_starts(cfg, len(episode.latents), chunks, 3)  # from mid-episode: the robot is moving
    run = rollout(model, cfg, episode, chunks, start=starts[len(starts) // 2])
    upscale = max(1, 128 // image_size)  # at least 128 px per view in the player
    write_rollout_video(out / "rollout.mp4", cfg, run, fps=4, upscale=upscale, view_names=episode.views)


def summary(metrics: dict[str, Any], out: Path) -> str:
    views = metrics.get("views") or [f"view {v}" for v in range(len(metrics["model"]["per_view"]))]
    rows = (("world model, true actions", "model"), ("repeat the last frame", "repeat_last_frame"),
            ("world model, other episode's", "other_actions"))
    lines = [
        "worldtune demo: an action-conditioned world model of a simulated robot, trained on this CPU",
        f"  {metrics['rollouts']} rollouts on {metrics['episodes_evaluated']} held-out episodes, "
        f"{metrics['chunks']} chunks each ({metrics['rollout_s_per_chunk']:.2f} s a chunk); PSNR dB / SSIM:",
        f"    {'':<30} {'mean':>13}" + "".join(f" {v[:16]:>17}" for v in views),
    ]
    for label, key in rows:
        row = metrics[key]
        lines.append(f"    {label:<30} {row['psnr']:6.2f} / {row['ssim']:.3f}"
                     + "".join(f" {v['psnr']:9.2f} / {v['ssim']:.3f}" for v in row["per_view"]))
    if metrics.get("worse_than_repeat"):
        lines.append("  WARNING: worse than repeating the last frame on " + ", ".join(metrics["worse_than_repeat"]))
    if "still_scene" in metrics:
        lines.append(f"  still scene (a held-out first frame held, nothing moves): PSNR {metrics['still_scene']['psnr']:.2f}")
    if "policies" in metrics:
        ranked = metrics["policies"]
        lines.append(f"  policies, success rate in imagination vs in the simulator ({ranked['episodes']} held-out starts, "
                     f"{ranked['chunks']} chunks, {ranked['imagined_episodes_per_minute']:.0f} imagined episodes a minute):")
        lines += [f"    {name:<30} imagined {rates['imagined']:.2f}   real {rates['real']:.2f}"
                  for name, rates in ranked["success"].items()]
    lines += [
        "  time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in metrics["phases"].items())
        + f" (total {metrics['total_s']:.0f}s)",
        f"  files: {out}/rollout.mp4 (per camera: truth | prediction | |difference|), {out}/loss_curve.png, "
        f"{out}/metrics.json",
    ]
    return "\n".join(lines)
