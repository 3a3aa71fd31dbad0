"""The inverse dynamics model (issue 14): training samples/s and peak memory with and without
`channels_last` / activation checkpointing, and `idm label` frames/s against the bare forward.

    python benchmarks/idm_step.py --size tiny                        # about a minute on 2 cores
    python benchmarks/idm_step.py --steps 2 --rounds 1 --batch 1 --frames 8   # published, CPU: 5+ min
    python benchmarks/idm_step.py [--size published] [--batch 2] [--steps 2] [--rounds 2] \
        [--frames 16] [--label-batch 8] [--device cpu|cuda] [--only train|label]

Training: a step is `idm_losses` (Eq. 4) forward, backward and an AdamW step on random frames of
720x640 (published; tiny: 72x64) resized to 518x518 (tiny: 64). Variants, each in a fresh process
(peak memory is per process), their order alternating round by round, medians over the rounds:
- baseline: fp32, contiguous;
- channels_last: model and input frames `.to(memory_format=torch.channels_last)`;
- checkpointing: `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` around the U-Net's
  levels (`in_conv`, every `downs` / `ups` block) and the ResNet's stages (`conv2_x` .. `conv5_x`),
  by wrapping those modules' forward here (no library change). The recomputed forward updates the
  BatchNorm running statistics a second time, which does not change the training outputs.
Peak memory: what a step needs above what the process holds between steps (weights, AdamW state),
after one warm-up step: on CUDA `torch.cuda.max_memory_allocated`, on CPU the growth of the peak
RSS (VmHWM, see memory.py) under MALLOC_MMAP_THRESHOLD_=65536 so freed buffers leave the RSS.
Printed as ratios variant / baseline (samples/s: above 1 is faster; memory: below 1 is smaller).

Labelling: an mp4 of `--frames` 720x640 frames and an `idm.pt` (upstream's layout; for tiny also
the sizes) are written to a temporary directory and opened with `open_idm`; `label_video` (probe,
decode, [-1, 1], batches through `predict`) against `model(preprocess(frames))` under no_grad on
the same frames decoded once beforehand, in batches of `--label-batch`, alternating order per
round. Prints `frames/s ratio label/bare` (goal: at least 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import time

VARIANTS = ("baseline", "channels_last", "checkpointing")
SIZES = {"published": (720, 640, 518), "tiny": (72, 64, 64)}  # frame height, width; network input


def build_model(size: str):
    import torch

    from worldtune.models.idm import IDM

    torch.manual_seed(0)
    return IDM.published(output_dim=14) if size == "published" else IDM.tiny(output_dim=14)


def add_checkpointing(idm) -> int:
    """Recompute the U-Net's levels and the ResNet's stages in backward; returns how many modules."""
    from torch.utils.checkpoint import checkpoint

    unet, resnet = idm.model.mask_model, idm.model.resnet_model
    modules = [unet.in_conv, *unet.downs, *unet.ups, resnet.conv2_x, resnet.conv3_x, resnet.conv4_x, resnet.conv5_x]
    for module in modules:  # an instance attribute shadows the class's forward in Module.__call__
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
    return len(modules)


def train_side(args: argparse.Namespace) -> dict:
    import torch

    from worldtune.systems.idm.config import IdmModelSection
    from worldtune.systems.idm.recipe import idm_losses

    device = torch.device(args.device)
    height, width, image_size = SIZES[args.size]
    model = build_model(args.size).to(device).train()
    section = IdmModelSection(output_dim=14, image_size=image_size)
    generator = torch.Generator().manual_seed(1)
    frames = (torch.rand(args.batch, 3, height, width, generator=generator) * 2 - 1).to(device)
    actions = torch.randn(args.batch, 14, generator=generator).to(device)
    if args.variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        frames = frames.contiguous(memory_format=torch.channels_last)
    elif args.variant == "checkpointing":
        add_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-2)

    def step() -> float:
        loss = idm_losses(model, section, frames, actions)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync

    first_loss = step()  # the same loss for every variant (then measure_step's own warm-up and timing)
    sys.path.insert(0, os.path.dirname(__file__))
    from memory import measure_step

    def timed() -> float:
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return {**measure_step(timed, device, args.steps), "first_loss": first_loss,
            "params": sum(p.numel() for p in model.parameters())}


def run_training(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from memory import run_variants

    height, width, image_size = SIZES[args.size]
    med = run_variants(__file__, sys.argv[1:], VARIANTS, args.rounds)
    print(f"IDM training, {args.size} size ({med['baseline']['params'] / 1e6:.1f}M params), batch {args.batch}, "
          f"frames {height}x{width} -> {image_size}x{image_size}, {args.device}; medians over {args.rounds} "
          f"processes x {args.steps} steps (after warm-up)")
    for variant, r in med.items():
        print(f"  {variant:<13} {args.batch / r['step_s']:8.3f} samples/s ({r['step_s']:7.2f} s/step)   step peak "
              f"{r['peak_bytes'] / 2**30:6.2f} GiB   first loss {r['first_loss']:.6f}")
    base = med["baseline"]
    for variant in VARIANTS[1:]:
        print(f"samples/s ratio {variant}/baseline: {base['step_s'] / med[variant]['step_s']:.3f}")
        print(f"peak memory ratio {variant}/baseline: {med[variant]['peak_bytes'] / base['peak_bytes']:.3f}")


def synthetic_video(frames: int, height: int, width: int):
    """uint8 [T, H, W, 3]: smooth stripes panning under a moving block (cheap to encode, not flat)."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        for c in range(3):
            video[t, :, :, c] = (127 + 100 * np.sin((x + 7 * t) / (17 + 5 * c) + y / 29)).astype(np.uint8)
        top, left = (20 + 9 * t) % (height // 2), (30 + 13 * t) % (width // 2)
        video[t, top:top + height // 5, left:left + width // 5] = (230, 60, 40)
    return video


def run_labelling(args: argparse.Namespace) -> None:
    import torch

    from worldtune.data.video import read_frames
    from worldtune.data.video_write import write_video
    from worldtune.models.idm import preprocess
    from worldtune.systems.idm.inference import open_idm
    from worldtune.systems.idm.label import label_video

    height, width, image_size = 720, 640, SIZES[args.size][2]
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(args.size)
        payload = {"model_state_dict": model.state_dict()}
        if args.size != "published":  # open_idm assumes the published size and 518 otherwise
            config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.config).items()}
            payload.update(idm_config=config, image_size=image_size, output_dim=model.output_dim)
        torch.save(payload, os.path.join(tmp, "idm.pt"))
        video = write_video(os.path.join(tmp, "video.mp4"), synthetic_video(args.frames, height, width), fps=10)
        opened = open_idm(os.path.join(tmp, "idm.pt"), device)
        decoded = torch.from_numpy(read_frames(video, range(args.frames))).permute(0, 3, 1, 2).float() / 127.5 - 1

        @torch.no_grad()
        def bare() -> None:
            for chunk in decoded.split(args.label_batch):
                opened.model(preprocess(chunk.to(device), opened.image_size))
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def label() -> None:
            assert label_video(opened, video, args.label_batch).shape == (args.frames, 14)

        with torch.no_grad():  # warm-up: one frame through the network
            opened.model(preprocess(decoded[:1].to(device), opened.image_size))
        times: dict[str, list[float]] = {"label": [], "bare": []}
        for round_index in range(args.rounds):
            for name in ("bare", "label") if round_index % 2 == 0 else ("label", "bare"):
                start = time.perf_counter()
                (bare if name == "bare" else label)()
                times[name].append(time.perf_counter() - start)
    rate = {name: args.frames / statistics.median(t) for name, t in times.items()}
    print(f"IDM labelling, {args.size} size, {args.frames} frames {height}x{width} -> {image_size}x{image_size}, "
          f"batch {args.label_batch}, {args.device}; median over {args.rounds} rounds")
    print(f"  idm label (label_video)   {rate['label']:8.3f} frames/s")
    print(f"  bare forward              {rate['bare']:8.3f} frames/s")
    print(f"frames/s ratio label/bare: {rate['label'] / rate['bare']:.3f} (goal >= 0.9)")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="published")
    parser.add_argument("--batch", type=int, default=2, help="training batch (the paper's is 128)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="rounds alternating the variants (medians)")
    parser.add_argument("--frames", type=int, default=16, help="frames of the labelled video")
    parser.add_argument("--label-batch", type=int, default=8, help="idm label's default is 32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=("train", "label"), help="run one of the two measurements")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # one training measurement, in its own process (benchmarks/memory.run_variants)
        print(json.dumps(train_side(args)))
        return 0
    if args.only != "label":
        run_training(args)
    if args.only != "train":
        run_labelling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
