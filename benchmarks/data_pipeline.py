"""Data pipeline: the clip loader against bare PyAV decoding, and cached against uncached training steps.

Two measurements on a synthetic episode dataset written to a temporary directory (h264 mp4s of a
panned random texture with a moving block and sensor noise, so the decoder has real work; actions
and instructions as in the Vidar seed layout). Prints

    clip loader samples/s ratio loader/bare: X.XX (goal >= 0.9: meets|misses)
    cached step speedup (decode+encode / cache): X.X x
    converter frames/s ratio converter/bare VAE: X.XX (goal >= 0.8: meets|misses)

and always exits 0: this is a measurement, not a test.

    .venv/bin/python benchmarks/data_pipeline.py                  # CPU, about a minute on 2 cores
    .venv/bin/python benchmarks/data_pipeline.py --profile        # cProfile the loader afterwards
    .venv/bin/python benchmarks/data_pipeline.py --episodes 16 --src-size 480x640 --size 240x320

1. Clip loader: `EpisodeClipDataset[i]` (every clip of every episode, `--num-frames` frames at
   `--fps`, resized to `--size`) against the loop a user would write with PyAV alone: open the
   file, decode sequentially up to the last needed frame, `to_ndarray(format="rgb24")` the wanted
   ones, scale to [-1, 1] and `F.interpolate` (bilinear, antialias, cover + centre crop) to the same
   [3, T, H, W]. The frame indices come from the same `resample_indices`, and the outputs are
   compared, so both sides decode and produce the same frames. One untimed pass per side first
   (file cache, the loader's per-file frame table and hash); then `--rounds` passes in which each
   item is loaded by both sides back to back, the order flipping item by item and round by round, so
   the machine's noise hits both alike. samples/s per side = items / sum over items of the median
   time per item; the headline is the ratio loader/bare (goal >= 0.9). When it misses (or with
   `--profile`), one loader pass runs under cProfile and the stages of both sides are timed apart.

2. Training steps on `configs/vidar/tiny.yaml` (tiny random DiT, tiny VAE and T5) at
   `--step-size` x `--step-frames`: the latent cache is built with `prepare_cache`, then two
   identical training setups (same seed, same DiT init, same batches, each its own RNG stream so
   they draw the same noise) run in lockstep, one step of each in turn (order flipping every step).
   A step is what the trainer's `perf/step_time` spans with `num_workers=0`: fetch and collate the
   batch (decode + resize, or read the cache), `recipe.loss` (VAE + T5 encode without a cache),
   backward, clipping, AdamW. The speedup is median(uncached step) / median(cached step). For
   information, `--trainer-rounds` alternating `Trainer.fit()` runs per side report their median
   `perf/step_time` from metrics.jsonl.

3. Ctrl-World converter (`convert_recordings`, what `worldtune prepare ctrl-world` runs) on toyenv
   recordings (`--convert-episodes` of `--convert-frames` frames, three cameras, `--convert-src-size`,
   raw or `--convert-jpeg`) with a tiny 8x-downsampling SVD VAE, against the bare VAE: the same
   frames, read and resized beforehand, through `encode_frames(SVDVaeLatents)` in the converter's chunks of
   `FRAME_CHUNK` frames. frames/s = camera frames / seconds; each round times both sides, the order
   flipping; medians over `--convert-rounds`. The headline is the ratio converter/bare (goal >= 0.8):
   what reading, decoding, resizing and writing cost on top of the VAE. For information the same
   pair runs with `encoder_batch=--convert-encoder-batch` (the VAE on a few frames per call, faster
   on a CPU, latents equal to the last bits only). The issue's setting (3 recordings of 96 frames at
   240x320, encoded at 192x320): `--convert-frames 96 --convert-src-size 240x320 --convert-size 192x320`.

Threads: `--threads 1` by default, as in a DataLoader worker (which torch limits to one thread),
and because on a busy 2-core machine torch's two OpenMP threads mostly wait for each other
(elementwise ops measured 10-100x slower than with one thread there). `--threads 0` keeps torch's
default. PyAV/FFmpeg decoding threads are not affected.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import h5py
import numpy as np
import torch
import torch.nn.functional as F

from worldtune.data.formats.episodes import EpisodeClipDataset, EpisodeDataConfig, write_manifest
from worldtune.data.video import (
    read_frames,
    resample_indices,
    resize_center_crop,
    to_model_range,
)
from worldtune.data.video_write import write_video
from worldtune.models.encoders.latent_spaces import encode_frames, frames_to_model_range
from worldtune.models.encoders.svd_vae import SVDVaeLatents, tiny_svd_vae
from worldtune.systems import load_config, train_run
from worldtune.systems.vidar.recipe import VidarRecipe
from worldtune.train.data import move_to_device
from worldtune.train.logging import METRICS_FILE, read_metrics
from worldtune.train.optim import build_optimizer

GOAL = 0.9
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "vidar" / "tiny.yaml"
ACTION_DIM = 14
INSTRUCTIONS = ("pick up the red cube", "open the drawer", "push the cup to the left", "stack the blocks")


def med(values: list[float]) -> float:
    return statistics.median(values)


@contextlib.contextmanager
def quiet():
    """Swallow worldtune's log lines and progress output; show them only if something fails."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    except BaseException:
        sys.stderr.write(sink.getvalue())
        raise


# ----------------------------------------------------------------------------- synthetic data


def synthetic_frames(num_frames: int, height: int, width: int, noise: float, seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth random scene panned 1 px/frame, a moving block, Gaussian noise."""
    rng = np.random.default_rng(seed)
    big_h, big_w = height + num_frames, width + 2 * num_frames
    coarse = torch.from_numpy(rng.random((1, 3, big_h // 12 + 2, big_w // 12 + 2), dtype=np.float32))
    scene = F.interpolate(coarse, size=(big_h, big_w), mode="bicubic", align_corners=False)[0]
    scene = (scene.permute(1, 2, 0).numpy() * 200.0 + 28.0).astype(np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    block = max(height // 6, 2)
    for t in range(num_frames):
        frame = scene[t : t + height, 2 * t : 2 * t + width].copy()
        top = int((height - block) * (0.5 + 0.4 * math.sin(t / 9.0)))
        left = int((width - block) * (0.5 + 0.4 * math.cos(t / 13.0)))
        frame[top : top + block, left : left + block] = (230.0, 230.0, 60.0)
        if noise:
            frame += rng.normal(0.0, noise, size=frame.shape).astype(np.float32)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_dataset(root: Path, args: argparse.Namespace) -> list[int]:
    """`--episodes` episodes of `--min-len`..`--max-len` frames at `--src-fps`; returns the lengths."""
    height, width = args.src_size
    lengths = []
    for i in range(args.episodes):
        span = args.max_len - args.min_len
        num_frames = args.min_len + (span * i // max(args.episodes - 1, 1))
        ep_dir = root / "episodes" / f"ep_{i:04d}"
        ep_dir.mkdir(parents=True, exist_ok=True)
        frames = synthetic_frames(num_frames, height, width, args.noise, seed=args.seed + i)
        write_video(ep_dir / "video.mp4", frames, fps=args.src_fps, crf=args.crf)
        actions = np.random.default_rng(i).standard_normal((num_frames, ACTION_DIM)).astype(np.float32)
        np.save(ep_dir / "actions.npy", actions)
        prompt = INSTRUCTIONS[i % len(INSTRUCTIONS)] if args.distinct_prompts else INSTRUCTIONS[0]
        (ep_dir / "instruction.txt").write_text(prompt, encoding="utf-8")
        lengths.append(num_frames)
    with quiet():
        write_manifest(root)
    return lengths


# ----------------------------------------------------------------------------- 1. clip loader


def bare_probe(path: Path) -> tuple[int, float]:
    """Frame count and rate from the container header (what a user reads once per file)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames, float(stream.average_rate)


def bare_decode(path: Path, indices: list[int], frame_threads: bool) -> np.ndarray:
    """uint8 [T, H, W, 3]: decode from the start up to the last wanted frame, keep the wanted ones."""
    wanted, last = set(indices), max(indices)
    frames: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if frame_threads:
            stream.thread_type = "AUTO"
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                frames[k] = frame.to_ndarray(format="rgb24")
            if k >= last:
                break
    return np.stack([frames[i] for i in indices])


def bare_resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[T, C, H, W] scaled to cover height x width (bilinear, antialias), centre-cropped."""
    src_h, src_w = video.shape[-2:]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    if (new_h, new_w) != (src_h, src_w):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return video[:, :, top : top + height, left : left + width]


def bare_to_float(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def bare_layout(video: torch.Tensor) -> torch.Tensor:
    """[T, C, H, W] -> contiguous [C, T, H, W], the loader's layout."""
    return video.permute(1, 0, 2, 3).contiguous()


def bare_load(path: Path, indices: list[int], height: int, width: int, frame_threads: bool) -> torch.Tensor:
    """The bare side: float [3, T, height, width] in [-1, 1]."""
    frames = bare_decode(path, indices, frame_threads)
    return bare_layout(bare_resize(bare_to_float(frames), height, width))


def loader_canvas(tile: torch.Tensor) -> torch.Tensor:
    """What EpisodeClipDataset._decode does after resizing one camera: canvas, clamp, layout."""
    height, width = tile.shape[-2:]
    canvas = torch.full((tile.shape[0], 3, height, width), -1.0)
    canvas[:, :, :height, :width] = tile
    return canvas.clamp_(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def clip_dataset(root: Path, args: argparse.Namespace) -> EpisodeClipDataset:
    height, width = args.size
    cfg = EpisodeDataConfig(data_dir=str(root), split="all", num_frames=args.num_frames, fps=args.fps,
                            height=height, width=width, stride=args.stride, clip_stride=args.clip_stride,
                            action_dim=ACTION_DIM)
    return EpisodeClipDataset(cfg)


def bare_items(dataset: EpisodeClipDataset, args: argparse.Namespace) -> list[tuple[Path, list[int]]]:
    """(file, source frame indices) per clip, computed the way a user would: probe once, resample."""
    root = Path(dataset.cfg.data_dir)
    probed: dict[Path, tuple[int, float]] = {}
    items = []
    for i in range(len(dataset)):
        meta = dataset.item_metadata(i)
        path = root / "episodes" / meta["episode"] / "video.mp4"
        if path not in probed:
            probed[path] = bare_probe(path)
        num_src, src_fps = probed[path]
        indices = resample_indices(num_src, src_fps, args.fps, args.num_frames, meta["start"])
        if indices != meta["frame_indices"].tolist():
            raise RuntimeError(f"item {i}: bare indices {indices} != loader {meta['frame_indices'].tolist()}")
        items.append((path, indices))
    return items


def time_call(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of fn(*args)."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def interleaved(sides: dict[str, Callable[[int], Any]], num_items: int, rounds: int,
                before: Callable[[str], None] | None = None) -> dict[str, list[list[float]]]:
    """times[side][item] over `rounds` rounds, both sides back to back per item, order flipping."""
    names = list(sides)
    times: dict[str, list[list[float]]] = {name: [[] for _ in range(num_items)] for name in names}
    for r in range(rounds):
        gc.collect()
        for i in range(num_items):
            order = names if (r + i) % 2 == 0 else names[::-1]
            for name in order:
                if before is not None:
                    before(name)
                times[name][i].append(time_call(sides[name], i)[0])
    return times


def samples_per_s(per_item: list[list[float]]) -> float:
    """Items per second from each item's median time (robust to a slow moment on a busy machine)."""
    return len(per_item) / sum(med(t) for t in per_item)


def clip_loader(root: Path, args: argparse.Namespace) -> dict[str, float]:
    height, width = args.size
    dataset = clip_dataset(root, args)
    items = bare_items(dataset, args)
    n = len(dataset)
    frame_threads = args.bare_frame_threads

    def loader(i: int) -> torch.Tensor:
        return dataset[i]["video"]

    def bare(i: int) -> torch.Tensor:
        path, indices = items[i]
        return bare_load(path, indices, height, width, frame_threads)

    # Untimed pass: OS file cache for both, the loader's per-file frame table and sha1; and the check.
    worst = 0.0
    for i in range(n):
        a, b = loader(i), bare(i)
        if a.shape != b.shape:
            raise RuntimeError(f"item {i}: loader {tuple(a.shape)} != bare {tuple(b.shape)}")
        worst = max(worst, (a - b).abs().max().item())
    src = items[0][1]
    print(f"\n1. clip loader: {n} clips of {args.num_frames} frames at {args.fps:g} fps "
          f"(source frames {src[0]}..{src[-1]} of the first), {args.src_size[0]}x{args.src_size[1]} -> "
          f"{height}x{width}; {args.rounds} interleaved rounds")
    print(f"   outputs: same shape {tuple(a.shape)}, max |loader - bare| = {worst:.2e} "
          f"({'same frames' if worst < 1e-3 else 'DIFFERENT: the sides do not load the same frames'})")
    print(f"   bare side: PyAV {av.__version__}, "
          f"{'frame threading (thread_type AUTO)' if frame_threads else 'default decoder threading'}")

    times = interleaved({"loader": loader, "bare": bare}, n, args.rounds)
    loader_sps, bare_sps = samples_per_s(times["loader"]), samples_per_s(times["bare"])
    paired = [lt / bt for lts, bts in zip(times["loader"], times["bare"], strict=True)
              for lt, bt in zip(lts, bts, strict=True)]
    mean = {side: n * args.rounds / sum(map(sum, times[side])) for side in times}
    print(f"   samples/s: loader {loader_sps:.1f}, bare {bare_sps:.1f} -> ratio loader/bare "
          f"{loader_sps / bare_sps:.3f}")
    print(f"   (ms per item, median: loader {1e3 / loader_sps:.1f}, bare {1e3 / bare_sps:.1f}; the same ratio "
          f"from the median of per-item time ratios {1 / med(paired):.3f}, from mean times "
          f"{mean['loader'] / mean['bare']:.3f})")
    result = {"ratio": loader_sps / bare_sps, "loader": loader_sps, "bare": bare_sps}

    if args.profile or result["ratio"] < GOAL:
        profile_loader(dataset, items, args)
    if args.cold_rounds:
        result["cold"] = cold_table(dataset, loader, bare, n, args.cold_rounds)
    return result


def cold_table(dataset, loader, bare, n: int, rounds: int) -> float | None:
    """Loader/bare when the loader's per-file frame table is not cached (a process that reads more
    than the cache's 256 files: each item demuxes its whole file again before decoding)."""
    from worldtune.data import video as video_module

    cached = getattr(video_module, "_cached_frame_table", None)
    if cached is None or not hasattr(cached, "cache_clear"):
        print("   (no _cached_frame_table in worldtune.data.video: cold-table measurement skipped)")
        return None

    def before(side: str) -> None:
        if side == "loader":
            cached.cache_clear()

    times = interleaved({"loader": loader, "bare": bare}, n, rounds, before)
    ratio = samples_per_s(times["loader"]) / samples_per_s(times["bare"])
    print(f"   for information, frame table not cached (cleared before every loader item, "
          f"{rounds} rounds): loader {samples_per_s(times['loader']):.1f} vs bare "
          f"{samples_per_s(times['bare']):.1f} samples/s, ratio {ratio:.3f}")
    return ratio


def profile_loader(dataset: EpisodeClipDataset, items: list[tuple[Path, list[int]]],
                   args: argparse.Namespace) -> None:
    """cProfile one loader pass, then time the stages of both sides apart (medians, ms per item)."""
    height, width = args.size
    n = len(dataset)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.profile_passes):
        for i in range(n):
            dataset[i]
    profiler.disable()
    print(f"\n   cProfile of EpisodeClipDataset.__getitem__ ({args.profile_passes} pass(es) over {n} items), "
          "top 20 by own time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(20)
    print("   by cumulative time, worldtune functions:")
    stats.sort_stats("cumulative").print_stats("worldtune", 20)

    # Stage by stage, each side split where its own code splits (the loader's mirrors
    # EpisodeClipDataset._load/_decode for one camera); both sides interleaved per item.
    loader_stages: dict[str, list[float]] = {k: [] for k in ("metadata", "read_frames", "to_model_range",
                                                             "resize_center_crop", "canvas+clamp+layout")}
    bare_stages: dict[str, list[float]] = {k: [] for k in ("decode+rgb", "to float [-1,1]", "resize",
                                                           "layout")}
    for r in range(args.rounds):
        for i in range(n):
            path, indices = items[i]
            for side in (("loader", "bare") if (r + i) % 2 == 0 else ("bare", "loader")):
                if side == "loader":
                    t, meta = time_call(dataset.item_metadata, i)
                    loader_stages["metadata"].append(t)
                    t, frames = time_call(read_frames, path, meta["frame_indices"].tolist())
                    loader_stages["read_frames"].append(t)
                    t, video = time_call(to_model_range, frames)
                    loader_stages["to_model_range"].append(t)
                    t, tile = time_call(resize_center_crop, video.permute(1, 0, 2, 3), height, width)
                    loader_stages["resize_center_crop"].append(t)
                    loader_stages["canvas+clamp+layout"].append(time_call(loader_canvas, tile)[0])
                else:
                    t, frames = time_call(bare_decode, path, indices, args.bare_frame_threads)
                    bare_stages["decode+rgb"].append(t)
                    t, video = time_call(bare_to_float, frames)
                    bare_stages["to float [-1,1]"].append(t)
                    t, video = time_call(bare_resize, video, height, width)
                    bare_stages["resize"].append(t)
                    bare_stages["layout"].append(time_call(bare_layout, video)[0])
    print("   stages, median ms per item (each side's own split; same items, interleaved):")
    for name, stages in (("loader", loader_stages), ("bare", bare_stages)):
        parts = ", ".join(f"{k} {med(v) * 1e3:.2f}" for k, v in stages.items())
        total = sum(med(v) for v in stages.values())
        print(f"     {name:>6}: {parts}  (sum {total * 1e3:.2f})")


# ----------------------------------------------------------------------------- 2. training steps


def step_overrides(root: Path, run_dir: Path, args: argparse.Namespace, steps: int) -> list[str]:
    height, width = args.step_size
    return [f"data.data_dir={root}", f"output_dir={run_dir}", f"data.num_frames={args.step_frames}",
            f"data.height={height}", f"data.width={width}", f"data.fps={args.fps}",
            f"train.batch_size={args.batch}", f"train.max_steps={steps}", "train.num_workers=0",
            # Epoch-end validation and checkpoints are off by default; periodic ones are turned off here.
            "validation.every_steps=0", f"checkpoint.every_steps={steps + 1}", "checkpoint.resume=none",
            "log.tensorboard=false", "log.progress_bar=false", f"log.log_frequency={steps + 1}"]


class StepSide:
    """One training setup stepped by hand: what Trainer._train_step does with num_workers=0."""

    def __init__(self, cfg, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.recipe = VidarRecipe()
        torch.manual_seed(cfg.seed)  # the same DiT initialisation on both sides
        with quiet():
            self.parts = self.recipe.build(cfg)
        self.dataset = self.parts.train_dataset
        self.model = self.parts.model.to(device).train()
        for module in self.parts.frozen.values():
            module.to(device).requires_grad_(False).eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.train, cfg.train.learning_rate)
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.rng = generator.get_state()  # this side's stream of the global RNG (noise, sigma, CFG drop)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, indices: list[int]) -> None:
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        start = time.perf_counter()
        batch = self.parts.collate_fn([self.dataset[i] for i in indices])
        batch = move_to_device(batch, self.device)
        loss = self.recipe.loss(self.parts, batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.max_grad_norm)
        self.losses.append(loss.item())  # the step's one host sync, as in the trainer
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(outer)


def batch_order(num_items: int, batch: int, steps: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        order += torch.randperm(num_items, generator=generator).tolist()
    return [order[s * batch : (s + 1) * batch] for s in range(steps)]


def trainer_step_time(root: Path, work: Path, args: argparse.Namespace, cache: Path | None, tag: str) -> float:
    run_dir = work / f"run_{tag}"
    overrides = step_overrides(root, run_dir, args, args.trainer_steps)
    if cache is not None:
        overrides.append(f"data.cache_dir={cache}")
    with quiet():
        train_run(load_config(TINY, overrides))
    times = [r["perf/step_time"] for r in read_metrics(run_dir / METRICS_FILE) if "perf/step_time" in r]
    return med(times[args.warmup_steps :])


def training_steps(root: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    from worldtune.systems.vidar.cache import prepare_cache

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the trainer's choice
    cache = work / "cache"
    total = args.warmup_steps + args.steps
    plain_cfg = load_config(TINY, step_overrides(root, work / "unused", args, total))
    cached_cfg = load_config(TINY, [*step_overrides(root, work / "unused", args, total),
                                    f"data.cache_dir={cache}"])
    with quiet():
        build_time, stats = time_call(lambda: prepare_cache(cached_cfg, progress=False))
    sides = {"decode+encode": StepSide(plain_cfg, device), "cache": StepSide(cached_cfg, device)}
    n = len(sides["cache"].dataset)
    h, w = args.step_size
    print(f"\n2. training steps, {TINY.relative_to(REPO)} on {device.type}: {n} train clips of "
          f"{args.step_frames} frames at {h}x{w}, batch {args.batch}; cache built in {build_time:.1f}s "
          f"({stats.total} clips, {stats.bytes_written / 1e6:.2f} MB)")
    batches = batch_order(n, args.batch, total, args.seed)
    names = list(sides)
    gc.collect()
    for s, indices in enumerate(batches):
        for name in names if s % 2 == 0 else names[::-1]:
            sides[name].step(indices)
    plain, cached = (sides[k].times[args.warmup_steps :] for k in names)
    paired = [a / b for a, b in zip(plain, cached, strict=True)]
    speedup = med(plain) / med(cached)
    print(f"   lockstep, {args.steps} steps after {args.warmup_steps} warm-up: ms per step, median "
          f"decode+encode {med(plain) * 1e3:.1f}, cache {med(cached) * 1e3:.1f} -> speedup {speedup:.2f}x "
          f"(median of per-step ratios {med(paired):.2f}x)")
    diff = max(abs(a - b) for a, b in zip(sides[names[0]].losses, sides[names[1]].losses, strict=True))
    print(f"   loss per step, max |decode+encode - cache| over {total} steps: {diff:.2e} "
          f"({'same training' if diff < 1e-3 else 'DIFFERENT: cached latents do not match fresh encoding'})")
    result = {"speedup": speedup, "plain": med(plain), "cached": med(cached)}

    if args.trainer_rounds:
        runs: dict[str, list[float]] = {"plain": [], "cached": []}
        for r in range(args.trainer_rounds):
            for side in ("plain", "cached") if r % 2 == 0 else ("cached", "plain"):
                tag = f"{side}_{r}"
                runs[side].append(trainer_step_time(root, work, args, cache if side == "cached" else None, tag))
        p, c = med(runs["plain"]), med(runs["cached"])
        print(f"   for information, Trainer.fit() perf/step_time ({args.trainer_rounds} alternating runs per "
              f"side of {args.trainer_steps} steps, median over steps after {args.warmup_steps}, then over runs): "
              f"decode+encode {p * 1e3:.1f} ms, cache {c * 1e3:.1f} ms -> {p / c:.2f}x")
        result["trainer_speedup"] = p / c
    return result


# ----------------------------------------------------------------------------- converter

CONVERT_GOAL = 0.8
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def write_recordings(root: Path, args: argparse.Namespace) -> list[Path]:
    from worldtune.data.toyenv import generate_dataset

    return generate_dataset(root, args.convert_episodes, seed=args.seed, num_steps=args.convert_frames,
                            image_size=args.convert_src_size, cameras=CAMERAS, jpeg=args.convert_jpeg,
                            show_progress=False)


def resized_chunks(recordings: list[Path], size: tuple[int, int]) -> list[torch.Tensor]:
    """Every camera's frames as the converter hands them to the latent space: FRAME_CHUNK at a time,
    in [-1, 1], resized (bilinear) to `size`."""
    from worldtune.systems.ctrl_world.convert_recording import FRAME_CHUNK, decode_image, image_kind

    chunks = []
    for path in recordings:
        with h5py.File(path, "r") as f:
            for cam in CAMERAS:
                ds = f[f"observations/images/{cam}"]
                frames = ds[()] if image_kind(ds) == "raw" else np.stack([decode_image(d) for d in ds])
                for start in range(0, len(frames), FRAME_CHUNK):
                    x = frames_to_model_range(frames[start : start + FRAME_CHUNK])
                    chunks.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp_(-1, 1))
    return chunks


def converter_pair(recordings: list[Path], work: Path, args: argparse.Namespace,
                   encoder_batch: int | None) -> tuple[float, float]:
    """Median frames/s of (converter, bare VAE) over interleaved rounds."""
    from worldtune.systems.ctrl_world.convert import convert_recordings

    space = SVDVaeLatents(tiny_svd_vae(block_out_channels=(32, 32, 32, 32)), encoder_batch=encoder_batch)
    chunks = resized_chunks(recordings, args.convert_size)
    frames = sum(c.shape[0] for c in chunks)
    h, w = args.convert_size

    def bare(_: int) -> None:
        for chunk in chunks:
            encode_frames(space, chunk)

    def converter(r: int) -> None:
        out = work / f"convert_{encoder_batch}_{r}" / "data"
        with quiet():
            convert_recordings(recordings[0].parent, out, space, dataset_name="bench", cameras=CAMERAS,
                               height=h, width=w, progress=False)
        shutil.rmtree(out.parent)

    bare(0)  # warm-up: first-call allocations
    times: dict[str, list[float]] = {"converter": [], "bare": []}
    for r in range(args.convert_rounds):
        for name in ("converter", "bare") if r % 2 == 0 else ("bare", "converter"):
            times[name].append(time_call(converter if name == "converter" else bare, r)[0])
    return frames / med(times["converter"]), frames / med(times["bare"])


def converter_speed(work: Path, args: argparse.Namespace) -> dict[str, float]:
    recordings = write_recordings(work / "recordings", args)
    (sh, sw), (h, w) = args.convert_src_size, args.convert_size
    kind = "JPEG" if args.convert_jpeg else "raw"
    print(f"\n3. Ctrl-World converter: {len(recordings)} recordings x {args.convert_frames} frames x "
          f"{len(CAMERAS)} cameras, {kind} {sh}x{sw} -> {h}x{w}, tiny 8x SVD VAE")
    result: dict[str, float] = {}
    for encoder_batch in (None, args.convert_encoder_batch):
        conv, bare = converter_pair(recordings, work, args, encoder_batch)
        label = "default" if encoder_batch is None else f"encoder_batch={encoder_batch}"
        print(f"   {label}: converter {conv:.2f} frames/s, bare VAE {bare:.2f} frames/s -> ratio {conv / bare:.2f}")
        key = "" if encoder_batch is None else "_batched"
        result |= {f"converter{key}": conv, f"bare{key}": bare, f"ratio{key}": conv / bare}
    print(f"   encoder_batch={args.convert_encoder_batch} vs default: converter "
          f"{result['converter_batched'] / result['converter']:.2f}x faster")
    return result


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"data pipeline: torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), PyAV {av.__version__}")
    with tempfile.TemporaryDirectory(prefix="worldtune-data-pipeline-") as tmp:
        work = Path(tmp)
        root = work / "data"
        built, lengths = time_call(lambda: write_dataset(root, args))
        size = sum(p.stat().st_size for p in root.glob("episodes/*/video.mp4"))
        h, w = args.src_size
        print(f"dataset: {args.episodes} episodes of {min(lengths)}-{max(lengths)} frames at {args.src_fps:g} fps, "
              f"{h}x{w} h264 crf {args.crf}, noise {args.noise:g} ({size / 1e6:.2f} MB, "
              f"{size * 8 / sum(lengths) * args.src_fps / 1e3:.0f} kbit/s), written in {built:.1f}s")
        loader = clip_loader(root, args) if not args.skip_loader else None
        convert = converter_speed(work, args) if not args.skip_convert else None
        steps, failure = None, None
        if not args.skip_steps:
            try:
                steps = training_steps(root, work, args)
            except Exception as err:  # a measurement: report and still exit 0
                failure = f"{type(err).__name__}: {err}"
                print(f"\n2. training steps FAILED: {failure}")
    print(f"\ntotal {time.perf_counter() - start:.0f}s")
    if loader is not None:
        verdict = "meets" if loader["ratio"] >= GOAL else "misses"
        print(f"clip loader samples/s ratio loader/bare: {loader['ratio']:.2f} (goal >= {GOAL}: {verdict})")
    if steps is not None:
        print(f"cached step speedup (decode+encode / cache): {steps['speedup']:.1f} x")
    elif failure is not None:
        print(f"cached step speedup (decode+encode / cache): n/a (failed: {failure[:120]})")
    if convert is not None:
        verdict = "meets" if convert["ratio"] >= CONVERT_GOAL else "misses"
        print(f"converter frames/s ratio converter/bare VAE: {convert['ratio']:.2f} (goal >= {CONVERT_GOAL}: {verdict})")
    if args.json:
        print("DATA_PIPELINE_RESULT " + json.dumps({"loader": loader, "steps": steps, "convert": convert}))


def size_arg(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None
    return height, width


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("synthetic dataset")
    data.add_argument("--episodes", type=int, default=8)
    data.add_argument("--min-len", type=int, default=60, help="frames of the shortest episode")
    data.add_argument("--max-len", type=int, default=90, help="frames of the longest episode")
    data.add_argument("--src-fps", type=float, default=30.0)
    data.add_argument("--src-size", type=size_arg, default=(256, 320), help="HEIGHTxWIDTH of the videos")
    data.add_argument("--crf", type=int, default=18, help="libx264 quality (write_video's default)")
    data.add_argument("--noise", type=float, default=4.0, help="sensor noise std (0: very compressible)")
    data.add_argument("--distinct-prompts", action="store_true",
                      help="a different instruction per episode (default: one shared instruction)")
    loader = parser.add_argument_group("1. clip loader")
    loader.add_argument("--num-frames", type=int, default=17)
    loader.add_argument("--fps", type=float, default=10.0, help="clip frame rate (both measurements)")
    loader.add_argument("--size", type=size_arg, default=(128, 160), help="HEIGHTxWIDTH of the clips")
    loader.add_argument("--stride", type=int, default=32)
    loader.add_argument("--clip-stride", type=int, default=8, help="source frames between clip starts")
    loader.add_argument("--rounds", type=int, default=8, help="interleaved passes over all clips")
    loader.add_argument("--cold-rounds", type=int, default=2,
                        help="extra passes with the loader's frame table cache cleared (0: skip)")
    loader.add_argument("--bare-frame-threads", action="store_true",
                        help="bare side sets thread_type AUTO like the loader (default: PyAV's default)")
    loader.add_argument("--profile", action="store_true", help="cProfile the loader even if it meets the goal")
    loader.add_argument("--profile-passes", type=int, default=2)
    loader.add_argument("--skip-loader", action="store_true")
    steps = parser.add_argument_group("2. training steps (configs/vidar/tiny.yaml)")
    steps.add_argument("--step-size", type=size_arg, default=(64, 64), help="HEIGHTxWIDTH, multiples of 32")
    steps.add_argument("--step-frames", type=int, default=9, help="frames per clip, 4k+1")
    steps.add_argument("--batch", type=int, default=2)
    steps.add_argument("--steps", type=int, default=40, help="lockstep steps per side after warm-up")
    steps.add_argument("--warmup-steps", type=int, default=3)
    steps.add_argument("--trainer-rounds", type=int, default=2,
                       help="alternating Trainer.fit() runs per side, for information (0: skip)")
    steps.add_argument("--trainer-steps", type=int, default=20)
    steps.add_argument("--skip-steps", action="store_true")
    convert = parser.add_argument_group("3. Ctrl-World converter")
    convert.add_argument("--convert-episodes", type=int, default=2)
    convert.add_argument("--convert-frames", type=int, default=48, help="frames per recording")
    convert.add_argument("--convert-src-size", type=size_arg, default=(120, 160), help="HEIGHTxWIDTH recorded")
    convert.add_argument("--convert-size", type=size_arg, default=(96, 160), help="HEIGHTxWIDTH encoded (x8)")
    convert.add_argument("--convert-jpeg", action="store_true", help="JPEG frames (default: raw uint8)")
    convert.add_argument("--convert-rounds", type=int, default=2)
    convert.add_argument("--convert-encoder-batch", type=int, default=2,
                         help="encoder_batch of the second, informative pair")
    convert.add_argument("--skip-convert", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()
    if args.min_len > args.max_len or args.episodes < 1:
        parser.error("need --episodes >= 1 and --min-len <= --max-len")
    if args.rounds < 1 or args.steps < 1 or args.warmup_steps < 0 or args.trainer_steps <= args.warmup_steps:
        parser.error("need --rounds >= 1, --steps >= 1, --warmup-steps >= 0, --trainer-steps > --warmup-steps")
    return args


if __name__ == "__main__":
    main()
