"""Does self forcing reduce the error of long rollouts against teacher forcing, at equal steps? (issue 15)

Trains the Vidarc recipe (`vidarc_tiny.yaml` at the `small-ti2v` size: 256 wide, 4 blocks) twice
from the same start, `self_forcing.mode=teacher` and `=self`, on episodes of a bright square
moving at constant velocity and bouncing off the walls (the future follows from the past), then
rolls both out through the KV cache from the first frame of every held-out clip and prints the
latent MSE to the ground truth per latent frame, beside repeating the first frame: exposure bias
(a model trained only on clean context meeting its own errors) shows as an error that grows along
the rollout.

    .venv/bin/python benchmarks/vidarc_self_forcing.py                      # ~5 min on 2 cores
    .venv/bin/python benchmarks/vidarc_self_forcing.py --steps 600 --frames 33 --out runs/sf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402

from worldtune.cli import main as cli  # noqa: E402
from worldtune.data.video_write import write_video  # noqa: E402
from worldtune.systems import load_config, train_run  # noqa: E402
from worldtune.systems.vidarc.recipe import RECIPE  # noqa: E402
from worldtune.systems.vidarc.stream import CausalSession  # noqa: E402
from worldtune.train.run import load_run  # noqa: E402

CONFIG = REPO / "configs" / "vidar" / "vidarc_tiny.yaml"
SIZE = 128  # pixels: 8x8 latents with the Wan2.2 VAE's stride 16


def write_bouncing_squares(root: Path, episodes: int, frames: int, seed: int = 0) -> None:
    """Vidar-layout episodes: a square at constant velocity over a dark floor, bouncing off the walls."""
    rng = np.random.default_rng(seed)
    side = 24
    for e in range(episodes):
        folder = root / "episodes" / f"ep_{e:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        pos, vel = rng.uniform(0, SIZE - side, 2), rng.uniform(3, 6, 2) * rng.choice([-1, 1], 2)
        video = np.full((frames, SIZE, SIZE, 3), 30, np.uint8)
        for t in range(frames):
            x, y = pos.astype(int)
            video[t, y : y + side, x : x + side] = (230, 180, 40)
            pos = pos + vel
            for k in range(2):
                if not 0 <= pos[k] <= SIZE - side:
                    vel[k] = -vel[k]
                    pos[k] = np.clip(pos[k], 0, SIZE - side)
        write_video(folder / "video.mp4", video, fps=10)
        np.save(folder / "actions.npy", np.zeros((frames, 14), np.float32))
        (folder / "instruction.txt").write_text("the square moves\n")


@torch.no_grad()
def rollout_errors(run_dir: Path, max_clips: int) -> torch.Tensor:
    """Mean latent MSE per latent frame of cached rollouts from each val clip's first frame."""
    run = load_run(run_dir, RECIPE)
    cfg = run.cfg
    parts = RECIPE.build_models(cfg, dit_weights=run.weights())
    parts.model.eval()
    dataset = RECIPE.dataset(cfg, "val")
    errors, still = [], []
    for i in range(min(len(dataset), max_clips)):
        item = dataset[i]
        batch = {"video": item["video"][None], "prompt": [item["prompt"]]}
        x1, text = RECIPE.encode(parts, batch)
        torch.manual_seed(i)
        session = CausalSession(parts.model, parts.model.text_kv(text), None, cfg.model.sampling, x1[:, :, :1],
                                kv_cache_length=cfg.self_forcing.kv_cache_length)
        while session.next_frame < x1.shape[2]:
            session.step()
        errors.append(((session.latents() - x1) ** 2).mean(dim=(0, 1, 3, 4)))
        still.append(((x1[:, :, :1] - x1) ** 2).mean(dim=(0, 1, 3, 4)))
    return torch.stack(errors).mean(0), torch.stack(still).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/vidarc_self_forcing")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--frames", type=int, default=33, help="4k+1 video frames per clip (33: 9 latent frames)")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--clips", type=int, default=8, help="held-out clips rolled out")
    args = parser.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").exists():
        write_bouncing_squares(data, args.episodes, args.frames + 8)
        cli(["prepare", "manifest", str(data), "--val_ratio", "0.25"])
    latent_frames = (args.frames - 1) // 4 + 1
    common = [f"data.data_dir={data}", f"data.num_frames={args.frames}", f"data.height={SIZE}", f"data.width={SIZE}",
              "model.size=small-ti2v", "data.clip_sampling=random", "train.batch_size=4", f"train.max_steps={args.steps}",
              f"self_forcing.chunk_size={latent_frames}", "checkpoint.every_steps=0", "validation.every_steps=0",
              "train.learning_rate=1e-3", "train.warmup_steps=20", "model.sampling.num_inference_steps=4",
              "model.sampling.guidance_scale=1.0", "log.progress_bar=false",
              f"self_forcing.kv_cache_length={latent_frames}"]
    results = {}
    for mode in ("teacher", "self"):
        run = out / mode
        if not (run / "checkpoints").exists():
            train_run(load_config(CONFIG, [*common, f"output_dir={run}", f"self_forcing.mode={mode}"]))
        results[mode], still = rollout_errors(run, args.clips)
    results["repeat first frame"] = still
    print(f"\nVidarc tiny, {args.steps} steps each, rollouts of {latent_frames} latent frames from "
          f"{args.clips} held-out clips; latent MSE to the ground truth per frame (frame 0 is given):")
    print(f"{'frame':>6}" + "".join(f"{i:>8}" for i in range(1, latent_frames)) + f"{'mean':>9}")
    for mode, err in results.items():
        print(f"{mode[:6]:>6}" + "".join(f"{v:8.4f}" for v in err[1:].tolist()) + f"{err[1:].mean():9.4f}")
    late = slice(latent_frames // 2, latent_frames)
    ratio = results["self"][late].mean() / results["teacher"][late].mean()
    print(f"second half of the rollout: self / teacher MSE ratio {ratio:.3f} (below 1: self forcing helps)")


if __name__ == "__main__":
    main()
