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
    "residual": True, "sigma_data": 0.2, "p_mean": 1.6, "p_std": 0.5, "sigma_max": 5.0,
    "relative_action_dims": [0, 1, 2, 3, 4, 5], "relative_action_scale": 8.0,
    "history_noise": 0.0, "cond_noise_max": 0.0, "tiny_num_attention_heads": 2,
}


def demo_config(out: Path, steps: int, image_size: int = 16, *, num_history: int = 0, num_frames: int = 3,
                views: int = 2, batch_size: int = 16, learning_rate: float = 1e-2, warmup_steps: int = 20,
                min_lr_ratio: float = 0.1, widths: tuple[int, ...] = (32, 64), cross_attention_dim: int = 32,
                action_widths: tuple[int, ...] = (64, 64), num_inference_steps: int = 2,
                guidance_scale: float = 1.25, cfg_drop: float = 0.05, action_key: str = "states",
                factor: int = 2, ema_decay: float | None = None,
                model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tiny Ctrl-World run of the demo (configs/ctrl_world/tiny.yaml with the demo's paths).

    Space-to-depth x2 of 16x16 views gives 12-channel 8x8 latents (x4's 48 channels are wider than
    the UNet's 32-wide first block and learn much slower); 1e-2 is the highest learning rate that
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


def run_demo(out: str | Path = "runs/demo", *, episodes: int = 48, steps: int = 900, image_size: int = 16,
             chunks: int = 2, eval_episodes: int = 8, eval_starts: int = 6, video_chunks: int = 4,
             fresh: bool = True, episode_steps: int = 120, fps_downsample: int = 3, cameras: tuple[str, ...] = tuple(DEMO_CAMERAS),
             num_objects: int | None = None, supersample: int = 4, table: str = "gradient",
             rotation: float = 0.0, **train_settings: Any) -> dict[str, Any]:
    """Simulate, convert, train, evaluate; returns (and writes) `metrics.json`'s content.

    The simulator runs at 10 fps and the converter keeps every `fps_downsample`-th frame (a frame then
    shows visible motion); frames are rendered `supersample` times larger and averaged down (a 16-pixel
    checker would otherwise flicker). The policy moves the gripper without turning it (`rotation` 0;
    a turning wrist camera is hard for the tiny model). Rollouts of `chunks` chunks start at
    `eval_starts` frames spread over each of `eval_episodes` held-out episodes; `rollout.mp4` shows
    one of `video_chunks` chunks from mid-episode. `train_settings` go to `demo_config`
    (num_history, num_frames, batch_size, learning_rate, model_overrides, ...).
    """
    from worldtune.config import build_config
    from worldtune.data.toyenv import generate_dataset
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
    factor = train_settings.get("factor", 2)
    generate_dataset(out / "raw", episodes, seed=0, image_size=image_size, num_steps=episode_steps,
                     cameras=cameras, num_objects=num_objects, supersample=supersample, table=table,
                     rotation=rotation)
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
    _write_example(out, cfg, video_chunks)
    phase("evaluation_s")
    metrics = {**report, "episodes_evaluated": report.pop("episodes"), "episodes_simulated": episodes,
               "train_steps": steps, "phases": phases, "total_s": round(sum(phases.values()), 2)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    shutil.copy(out / "run" / "loss_curve.png", out / "loss_curve.png")
    return metrics


def _write_example(out: Path, cfg, chunks: int) -> None:
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
    write_rollout_video(out / "rollout.mp4", cfg, run, fps=4, upscale=8)  # 16 px views -> 128 px


def summary(metrics: dict[str, Any], out: Path) -> str:
    model, still, other = metrics["model"], metrics["repeat_last_frame"], metrics["other_actions"]
    lines = [
        "worldtune demo: an action-conditioned world model of a simulated robot, trained on this CPU",
        f"  {metrics['rollouts']} rollouts on {metrics['episodes_evaluated']} held-out episodes, "
        f"{metrics['chunks']} chunks each ({metrics['rollout_s_per_chunk']:.2f} s a chunk):",
        f"    world model, true actions      PSNR {model['psnr']:6.2f} dB  SSIM {model['ssim']:.3f}",
        f"    repeat the last frame          PSNR {still['psnr']:6.2f} dB  SSIM {still['ssim']:.3f}",
        f"    world model, other episode's   PSNR {other['psnr']:6.2f} dB  SSIM {other['ssim']:.3f}",
        "  time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in metrics["phases"].items())
        + f" (total {metrics['total_s']:.0f}s)",
        f"  files: {out}/rollout.mp4 (truth | prediction), {out}/loss_curve.png, {out}/metrics.json",
    ]
    return "\n".join(lines)
