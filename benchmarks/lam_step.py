"""Steps/s and peak memory of the seed-size latent action model, with and without activation
checkpointing, on this machine (seed 3: batch 32, sequence 8, 64x64 latents, 16 channels).

    python benchmarks/lam_step.py [--batch 32] [--sequence 8] [--steps 3] [--device cpu|cuda]

Each variant runs in a fresh process (peak RSS is per process; on CUDA, max_memory_allocated);
the two are alternated over --rounds so machine noise hits both. Prints the ratios
checkpointing / plain: time per step (expected > 1: recomputation) and peak memory (expected < 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def run_side(args: argparse.Namespace) -> dict:
    import torch

    from worldtune.config import DistConfig
    from worldtune.models.lam import LamConfig, VVAELatentActionVQVAE
    from worldtune.systems.lam.config import LamRunConfig
    from worldtune.systems.lam.recipe import LamRecipe
    from worldtune.train.distributed import DistEnv, default_blocks, prepare_model
    from worldtune.train.recipe import Parts

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = VVAELatentActionVQVAE(LamConfig())
    env = DistEnv(0, 1, 0, device)
    model = prepare_model(model, default_blocks(model), DistConfig(activation_checkpointing=args.side == "ac"), env)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    parts = Parts(model=model, train_dataset=None, cfg=LamRunConfig(recipe="lam", output_dir="."))
    latents = torch.randn(args.batch, 16, args.sequence, 64, 64, device=device) * 0.5
    recipe = LamRecipe()
    baseline = _peak_bytes(device, reset=True)
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        loss = recipe.loss(parts, {"latents": latents})["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return {"step_s": statistics.median(times), "peak_bytes": _peak_bytes(device) - baseline}


def _peak_bytes(device, reset: bool = False) -> int:
    import torch

    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device)
    from memory import peak_rss, reset_peak_rss  # benchmarks/memory.py

    if reset:
        reset_peak_rss()
    return peak_rss()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="seed: 32 (about 6 min a step on 2 CPU cores)")
    parser.add_argument("--sequence", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--side", choices=("plain", "ac"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args)))
        return 0
    results: dict[str, list[dict]] = {"plain": [], "ac": []}
    for round_index in range(args.rounds):
        for side in ("plain", "ac") if round_index % 2 == 0 else ("ac", "plain"):
            command = [sys.executable, __file__, "--side", side, "--batch", str(args.batch), "--sequence",
                       str(args.sequence), "--steps", str(args.steps), "--device", args.device]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[side].append(json.loads(output.strip().splitlines()[-1]))
    print(f"LAM seed size: batch {args.batch} x sequence {args.sequence} ({args.batch * (args.sequence - 1)} "
          f"transitions) at 16x64x64, {args.device}, median over {args.rounds} processes x {args.steps} steps")
    summary = {}
    for side, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        peak = statistics.median(r["peak_bytes"] for r in runs)
        summary[side] = (step, peak)
        print(f"  {side:<6} {1 / step:7.3f} steps/s  ({step:6.2f} s/step)   peak memory {peak / 2**30:6.2f} GiB")
    (plain_step, plain_peak), (ac_step, ac_peak) = summary["plain"], summary["ac"]
    print(f"time per step ratio checkpointing/plain: {ac_step / plain_step:.2f}")
    print(f"peak memory ratio checkpointing/plain: {ac_peak / plain_peak:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
