"""Sim-Physics (issue 17): what a stage-1 step (frozen DiT, heads only) costs against a stage-2 step
(LoRA + heads, video loss on) and against the DiT's forward alone; and the data loader against bare
PNG + .npy reading of the same frames.

    python benchmarks/physics_step.py                 # CPU, tiny scenes and a "bench" DiT: about a minute
    python benchmarks/physics_step.py --size wan2.2-ti2v-5b --device cuda --frames 49 --resolution 480
    python benchmarks/physics_step.py [--size bench|NAME] [--frames 9] [--resolution 64] [--steps 3]
        [--rounds 2] [--device cpu|cuda] [--only step|data]

Steps: random latents of a clip (`--frames`, `--resolution`), the recipe's losses on synthetic
targets, backward and AdamW over what the stage trains, each variant in a fresh process (peak memory
is per process), order alternating by round, medians:
- forward: the DiT's forward alone under no_grad (the floor of stage 1);
- stage1: heads only (the DiT frozen, no video loss);
- stage1_st: the same with the full spatio-temporal heads (the original's stage-1 script);
- stage2: LoRA rank 32 + heads, video loss on.
Data: `SimPhysicsDataset[i]` (pick, read, chain the motion over the gaps, resize, mask) against
reading the same files with PIL / numpy and nothing else (the sampled frames' PNGs, the targets'
depth, and every simulator step's motion file, which the chained target needs): samples/s ratio,
goal >= 0.9, for a scene read again (its chained targets cached) and for a first read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

VARIANTS = ("forward", "stage1", "stage1_st", "stage2")


def dit_config(size: str):
    from worldtune.models.wan.sizes import WanConfig, wan_config

    if size == "bench":
        return WanConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=256, ffn_dim=1024, num_heads=4,
                         num_layers=6, text_dim=256, text_len=64)
    return wan_config(size)


def side(args) -> dict:
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from memory import measure_step

    from worldtune.diffusion.flow_matching import flow_matching_loss
    from worldtune.models.lora import LoraSettings, add_lora
    from worldtune.models.wan.physics import HeadKinds, WanPhysicsModel
    from worldtune.systems.physics.losses import depth_loss, motion_loss, upsample

    device = torch.device(args.device)
    torch.manual_seed(0)
    wan = dit_config(args.size)
    model = WanPhysicsModel(wan, HeadKinds("full", "full") if args.variant == "stage1_st" else None)
    if args.variant == "stage2":
        add_lora(model, LoraSettings(rank=32, alpha=32.0))
    model.to(device)
    for name, p in model.named_parameters():
        heads = name.startswith(("motion_head.", "depth_head."))
        p.requires_grad_(heads or (args.variant == "stage2" and ".lora_" in name))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=True)
    latent_frames, side_len = (args.frames - 1) // 4 + 1, args.resolution // 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, latent_frames, side_len, side_len, generator=g).to(device)
    text = torch.randn(1, wan.text_len, wan.text_dim, generator=g).to(device)
    motion = torch.randn(1, 2, latent_frames, args.resolution, args.resolution, generator=g).to(device)
    depth = (torch.rand(1, 1, latent_frames, args.resolution, args.resolution, generator=g) * 5 + 1).to(device)
    valid = torch.ones_like(depth, dtype=torch.bool)
    t = torch.full((1,), 500.0, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            if args.variant == "forward":
                with torch.no_grad():
                    model(x, t, text, heads=False)
            else:
                out = model(x, t, text)
                size = (args.resolution, args.resolution)
                loss = motion_loss(upsample(out.motion, size), motion, torch.ones(1, latent_frames, dtype=torch.bool,
                                                                                   device=device), "epe")
                loss = loss + depth_loss(upsample(out.log_depth, size), depth, valid, "silog")
                if args.variant == "stage2":
                    loss = loss + flow_matching_loss(out.sample, x, torch.randn_like(x))
        if args.variant != "forward":
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return measure_step(step, device, args.steps)


def run_steps(args) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from memory import run_variants

    med = run_variants(__file__, sys.argv[1:], VARIANTS, args.rounds)
    print(f"Sim-Physics step, {args.size} DiT, {args.frames} frames at {args.resolution}^2, {args.device}; "
          f"medians over {args.rounds} rounds")
    for v in VARIANTS:
        print(f"  {v:<9} {med[v]['step_s']:8.3f} s   peak +{med[v]['peak_bytes'] / 2**20:9.1f} MiB")
    for a, b in (("stage1", "forward"), ("stage1_st", "forward"), ("stage1_st", "stage1"), ("stage2", "stage1")):
        print(f"ratio {a}/{b}: time {med[a]['step_s'] / med[b]['step_s']:.3f}, "
              f"memory {med[a]['peak_bytes'] / med[b]['peak_bytes']:.3f}")


def run_data(args) -> None:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from sim_physics_fixtures import write_ground_dataset
    from worldtune.data.formats.sim_physics import SimPhysicsDataConfig, SimPhysicsDataset
    from worldtune.data.formats.sim_physics_files import pick_frames

    with tempfile.TemporaryDirectory() as tmp:
        frames = max(args.frames * 3, 12)  # about 3 simulator steps per sampled frame, as 131 -> 49
        write_ground_dataset(__import__("pathlib").Path(tmp), scenes=4, frames=frames, size=args.resolution)
        cfg = SimPhysicsDataConfig(dataset_base_path=tmp, num_frames=args.frames, height=args.resolution,
                                   width=args.resolution, split="all", target_stride=4)
        dataset = SimPhysicsDataset(cfg)  # its chained targets cached from the first (warm-up) round on
        uncached = SimPhysicsDataset(dataclasses.replace(cfg, target_cache_mb=0))

        def loader() -> None:
            for i in range(len(dataset)):
                dataset[i]

        def first_read() -> None:  # every scene chained, as in a scene's first visit
            for i in range(len(uncached)):
                uncached[i]

        def bare() -> None:  # the same files: sampled frames' PNGs, targets' depth, every step's motion
            for files, _ in dataset.scenes:
                picks = pick_frames(files.num_frames, args.frames)
                for i in picks:
                    np.asarray(Image.open(files.rgb[i]).convert("RGB"))
                for i in picks[::cfg.target_stride]:
                    np.load(files.depth[i])
                for i in range(picks[0] + 1, picks[::cfg.target_stride][-1] + 1):
                    np.load(files.motion[i])

        runs = {"bare": bare, "loader": loader, "first_read": first_read}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.rounds + 1):
            for name in list(runs) if round_index % 2 == 0 else list(runs)[::-1]:
                start = time.perf_counter()
                runs[name]()
                if round_index:  # the first round warms the page cache (and the loader's target cache)
                    times[name].append(time.perf_counter() - start)
    rate = {k: len(dataset) / statistics.median(v) for k, v in times.items()}
    print(f"Sim-Physics data, {len(dataset)} scenes, {args.frames} of {frames} frames at {args.resolution}^2")
    print(f"  loader, scene read again (targets cached) {rate['loader']:8.2f} samples/s")
    print(f"  loader, first read (every step chained)   {rate['first_read']:8.2f} samples/s")
    print(f"  bare PNG + npy of the same files          {rate['bare']:8.2f} samples/s")
    print(f"samples/s ratio loader/bare: {rate['loader'] / rate['bare']:.3f} "
          f"(first read: {rate['first_read'] / rate['bare']:.3f})")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="bench")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=("step", "data"))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(side(args)))
        return 0
    if args.only != "data":
        run_steps(args)
    if args.only != "step":
        run_data(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
