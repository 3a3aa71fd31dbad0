"""VACE-E (issue 16): the branch's training overhead over the same VACE model without it, and what
`use_gradient_checkpointing` / `use_gradient_checkpointing_offload` cost and save.

    python benchmarks/vace_e_step.py                       # CPU, "bench" size: a couple of minutes
    python benchmarks/vace_e_step.py --size published --device cuda --frames 21 --height 480 --width 832
    python benchmarks/vace_e_step.py [--size bench|published] [--batch 1] [--frames 9] [--height 64]
        [--width 64] [--steps 3] [--rounds 2] [--device cpu|cuda]

A step is the DiT's forward on noisy latents with the VACE control (and, for VACE-E, a demonstration:
`--frames` rows of hand motion, 3 objects, a 64-token prompt, 257 CLIP tokens), an MSE loss,
backward and an AdamW step over what stage 2 trains (the DiT and the branch; the VACE blocks are
frozen). Variants, each in a fresh process (peak memory is per process), their order alternating
round by round, medians over the rounds:
- vace: Wan2.1-VACE alone (no branch);
- vace_e: the same model with the VACE-E branch at `vace_e_layers` 0,5,10,15,20,25 (bench: 0,2);
- vace_e_ckpt: + activation checkpointing of every block (`use_gradient_checkpointing`);
- vace_e_offload: + checkpointing, with what autograd saves kept in CPU memory
  (`use_gradient_checkpointing_offload`: `dist.activation_offload`).
Peak memory: above what the process holds between steps (weights, AdamW state), after one warm-up
step: on CUDA `torch.cuda.max_memory_allocated`; on CPU the growth of the peak RSS (VmHWM). On a CPU
"offloading to CPU memory" moves nothing off the device, so there its memory ratio says nothing:
measure it on a GPU. Printed as ratios to the row named in each line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

VARIANTS = ("vace", "vace_e", "vace_e_ckpt", "vace_e_offload")


def wan_and_branch(size: str):
    from worldtune.models.wan.sizes import WanConfig, wan_config
    from worldtune.models.wan.vace_e import VaceEConfig

    if size == "published":
        return wan_config("wan2.1-vace-1.3b"), VaceEConfig()
    wan = WanConfig(model_type="vace", in_dim=16, out_dim=16, dim=256, ffn_dim=1024, num_heads=4, num_layers=6,
                    text_dim=256, text_len=64, vace_layers=(0, 2, 4), vace_in_dim=96)
    return wan, VaceEConfig(vace_e_layers=(0, 2), task_dim=128, num_heads=4, image_dim=256)


def inputs(args, wan, branch, device):
    import torch

    g = torch.Generator().manual_seed(0)
    latent_frames = (args.frames - 1) // 4 + 2  # + the reference frame
    h, w = args.height // 8, args.width // 8
    b = args.batch
    x = torch.randn(b, 16, latent_frames, h, w, generator=g)
    control = torch.randn(b, wan.vace_in_dim, latent_frames, h, w, generator=g)
    text = torch.randn(b, wan.text_len, wan.text_dim, generator=g)
    ones = lambda *shape: torch.ones(*shape, dtype=torch.bool)  # noqa: E731
    cond = {"text": text, "text_mask": ones(b, wan.text_len), "hand_motion": torch.randn(b, args.frames, 20, generator=g),
            "hand_mask": ones(b, args.frames), "objects": torch.randn(b, args.frames, 3, 9, generator=g),
            "object_ids": torch.tensor([[1, 2, 3]] * b), "object_mask": ones(b, args.frames, 3),
            "embodiment": torch.randn(b, 257, branch.image_dim, generator=g), "embodiment_mask": ones(b, 257)}
    move = lambda t: t.to(device)  # noqa: E731
    return move(x), move(control), move(text), {k: move(v) for k, v in cond.items()}


def side(args) -> dict:
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from memory import measure_step

    from worldtune.config import DistConfig
    from worldtune.models.wan.factory import build_wan
    from worldtune.models.wan.vace_e import WanVaceEModel
    from worldtune.train.distributed import DistEnv, activation_offload

    device = torch.device(args.device)
    torch.manual_seed(0)
    wan, branch = wan_and_branch(args.size)
    with_branch = args.variant != "vace"
    model = (WanVaceEModel(wan, branch) if with_branch else build_wan(wan)).to(device)
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(("vace_blocks.", "vace_patch_embedding.")))
    if args.variant in ("vace_e_ckpt", "vace_e_offload"):
        from torch.distributed._composable import checkpoint

        blocks = list(model.blocks) + list(getattr(model, "vace_e", model).vace_blocks if with_branch else [])
        for block in blocks + list(model.vace_blocks):
            checkpoint(block)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    x, control, text, cond = inputs(args, wan, branch, device)
    offload = DistConfig(activation_offload=args.variant == "vace_e_offload")
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t = torch.full((args.batch,), 500.0, device=device)

    def step() -> float:
        start = time.perf_counter()
        kwargs = {"vace_context": control, **({"vace_e": cond, "reference_frames": 1} if with_branch else {})}
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"), activation_offload(offload, env):
            loss = (model(x, t, text, **kwargs) - x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return measure_step(step, device, args.steps)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("bench", "published"), default="bench")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=9, help="clip frames, 4k+1")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(side(args)))
        return 0
    sys.path.insert(0, os.path.dirname(__file__))
    from memory import run_variants

    med = run_variants(__file__, sys.argv[1:], VARIANTS, args.rounds)
    print(f"VACE-E training step, {args.size} size, batch {args.batch}, {args.frames} frames {args.height}x{args.width}, "
          f"{args.device}; medians over {args.rounds} rounds")
    for v in VARIANTS:
        print(f"  {v:<16} {med[v]['step_s']:8.3f} s/step   peak +{med[v]['peak_bytes'] / 2**20:9.1f} MiB")

    def ratio(a: str, b: str, label: str) -> None:
        print(f"{label}: time {med[a]['step_s'] / med[b]['step_s']:.3f}, memory {med[a]['peak_bytes'] / med[b]['peak_bytes']:.3f}")

    ratio("vace_e", "vace", "ratio vace_e/vace (the branch's overhead)")
    ratio("vace_e_ckpt", "vace_e", "ratio vace_e_ckpt/vace_e (use_gradient_checkpointing)")
    ratio("vace_e_offload", "vace_e", "ratio vace_e_offload/vace_e (use_gradient_checkpointing_offload)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
