"""Wan DiT: our WanModel against diffusers' WanTransformer3DModel, forward+backward on the same work.

Both models are built from one config (diffusers' weights copied into ours through
`worldtune.models.wan.convert.diffusers_to_original`, when that converter imports) and trained on
the same batch: a video latent, float timesteps and a text context already zero-padded to
`text_len` (ours pads internally, diffusers does not; so both get the padded tensor and do the same
work). Prints the time ratio and the peak-memory ratio ours/diffusers, without ("plain") and with
gradient checkpointing; the goal is at most 1.0 for all four. Always exits 0: this is a
measurement, not a test.

    .venv/bin/python benchmarks/wan_dit.py                          # CPU default, about 2 minutes
    .venv/bin/python benchmarks/wan_dit.py --height 32 --width 32   # the issue's 9x32x32 latent
    .venv/bin/python benchmarks/wan_dit.py --profile                # then per-op profile, ours vs diffusers
    .venv/bin/python benchmarks/wan_dit.py --device cuda            # GPU: comparison in bf16, then
                                                                    # wan2.1-t2v-1.3b throughput and MFU

Time: one process holds both models; within a round the two sides alternate step by step
(ours, diffusers, ours, diffusers, ...; the side that goes first alternates between rounds), so
machine noise hits both alike. A step is zero_grad, forward, MSE loss against a fixed target,
backward (synchronised on CUDA). Medians over the measured steps; the headline is
median(ours) / median(diffusers).

Peak memory: each (side, variant) once more in a fresh subprocess of this script (`--side`), so
the sides never share a high-water mark. After one untimed warm-up step, the peak growth over the
baseline (model, gradients freed, inputs) during `--mem-steps` steps: on CUDA
torch.cuda.max_memory_allocated; on CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs). On CPU the subprocess runs with MALLOC_MMAP_THRESHOLD_=65536, so glibc
hands every tensor buffer of 64 KiB or more straight back to the kernel when it is freed and
RSS follows the live tensors (otherwise freed heap chunks from the warm-up stay resident and hide
the peak).

Throughput (`--mode all` on CUDA, or `--mode throughput`): `--size` (wan2.1-t2v-1.3b) in bf16 at
`--video` (81 frames of 480x832: VAE latent 21x60x104, 32760 tokens), batch `--tp-batch` (1),
gradient checkpointing on, both sides alternating. tokens/s = batch * tokens / median step time.
MFU = model FLOPs per step / step time / the GPU's dense bf16 peak. Model FLOPs (recomputation by
checkpointing not counted, as MFU conventionally does not; elementwise ops, norms, softmax not
counted), per sample with L video tokens, Lc = text_len context rows, d = dim, n = layers:
- matmul weights: 2 FLOPs per weight per row forward, 2 for the weight gradient, 2 for the input
  gradient (skipped where the input needs no gradient: patch embedding, first text and time
  embedding layers, so 4 there). Per video token: patch embedding, per block self-attention q,k,v,o
  (4 d^2), cross-attention q,o (2 d^2), FFN (2 d ffn), head. Per text row: text embedding and,
  per block, cross-attention k,v (2 d^2). Per sample: time embedding and projection.
- self-attention: forward Q K^T and P V, 2 L^2 d each (summed over heads) = 4 L^2 d; backward
  dV, dP, dQ, dK = 8 L^2 d; so 12 n L^2 d. Cross-attention likewise 12 n L Lc d.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from memory import peak_rss, reset_peak_rss  # benchmarks/memory.py
from torch import nn

from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.sizes import SIZES, WanConfig, wan_config

GOAL = 1.0
RESULT_PREFIX = "WAN_DIT_RESULT "
SIDES = ("ours", "diffusers")
VARIANTS = ("plain", "checkpointing")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; first match wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0), ("GH200", 989.4), ("H100", 989.4),
    ("H200", 989.4), ("H800", 989.4), ("H20", 148.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.0), ("A10G", 70.0),
)

try:
    from worldtune.models.wan.convert import diffusers_to_original
except ImportError as error:  # being written elsewhere; time with independent weights meanwhile
    diffusers_to_original = None
    CONVERTER_ERROR = f"{type(error).__name__}: {error}"
else:
    CONVERTER_ERROR = ""


# ----------------------------------------------------------------------------- building


def comparison_config(args: argparse.Namespace) -> WanConfig:
    return WanConfig(model_type="t2v", patch_size=(1, 2, 2), text_len=args.text_len, in_dim=args.channels,
                     out_dim=args.channels, dim=args.dim, ffn_dim=args.ffn, text_dim=args.text_dim,
                     num_heads=args.heads, num_layers=args.layers)


def diffusers_kwargs(c: WanConfig) -> dict:
    """The diffusers WanTransformer3DModel constructor arguments for the same model."""
    return {"patch_size": tuple(c.patch_size), "num_attention_heads": c.num_heads, "attention_head_dim": c.head_dim,
            "in_channels": c.in_dim, "out_channels": c.out_dim, "text_dim": c.text_dim, "freq_dim": c.freq_dim,
            "ffn_dim": c.ffn_dim, "num_layers": c.num_layers, "cross_attn_norm": c.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if c.qk_norm else None, "eps": c.eps, "rope_max_seq_len": 1024}


@dataclass
class Models:
    ours: WanModel | None
    diffusers: nn.Module | None
    weights: str  # how ours got its weights
    name_map: dict[str, str]  # our parameter name -> diffusers parameter name (when copied)

    def get(self, side: str) -> nn.Module:
        model = self.ours if side == "ours" else self.diffusers
        assert model is not None, side
        return model


def build_models(config: WanConfig, device: torch.device, dtype: torch.dtype, seed: int,
                 sides: tuple[str, ...] = SIDES) -> Models:
    """Diffusers first (seeded), then ours with diffusers' weights copied in where possible."""
    from diffusers import WanTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # not the warning about casting fp32-kept modules: same for both
    diffusers_model = ours = None
    weights, name_map = "independent random weights (one side only)", {}
    torch.manual_seed(seed)
    if "diffusers" in sides:
        with torch.device(device):
            diffusers_model = WanTransformer3DModel(**diffusers_kwargs(config))
        diffusers_model.to(dtype).train()
    if "ours" in sides:
        torch.manual_seed(seed + 1)
        with torch.device(device):
            ours = WanModel(config)
        if diffusers_model is not None:
            weights, name_map = copy_weights(diffusers_model, ours)
        ours.to(dtype).train()
    return Models(ours, diffusers_model, weights, name_map)


def copy_weights(diffusers_model: nn.Module, ours: WanModel) -> tuple[str, dict[str, str]]:
    if diffusers_to_original is None:
        return f"independent random weights (converter not importable: {CONVERTER_ERROR})", {}
    try:
        state = diffusers_model.state_dict()
        renamed = diffusers_to_original(state)
        ours.load_state_dict(renamed, strict=True)
        name_map = dict(zip(diffusers_to_original({k: k for k in state}).keys(), state.keys(), strict=True))
    except Exception as error:  # noqa: BLE001 - any failure: measure anyway, say why
        return f"independent random weights (copying diffusers' weights failed: {type(error).__name__}: {error})", {}
    return "diffusers' weights copied into ours (convert.diffusers_to_original)", name_map


@dataclass
class Batch:
    x: torch.Tensor  # [B, in_dim, F, H, W] in the model dtype
    timestep: torch.Tensor  # [B] float32
    context: torch.Tensor  # [B, text_len, text_dim], zero rows after the prompt
    target: torch.Tensor  # [B, out_dim, F, H, W] float32

    @property
    def tokens(self) -> int:
        return self.x.shape[0] * self.x.shape[2] * (self.x.shape[3] // 2) * (self.x.shape[4] // 2)


def make_batch(config: WanConfig, batch: int, latent: tuple[int, int, int], prompt_tokens: int,
               device: torch.device, dtype: torch.dtype, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    frames, height, width = latent
    x = torch.randn(batch, config.in_dim, frames, height, width, generator=g)
    timestep = torch.rand(batch, generator=g) * 1000
    context = torch.zeros(batch, config.text_len, config.text_dim)
    context[:, :min(prompt_tokens, config.text_len)] = torch.randn(batch, min(prompt_tokens, config.text_len),
                                                                   config.text_dim, generator=g)
    target = torch.randn(batch, config.out_dim, frames, height, width, generator=g)
    return Batch(x.to(device, dtype), timestep.to(device), context.to(device, dtype), target.to(device))


def set_checkpointing(models: Models, enabled: bool) -> None:
    if models.ours is not None:  # the trainer's per-block activation checkpointing, switched on / off
        from torch.distributed._composable import checkpoint

        for block in models.ours.blocks:
            if enabled and not hasattr(block, "_worldtune_checkpointed"):
                checkpoint(block)
                block._worldtune_checkpointed = True
            if hasattr(block, "_worldtune_checkpointed"):
                checkpoint.state(block).enable_hook = enabled
    if models.diffusers is not None:
        if enabled:
            models.diffusers.enable_gradient_checkpointing()
        else:
            models.diffusers.disable_gradient_checkpointing()


# ----------------------------------------------------------------------------- one step


def forward(side: str, model: nn.Module, batch: Batch) -> torch.Tensor:
    if side == "ours":
        return model(batch.x, batch.timestep, batch.context)
    return model(batch.x, batch.timestep, batch.context, return_dict=False)[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(side: str, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """zero_grad, forward, loss, backward; returns (loss, output), detached."""
    model.zero_grad(set_to_none=True)
    out = forward(side, model, batch)
    loss = F.mse_loss(out.float(), batch.target)
    loss.backward()
    return loss.detach(), out.detach()


def timed_step(side: str, model: nn.Module, batch: Batch) -> float:
    device = batch.x.device
    sync(device)
    start = time.perf_counter()
    train_step(side, model, batch)
    sync(device)
    return time.perf_counter() - start


def interleaved(models: Models, batch: Batch, steps: int, rounds: int) -> dict[str, list[list[float]]]:
    """{side: [[seconds per step] per round]}; ABAB within a round, the first side alternating."""
    times: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    for round_index in range(rounds):
        order = SIDES if round_index % 2 == 0 else SIDES[::-1]
        for side in SIDES:
            times[side].append([])
        for _ in range(steps):
            for side in order:
                times[side][-1].append(timed_step(side, models.get(side), batch))
    return times


# ----------------------------------------------------------------------------- parity


def parity(models: Models, batch: Batch, dtype: torch.dtype) -> tuple[str, dict[str, float]]:
    """One plain step per side (the warm-up); same output, loss and gradients for the same weights?"""
    results = {side: train_step(side, models.get(side), batch) for side in SIDES}
    (loss_o, out_o), (loss_d, out_d) = results["ours"], results["diffusers"]
    scale = out_d.float().abs().max().item()
    out_diff = (out_o.float() - out_d.float()).abs().max().item() / max(scale, 1e-30)
    figures = {"output": out_diff, "loss_ours": loss_o.item(), "loss_diffusers": loss_d.item()}
    if not models.name_map:
        return ("not checked: the sides have independent random weights, so their outputs differ "
                f"(relative max difference {out_diff:.2e})"), figures
    worst, worst_name = 0.0, ""
    diffusers_params = dict(models.get("diffusers").named_parameters())
    for name, p in models.get("ours").named_parameters():
        q = diffusers_params[models.name_map[name]]
        if p.grad is None or q.grad is None:
            if (p.grad is None) != (q.grad is None):
                worst, worst_name = math.inf, name
            continue
        denom = q.grad.float().abs().max().item()
        diff = (p.grad.float() - q.grad.float()).abs().max().item()
        rel = diff / denom if denom > 0 else diff
        if rel > worst:
            worst, worst_name = rel, name
    figures["grad"] = worst
    tol_out, tol_grad = (1e-4, 1e-3) if dtype == torch.float32 else (5e-2, 2e-1)
    same = out_diff <= tol_out and worst <= tol_grad
    verdict = "yes" if same else "NO: the two models do not compute the same function"
    return (f"{verdict} (output: max |ours - diffusers| = {out_diff:.2e} of max |diffusers|; loss "
            f"{loss_o.item():.6f} vs {loss_d.item():.6f}; gradients: worst parameter {worst_name} at "
            f"{worst:.2e} of its max |diffusers grad|; tolerances {tol_out:g} / {tol_grad:g})"), figures


# ----------------------------------------------------------------------------- memory


def side_main(args: argparse.Namespace) -> None:
    """`--side`: one side, one variant, in this fresh process; prints one JSON line for the parent."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = comparison_config(args)
    models = build_models(config, device, dtype, args.seed, sides=(args.side,))
    set_checkpointing(models, args.variant == "checkpointing")
    batch = make_batch(config, args.batch, (args.frames, args.height, args.width), args.prompt_tokens,
                       device, dtype, args.seed)
    model = models.get(args.side)
    train_step(args.side, model, batch)  # warm-up: one-time allocations (kernels, thread pools)
    model.zero_grad(set_to_none=True)
    gc.collect()
    resettable = True
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        resettable = reset_peak_rss()
        baseline = peak_rss()
    times = [timed_step(args.side, model, batch) for _ in range(args.mem_steps)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    print(RESULT_PREFIX + json.dumps({"baseline": baseline, "peak": peak, "resettable": resettable,
                                      "times": times}), flush=True)


def forwarded_args(args: argparse.Namespace) -> list[str]:
    names = ["device", "dtype", "dim", "layers", "heads", "ffn", "frames", "height", "width", "batch",
             "text_len", "text_dim", "channels", "prompt_tokens", "seed", "mem_steps"]
    return [item for name in names for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def measure_memory(args: argparse.Namespace, side: str, variant: str) -> dict:
    env = dict(os.environ)
    if args.device == "cpu":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--variant", variant,
               *forwarded_args(args)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"{side}/{variant} subprocess failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


# ----------------------------------------------------------------------------- comparison


def med(values: list[float]) -> float:
    return statistics.median(values)


def ratio_line(label: str, ratio: float) -> str:
    verdict = "meets" if ratio <= GOAL else "MISSES"
    return f"{label}: {ratio:.3f}  ({verdict} the goal <= {GOAL})"


def compare(args: argparse.Namespace) -> None:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = comparison_config(args)
    latent = (args.frames, args.height, args.width)
    models = build_models(config, device, dtype, args.seed)
    batch = make_batch(config, args.batch, latent, args.prompt_tokens, device, dtype, args.seed)
    params = sum(p.numel() for p in models.get("ours").parameters())
    print(f"model: dim {config.dim}, {config.num_layers} layers, {config.num_heads} heads, ffn {config.ffn_dim}, "
          f"text {config.text_len}x{config.text_dim} ({params / 1e6:.1f}M params); batch {args.batch}, latent "
          f"{args.in_shape} -> {batch.tokens // args.batch} tokens per sample; {args.dtype}")
    print(f"weights: {models.weights}")
    print(f"timing: {args.rounds} rounds x {args.steps} steps per side and variant, after {args.warmup} "
          "warm-up step(s) per side")

    set_checkpointing(models, False)
    verdict, _ = parity(models, batch, dtype)
    print(f"same output for the same weights: {verdict}")

    time_ratios: dict[str, float] = {}
    for variant in VARIANTS:
        set_checkpointing(models, variant == "checkpointing")
        for _ in range(args.warmup - (1 if variant == "plain" else 0)):  # plain: the parity step warmed up
            for side in SIDES:
                train_step(side, models.get(side), batch)
        if variant == "checkpointing":
            losses = {side: train_step(side, models.get(side), batch)[0].item() for side in SIDES}
            print(f"checkpointing loss: ours {losses['ours']:.6f}, diffusers {losses['diffusers']:.6f}")
        gc.collect()
        times = interleaved(models, batch, args.steps, args.rounds)
        flat = {side: [t for r in times[side] for t in r] for side in SIDES}
        ours, theirs = med(flat["ours"]), med(flat["diffusers"])
        time_ratios[variant] = ours / theirs
        pairs = [o / d for o, d in zip(flat["ours"], flat["diffusers"], strict=True)]
        per_round = ", ".join(f"{med(o) / med(d):.3f}" for o, d in zip(times["ours"], times["diffusers"], strict=True))
        print(f"\n{variant}: seconds per step, median (min-max) over {len(flat['ours'])} steps")
        for side in SIDES:
            print(f"  {side:>9}: {med(flat[side]):.3f} ({min(flat[side]):.3f}-{max(flat[side]):.3f})")
        print(f"  ours/diffusers: medians {ours / theirs:.3f}, median of step pairs {med(pairs):.3f}, "
              f"minima {min(flat['ours']) / min(flat['diffusers']):.3f}; per round {per_round}")
    del models, batch
    gc.collect()

    cuda = device.type == "cuda"
    print(f"\npeak memory growth over the baseline, MiB ({'allocated by torch' if cuda else 'peak RSS'}; "
          f"each side and variant in a fresh process, {args.mem_steps} step(s) after one warm-up)")
    memory_ratios: dict[str, float] = {}
    notes = set()
    for variant in VARIANTS:
        growth = {}
        for side in SIDES:
            f = measure_memory(args, side, variant)
            growth[side] = f["peak"] - f["baseline"]
            if not f["resettable"]:
                notes.add("the peak-RSS mark could not be reset; import-time peaks may hide the growth")
            print(f"  {variant:>13} {side:>9}: baseline {f['baseline'] / 2**20:8.1f}  growth "
                  f"{growth[side] / 2**20:8.1f}")
        memory_ratios[variant] = growth["ours"] / max(growth["diffusers"], 1)
    for note in sorted(notes):
        print(f"  NOTE: {note}")

    print()
    for variant in VARIANTS:
        print(ratio_line(f"time ratio ours/diffusers ({variant})", time_ratios[variant]))
    for variant in VARIANTS:
        print(ratio_line(f"peak memory ratio ours/diffusers ({variant})", memory_ratios[variant]))

    if args.profile:
        profile_ops(args)


# ----------------------------------------------------------------------------- profile


def profile_ops(args: argparse.Namespace) -> None:
    """torch.profiler over `--profile-steps` plain steps per side; ops whose self time differs most."""
    from torch.profiler import ProfilerActivity, profile

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    config = comparison_config(args)
    models = build_models(config, device, dtype, args.seed)
    batch = make_batch(config, args.batch, (args.frames, args.height, args.width), args.prompt_tokens,
                       device, dtype, args.seed)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for variant in VARIANTS:
        set_checkpointing(models, variant == "checkpointing")
        table: dict[str, dict[str, tuple[float, int]]] = {}
        for side in SIDES:
            model = models.get(side)
            train_step(side, model, batch)
            with profile(activities=activities) as prof:
                for _ in range(args.profile_steps):
                    train_step(side, model, batch)
                sync(device)
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            table[side] = {e.key: (getattr(e, key) / 1e3 / args.profile_steps, e.count // args.profile_steps)
                           for e in prof.key_averages()}
        names = set(table["ours"]) | set(table["diffusers"])
        total = {side: sum(ms for ms, _ in table[side].values()) for side in SIDES}
        rows = sorted(names, key=lambda n: -abs(table["ours"].get(n, (0, 0))[0] - table["diffusers"].get(n, (0, 0))[0]))
        print(f"\nprofile ({variant}, one step, self {'device' if device.type == 'cuda' else 'CPU'} time, ms): "
              f"total ours {total['ours']:.0f}, diffusers {total['diffusers']:.0f}; the ops that differ most")
        print(f"  {'op':<44} {'ours ms':>9} {'calls':>6} {'diffusers ms':>13} {'calls':>6} {'diff ms':>8}")
        for name in rows[: args.profile_rows]:
            o_ms, o_n = table["ours"].get(name, (0.0, 0))
            d_ms, d_n = table["diffusers"].get(name, (0.0, 0))
            print(f"  {name[:44]:<44} {o_ms:>9.1f} {o_n:>6} {d_ms:>13.1f} {d_n:>6} {o_ms - d_ms:>+8.1f}")


# ----------------------------------------------------------------------------- throughput


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no known peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for marker, tflops in PEAK_BF16_TFLOPS:
        if marker in name:
            return tflops, name
    return None, f"{name}: unknown bf16 peak (give --peak-tflops)"


def train_flops(c: WanConfig, batch: int, grid: tuple[int, int, int]) -> dict[str, float]:
    """Model FLOPs of one forward+backward (see the module docstring for the derivation)."""
    d, n, lc = c.dim, c.num_layers, c.text_len
    tokens = math.prod(grid)
    patch = math.prod(c.patch_size)
    # (weights, FLOPs per weight per row): 6 = 2 forward + 2 weight grad + 2 input grad; 4 = no input grad.
    video = [(c.in_dim * patch * d, 4), (n * (4 * d * d + 2 * d * d + 2 * d * c.ffn_dim), 6),
             (d * patch * c.out_dim, 6)]
    text = [(c.text_dim * d, 4), (d * d, 6), (n * 2 * d * d, 6)]
    per_sample = [(c.freq_dim * d, 4), (d * d, 6), (d * 6 * d, 6)]
    dense = batch * (tokens * sum(w * k for w, k in video) + lc * sum(w * k for w, k in text)
                     + sum(w * k for w, k in per_sample))
    self_attn = 12 * batch * n * tokens**2 * d
    cross_attn = 12 * batch * n * tokens * lc * d
    return {"dense": float(dense), "self_attn": float(self_attn), "cross_attn": float(cross_attn),
            "total": float(dense + self_attn + cross_attn), "tokens": float(batch * tokens)}


def latent_shape(config: WanConfig, video: tuple[int, int, int]) -> tuple[int, int, int]:
    """Pixel frames x height x width -> VAE latent (Wan2.1 VAE 4x8x8; Wan2.2 VAE, 48 channels, 4x16x16)."""
    frames, height, width = video
    spatial = 16 if config.in_dim == 48 else 8
    return (frames - 1) // 4 + 1, height // spatial, width // spatial


def throughput(args: argparse.Namespace) -> None:
    device, dtype = torch.device(args.device), torch.bfloat16
    config = wan_config(args.size)
    if config.model_type not in ("t2v", "ti2v"):
        print(f"throughput: {args.size} is a {config.model_type} model; only t2v / ti2v sizes are supported here")
        return
    latent = latent_shape(config, args.video)
    grid = (latent[0] // config.patch_size[0], latent[1] // config.patch_size[1], latent[2] // config.patch_size[2])
    sides = SIDES if args.tp_sides == "both" else (args.tp_sides,)
    flops = train_flops(config, args.tp_batch, grid)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    video = "x".join(map(str, args.video))
    print(f"\nthroughput: {args.size} in bf16 on {peak_source if device.type == 'cuda' else device}, batch "
          f"{args.tp_batch}, video {video} -> latent {'x'.join(map(str, latent))} -> {math.prod(grid)} tokens per "
          "sample, gradient checkpointing")
    print(f"  model FLOPs per step {flops['total'] / 1e12:.1f} T (matmul weights {flops['dense'] / 1e12:.1f}, "
          f"self-attention {flops['self_attn'] / 1e12:.1f}, cross-attention {flops['cross_attn'] / 1e12:.1f})")
    models = build_models(config, device, dtype, args.seed, sides=sides)
    set_checkpointing(models, True)
    batch = make_batch(config, args.tp_batch, latent, args.prompt_tokens, device, dtype, args.seed)
    outputs = {}
    for _ in range(args.tp_warmup):
        for side in sides:
            outputs[side] = train_step(side, models.get(side), batch)[1]
    if len(sides) == 2 and models.name_map:
        a, b = outputs["ours"].float(), outputs["diffusers"].float()
        print(f"  same output (bf16, copied weights): max |ours - diffusers| = "
              f"{(a - b).abs().max().item() / max(b.abs().max().item(), 1e-30):.2e} of max |diffusers|")
    outputs.clear()
    times: dict[str, list[float]] = {side: [] for side in sides}
    peaks: dict[str, int] = {side: 0 for side in sides}
    for _ in range(args.tp_steps):
        for side in sides:
            model = models.get(side)
            model.zero_grad(set_to_none=True)  # the step allocates its gradients: part of its peak
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            times[side].append(timed_step(side, model, batch))
            if device.type == "cuda":
                peaks[side] = max(peaks[side], torch.cuda.max_memory_allocated(device) - base)
            model.zero_grad(set_to_none=True)
    for side in sides:
        step = med(times[side])
        achieved = flops["total"] / step / 1e12
        mfu = f"MFU {100 * achieved / peak:.1f}% of {peak:g}" if peak else "MFU n/a"
        memory = f"; peak memory growth {peaks[side] / 2**30:.2f} GiB" if device.type == "cuda" else ""
        print(f"  {side:>9}: {step:.3f} s/step (median of {len(times[side])}), {flops['tokens'] / step:,.0f} "
              f"tokens/s, {achieved:.1f} TFLOP/s, {mfu}{memory}")
    if len(sides) == 2:
        print(ratio_line("throughput time ratio ours/diffusers (checkpointing, bf16)",
                         med(times["ours"]) / med(times["diffusers"])))
        if device.type == "cuda":
            print(ratio_line("throughput peak memory ratio ours/diffusers (checkpointing, bf16)",
                             peaks["ours"] / max(peaks["diffusers"], 1)))


# ----------------------------------------------------------------------------- main


def shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected FRAMESxHEIGHTxWIDTH, got {text!r}")
    return parts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="comparison dtype (parameters and inputs); default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--mode", choices=["all", "compare", "throughput"], default="all",
                        help="all: the comparison, then (on CUDA only) throughput of --size")
    group = parser.add_argument_group("comparison (our DiT against diffusers)")
    group.add_argument("--dim", type=int, default=512)
    group.add_argument("--layers", type=int, default=8)
    group.add_argument("--heads", type=int, default=8)
    group.add_argument("--ffn", type=int, default=2048)
    group.add_argument("--frames", type=int, default=9, help="latent frames")
    group.add_argument("--height", type=int, default=None,
                       help="latent height; default 16 on CPU (32, the issue's, takes ~25 s a step on 2 cores), 32 on CUDA")
    group.add_argument("--width", type=int, default=None, help="latent width; default as --height")
    group.add_argument("--batch", type=int, default=2)
    group.add_argument("--text-len", type=int, default=512, help="context rows after zero-padding (as the model)")
    group.add_argument("--text-dim", type=int, default=4096)
    group.add_argument("--channels", type=int, default=16, help="latent channels in and out")
    group.add_argument("--prompt-tokens", type=int, default=100, help="non-zero context rows before the padding")
    group.add_argument("--steps", type=int, default=4, help="measured steps per side, variant and round")
    group.add_argument("--rounds", type=int, default=2, help="rounds (the side that goes first alternates)")
    group.add_argument("--warmup", type=int, default=1, help="untimed steps per side and variant")
    group.add_argument("--mem-steps", type=int, default=1, help="measured steps in each memory subprocess")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--profile", action="store_true", help="afterwards, profile ops of both sides")
    group.add_argument("--profile-steps", type=int, default=1)
    group.add_argument("--profile-rows", type=int, default=25)
    group = parser.add_argument_group("throughput (bf16, gradient checkpointing)")
    group.add_argument("--size", default="wan2.1-t2v-1.3b", choices=sorted(SIZES))
    group.add_argument("--video", type=shape, default=(81, 480, 832), help="pixel FRAMESxHEIGHTxWIDTH")
    group.add_argument("--tp-batch", type=int, default=1)
    group.add_argument("--tp-steps", type=int, default=5, help="measured steps per side")
    group.add_argument("--tp-warmup", type=int, default=2)
    group.add_argument("--tp-sides", choices=["both", *SIDES], default="both",
                       help="one side only where two copies of the model do not fit")
    group.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: by GPU name)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # memory subprocess
    parser.add_argument("--variant", choices=VARIANTS, default="plain", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.device is None:
        args.device = "cuda" if cuda else "cpu"
    if args.device == "cuda" and not cuda:
        parser.error(f"--device cuda: no CUDA device is available (torch {torch.__version__}, "
                     f"built with CUDA {torch.version.cuda}); run on a GPU machine or use --device cpu")
    if args.dtype is None:
        args.dtype = "bf16" if args.device == "cuda" else "fp32"
    default_side = 32 if args.device == "cuda" else 16
    args.height = default_side if args.height is None else args.height
    args.width = default_side if args.width is None else args.width
    if args.dim % args.heads or (args.dim // args.heads) % 2:
        parser.error(f"--dim {args.dim} must split into --heads {args.heads} heads of even size")
    if args.frames < 1 or args.height % 2 or args.width % 2:
        parser.error("the latent must have at least one frame and an even height and width (patch 1x2x2)")
    for name in ("steps", "rounds", "mem_steps", "profile_steps", "tp_steps", "tp_batch", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 1 or args.tp_warmup < 1:
        parser.error("--warmup and --tp-warmup must be >= 1 (the first step also checks parity)")
    args.in_shape = f"{args.frames}x{args.height}x{args.width}"
    return args


def main() -> None:
    args = parse_args()
    if args.side:
        side_main(args)
        return
    print(f"wan dit: ours vs diffusers, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.mode in ("all", "compare"):
        compare(args)
    if args.mode == "throughput" or (args.mode == "all" and args.device == "cuda"):
        throughput(args)


if __name__ == "__main__":
    main()

