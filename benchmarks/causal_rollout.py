"""The causal Wan DiT's KV cache (issue 15): does a block cost the same at block 16 as at block 1,
how much faster is the cache than recomputing the prefix, and does a bounded cache keep memory flat?

    .venv/bin/python benchmarks/causal_rollout.py                         # small config, CPU, ~1 min
    .venv/bin/python benchmarks/causal_rollout.py --size wan2.2-ti2v-5b --device cuda --height 46 --width 40 \\
        --steps 4 --dtype bf16                                           # the 5B at 736x640 on a GPU

A rollout generates `--blocks` latent frames one block at a time, each denoised in `--steps`
steps through the cache (Euler on the velocity) and re-run at t = 0 to write its clean keys, as
Vidarc's inference does. Printed, all measured in this run:
- per-block time at block 1 and at block N (with a cache long enough to hold every frame), and
  their ratio (goal <= 1.2 while the window is not full: the new block's cost dominates);
- the whole rollout with the cache against recomputing the whole prefix at every step with the
  block-causal forward (goal: the cache >= 5x faster);
- peak memory (CUDA: allocated; CPU: RSS high-water mark) growth after the first block of a rollout
  with `--window` frames of cache and 2 sink frames, at blocks N/2 and N (goal: flat).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from memory import peak_rss, reset_peak_rss

from worldtune.models.wan.causal import CausalWanModel
from worldtune.models.wan.sizes import WanConfig, wan_config

SMALL = WanConfig(model_type="t2v", in_dim=16, out_dim=16, dim=256, ffn_dim=1024, num_heads=4, num_layers=4,
                  text_len=64, text_dim=64)


def build(args) -> CausalWanModel:
    config = SMALL if args.size == "small" else wan_config(args.size)
    with torch.device(args.device):
        model = CausalWanModel(config)
    return model.to(dtype=args.dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def rollout(model: CausalWanModel, args, blocks: int, window: int, sink: int = 0) -> list[float]:
    """Seconds per block of a cached rollout (denoising steps plus the clean re-run)."""
    c, dev = model.config, args.device
    cache = model.new_cache(1, args.height, args.width, window, sink, dtype=args.dtype, device=dev)
    text = model.text_kv(torch.randn(1, 16, c.text_dim, device=dev, dtype=args.dtype))
    model.prefill(torch.randn(1, c.in_dim, 1, args.height, args.width, device=dev, dtype=args.dtype), cache,
                  text_kv=text)
    times = []
    for frame in range(1, blocks + 1):
        sync(dev)
        start = time.perf_counter()
        x = torch.randn(1, c.in_dim, 1, args.height, args.width, device=dev, dtype=args.dtype)
        for step in range(args.steps):
            t = torch.full((1,), 1000.0 * (1 - step / args.steps), device=dev)
            x = x - model.forward_cached(x, t, cache, frame, text_kv=text).to(x.dtype) / args.steps
        model.prefill(x, cache, frame, text_kv=text)
        sync(dev)
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def recompute(model: CausalWanModel, args, blocks: int) -> float:
    """The same rollout without a cache: every step runs the block-causal forward over all frames so far."""
    c, dev = model.config, args.device
    context = torch.randn(1, 16, c.text_dim, device=dev, dtype=args.dtype)
    frames = torch.randn(1, c.in_dim, 1, args.height, args.width, device=dev, dtype=args.dtype)
    sync(dev)
    start = time.perf_counter()
    for _ in range(blocks):
        x = torch.randn(1, c.in_dim, 1, args.height, args.width, device=dev, dtype=args.dtype)
        for step in range(args.steps):
            t = torch.full((1, frames.shape[2] + 1), 0.0, device=dev)
            t[:, -1] = 1000.0 * (1 - step / args.steps)
            v = model(torch.cat([frames, x], dim=2), t, context)[:, :, -1:]
            x = x - v.to(x.dtype) / args.steps
        frames = torch.cat([frames, x], dim=2)
    sync(dev)
    return time.perf_counter() - start


def peak_growth(model: CausalWanModel, args) -> list[float]:
    """Peak memory (MiB) above the level after the first block, at blocks N/2 and N, with a bounded cache."""
    marks = []
    half = args.blocks // 2
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    base = None
    for blocks in (1, half, args.blocks):
        rollout(model, args, blocks, args.window, sink=2)
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak_rss()
        base = peak if base is None else base
        marks.append((peak - base) / 2**20)
    return marks[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="'small' (a 4-layer, 256-wide DiT) or a Wan size name")
    parser.add_argument("--height", type=int, default=16, help="latent grid height (736 px / 16 = 46)")
    parser.add_argument("--width", type=int, default=16, help="latent grid width (640 px / 16 = 40)")
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per block")
    parser.add_argument("--window", type=int, default=6, help="kv_cache_length (frames) of the memory test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    args.dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = build(args)
    tokens = (args.height // 2) * (args.width // 2)
    print(f"causal rollout: {args.size}, {tokens} tokens per latent frame, {args.blocks} blocks x {args.steps} steps, "
          f"{args.device}, {args.dtype}; medians over {args.rounds} rounds", flush=True)
    rollout(model, args, 2, args.blocks + 1)  # warm-up
    cached, prefix = [], []
    for _ in range(args.rounds):
        cached.append(rollout(model, args, args.blocks, args.blocks + 1))
        prefix.append(recompute(model, args, args.blocks))
    first = statistics.median(t[0] for t in cached)
    last = statistics.median(t[-1] for t in cached)
    total = statistics.median(sum(t) for t in cached)
    full = statistics.median(prefix)
    print(f"  block 1: {first * 1e3:.1f} ms  block {args.blocks}: {last * 1e3:.1f} ms  ratio {last / first:.2f} "
          f"(goal <= 1.2)")
    print(f"  {args.blocks} blocks: cache {total:.2f} s, recomputing the prefix {full:.2f} s: "
          f"{full / total:.1f}x faster (goal >= 5x); {args.blocks / total:.1f} blocks/s")
    grow_half, grow_full = peak_growth(model, args)
    print(f"  peak memory above block 1 with a {args.window}-frame cache (2 sinks): block {args.blocks // 2} "
          f"+{grow_half:.1f} MiB, block {args.blocks} +{grow_full:.1f} MiB (goal: flat)")


if __name__ == "__main__":
    main()
