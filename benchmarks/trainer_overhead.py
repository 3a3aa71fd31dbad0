"""Trainer overhead: worldtune's Trainer against a bare PyTorch loop on the same work.

The same model (same seed, so the same initial weights), the same micro-batches in the same order
and the same AdamW hyperparameters are stepped by `Trainer(cfg, recipe).fit()` and by a plain
loop (forward, backward, clip_grad_norm_, optimizer.step, zero_grad). Prints the time ratio
trainer/bare and the peak memory ratio trainer/bare; the goal is at most 1.05 for both. Always
exits 0: this is a measurement, not a test.

    .venv/bin/python benchmarks/trainer_overhead.py                 # CPU, about a minute
    .venv/bin/python benchmarks/trainer_overhead.py --device cuda --dim 1024 --layers 12 \
        --batch 16 --seq 512 --steps 60                              # GPU scale

Time, measured two ways, both interleaving the sides so machine noise hits both alike:
- Lockstep (the headline): one `fit()` in which the recipe's `loss()`, before the trainer's
  forward, runs one whole step of the bare loop (its own model copy, optimizer and loader). So
  bare and trainer steps alternate one by one: a trainer iteration is the time from the end of one
  bare step to the start of the next (forward, backward, clipping, optimizer, metrics, JSONL,
  console line, next batch), a bare iteration is one bare step. Medians over the steps after
  `--warmup-steps`. Robust on a busy machine, where whole runs see very different load.
- Alternating runs: `--rounds` separate runs per side, bare/trainer then trainer/bare, ... .
  Per run the median time between consecutive `loss()` calls (one loop iteration), then the
  median over the runs. Also compares the trainer's own `perf/step_time` (batch fetch to optimizer
  update, i.e. without its logging) with the same span of the bare loop, and the whole `fit()`
  wall time (setup, final checkpoint, loss plot) with the whole bare run.

Peak memory: each side runs once more in a fresh subprocess of this script (`--side`), so the two
never share a high-water mark. On CUDA torch.cuda.max_memory_allocated (reset at the start); on
CPU the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs just before
the run). The headline is the peak reached during the training steps (read as the last step
starts); the peak over the whole run (incl. the trainer's final checkpoint) is shown too.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from worldtune.config import RunConfig, build_config
from worldtune.recipes import Parts, Recipe
from worldtune.train.logging import METRICS_FILE, read_metrics
from worldtune.train.loop import Trainer

GOAL = 1.05
RESULT_PREFIX = "TRAINER_OVERHEAD_RESULT "


# ----------------------------------------------------------------------------- the recipe


@dataclass
class OverheadModelConfig:
    vocab: int = 1024
    dim: int = 256
    layers: int = 4
    heads: int = 4
    seq: int = 64


@dataclass
class OverheadDataConfig:
    num_items: int = 256


@dataclass
class OverheadConfig(RunConfig):
    model: OverheadModelConfig = field(default_factory=OverheadModelConfig)
    data: OverheadDataConfig = field(default_factory=OverheadDataConfig)


class TinyLM(nn.Module):
    """Token embedding, pre-norm transformer encoder blocks, LM head."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


class TokenDataset(Dataset):
    """Precomputed random token rows: indexing is a view, so data loading is not what is measured."""

    def __init__(self, num_items: int, seq: int, vocab: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(0, vocab, (num_items, seq + 1), generator=generator)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        return {"tokens": row[:-1], "targets": row[1:]}


def _memory_mark(device: torch.device) -> int:
    """High-water mark so far, in bytes (CUDA allocator peak, or the process's peak RSS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class OverheadRecipe(Recipe):
    """Next-token cross entropy; `loss()` timestamps every call (and reads the memory mark)."""

    name = "trainer_overhead"
    config_class = OverheadConfig

    def __init__(self, device: torch.device, probe_memory: bool = False) -> None:
        self.device = device
        self.probe_memory = probe_memory
        self.marks: list[float] = []
        self.memory: list[int] = []

    def build(self, cfg: OverheadConfig) -> Parts:
        m = cfg.model
        model = TinyLM(m.vocab, m.dim, m.layers, m.heads)
        data = TokenDataset(cfg.data.num_items, m.seq, m.vocab, seed=cfg.seed + 1)
        return Parts(model=model, train_dataset=data)

    def loss(self, parts: Parts, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.marks.append(time.perf_counter())
        if self.probe_memory:
            self.memory.append(_memory_mark(self.device))
        logits = parts.model(batch["tokens"])
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())}


# ----------------------------------------------------------------------------- the two sides


@dataclass
class RunResult:
    side: str
    marks: list[float]  # perf_counter at each loss() call
    step_times: list[float]  # bare: fetch..update; trainer: its perf/step_time (the same span)
    wall: float  # the whole run: build + loop (bare) / fit() (trainer)
    last_loss: float
    memory: list[int] = field(default_factory=list)  # memory mark at each loss() call
    memory_end: int = 0


def make_config(args: argparse.Namespace, output_dir: str, steps: int) -> OverheadConfig:
    tree = {
        "recipe": OverheadRecipe.name,  # informational: the recipe object is passed to Trainer
        "output_dir": output_dir,
        "seed": args.seed,
        "train": {
            "max_steps": steps,
            "batch_size": args.batch,
            "learning_rate": 3e-4,
            "shuffle": False,  # the bare loop takes the dataset in order too: same micro-batches
            "max_grad_norm": 1.0,  # the trainer's default, matched by the bare loop
        },
        # Never inside the timed steps; the trainer still saves one final checkpoint after them.
        "checkpoint": {"every_steps": steps + 1, "keep_last": 1, "resume": "none"},
        "validation": {"every_steps": 0, "at_epoch_end": False},
        "log": {"tensorboard": False, "progress_bar": False},  # log_frequency keeps its default
        "dist": {"mixed_precision": args.precision},
        "model": {"vocab": args.vocab, "dim": args.dim, "layers": args.layers, "heads": args.heads,
                  "seq": args.seq},
        "data": {"num_items": args.batch * steps},  # exactly one epoch
    }
    return build_config(OverheadConfig, tree, source="trainer_overhead")  # type: ignore[return-value]


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bare(args: argparse.Namespace, steps: int, probe_memory: bool = False) -> RunResult:
    device = torch.device(args.device)
    cfg = make_config(args, output_dir="unused", steps=steps)
    tc = cfg.train
    recipe = OverheadRecipe(device, probe_memory)
    start_run = time.perf_counter()
    torch.manual_seed(cfg.seed)  # the Trainer seeds the same way right before recipe.build
    parts = recipe.build(cfg)
    model = parts.model.to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, betas=(tc.betas[0], tc.betas[1]),
                                  eps=tc.eps, weight_decay=tc.weight_decay)
    loader = DataLoader(parts.train_dataset, batch_size=tc.batch_size, shuffle=False, drop_last=True,
                        pin_memory=device.type == "cuda")  # pinned on CUDA, as the trainer's loader
    batches = iter(loader)
    step_times: list[float] = []
    last_loss = float("nan")
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with _autocast(args.precision, device):
            loss = recipe.loss(parts, batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        # One host sync per step, at the point where the trainer has its own: it reads the loss and
        # the grad norm with a single .tolist() after clipping, before optimizer.step().
        last_loss = loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    _sync(device)
    wall = time.perf_counter() - start_run
    return RunResult("bare", recipe.marks, step_times, wall, last_loss, recipe.memory, _memory_mark(device))


def run_trainer(args: argparse.Namespace, steps: int, probe_memory: bool = False,
                profiler: cProfile.Profile | None = None) -> RunResult:
    device = torch.device(args.device)
    recipe = OverheadRecipe(device, probe_memory)
    with tempfile.TemporaryDirectory(prefix="worldtune-overhead-") as tmp:
        cfg = make_config(args, output_dir=tmp, steps=steps)
        console = io.StringIO()  # the trainer's log lines and console metrics, shown on failure only
        start_run = time.perf_counter()
        try:
            with contextlib.redirect_stderr(console):
                if profiler is not None:
                    profiler.enable()
                result = Trainer(cfg, recipe).fit()
                if profiler is not None:
                    profiler.disable()
        except BaseException:
            sys.stderr.write(console.getvalue())
            raise
        _sync(device)
        wall = time.perf_counter() - start_run
        memory_end = _memory_mark(device)
        records = [r for r in read_metrics(Path(tmp) / METRICS_FILE) if "perf/step_time" in r]
    if result.step != steps or len(records) != steps:
        raise RuntimeError(f"trainer ran {result.step} steps and logged {len(records)}; expected {steps}")
    return RunResult("trainer", recipe.marks, [r["perf/step_time"] for r in records], wall,
                     float(records[-1]["train/loss"]), recipe.memory, memory_end)


RUNNERS = {"bare": run_bare, "trainer": run_trainer}


# ----------------------------------------------------------------------------- measurement


def iteration_times(result: RunResult, warmup: int) -> list[float]:
    """Time between consecutive loss() calls (one full loop iteration), warm-up steps dropped."""
    gaps = [b - a for a, b in zip(result.marks, result.marks[1:], strict=False)]
    return gaps[warmup:]


def measure_memory_in_subprocess(args: argparse.Namespace, side: str) -> dict:
    """Run one side in a fresh interpreter and return its memory figures (bytes)."""
    command = [sys.executable, os.path.abspath(__file__), "--side", side, *forwarded_args(args)]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"{side} subprocess failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def forwarded_args(args: argparse.Namespace) -> list[str]:
    names = ["device", "precision", "vocab", "dim", "layers", "heads", "batch", "seq", "steps", "seed"]
    return [item for name in names for item in (f"--{name}", str(getattr(args, name)))]


def side_main(args: argparse.Namespace) -> None:
    """`--side`: one run with memory probes; prints one JSON line for the parent."""
    device = torch.device(args.device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = _memory_mark(device)
    result = RUNNERS[args.side](args, args.steps, probe_memory=True)
    figures = {"baseline": baseline, "steps_peak": result.memory[-1], "run_peak": result.memory_end}
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


def profile_trainer(args: argparse.Namespace) -> None:
    profiler = cProfile.Profile()
    run_trainer(args, args.steps, profiler=profiler)
    print(f"\ncProfile of one trainer fit() ({args.steps} steps, incl. setup and final checkpoint), "
          "top 30 by own time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(30)
    print("by cumulative time, worldtune functions:")
    stats.sort_stats("cumulative").print_stats("worldtune", 30)


def ratio_line(label: str, ratio: float) -> str:
    verdict = "meets" if ratio <= GOAL else "MISSES"
    return f"{label}: {ratio:.3f}  ({verdict} the goal <= {GOAL})"


def main() -> None:
    args = parse_args()
    if args.side:
        side_main(args)
        return
    device = torch.device(args.device)
    params = sum(p.numel() for p in TinyLM(args.vocab, args.dim, args.layers, args.heads).parameters())
    print(f"trainer overhead: device {device} ({args.precision}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"model: dim {args.dim} x {args.layers} layers, vocab {args.vocab} ({params / 1e6:.2f}M params); "
          f"batch {args.batch} x seq {args.seq}; {args.steps} steps per run, first {args.warmup_steps} "
          f"excluded; {args.rounds} rounds per side")

    # Untimed: one short run of each side pays the one-time costs (lazy init, first checkpoint,
    # first plot) so that they do not land on whichever side happens to run first.
    for side in ("bare", "trainer"):
        RUNNERS[side](args, args.warmup_steps + 2)

    results: dict[str, list[RunResult]] = {"bare": [], "trainer": []}
    for round_index in range(args.rounds):
        order = ("bare", "trainer") if round_index % 2 == 0 else ("trainer", "bare")
        for side in order:
            gc.collect()
            results[side].append(RUNNERS[side](args, args.steps))

    bare_runs, trainer_runs = results["bare"], results["trainer"]
    warm = args.warmup_steps

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print("\nms per step (median over the steps of each run)")
    print(f"{'round':>5}  {'bare iter':>10} {'trainer iter':>13} {'ratio':>6}   "
          f"{'bare step':>10} {'trainer step_time':>18} {'ratio':>6}   {'bare run':>9} {'fit()':>7}")
    for i, (b, t) in enumerate(zip(bare_runs, trainer_runs, strict=True), start=1):
        bi, ti = med(iteration_times(b, warm)), med(iteration_times(t, warm))
        bs, ts = med(b.step_times[warm:]), med(t.step_times[warm:])
        print(f"{i:>5}  {bi * 1e3:>10.2f} {ti * 1e3:>13.2f} {ti / bi:>6.3f}   "
              f"{bs * 1e3:>10.2f} {ts * 1e3:>18.2f} {ts / bs:>6.3f}   {b.wall:>8.2f}s {t.wall:>6.2f}s")
    bare_iter = med([med(iteration_times(r, warm)) for r in bare_runs])
    trainer_iter = med([med(iteration_times(r, warm)) for r in trainer_runs])
    bare_step = med([med(r.step_times[warm:]) for r in bare_runs])
    trainer_step = med([med(r.step_times[warm:]) for r in trainer_runs])
    bare_wall = med([r.wall for r in bare_runs])
    trainer_wall = med([r.wall for r in trainer_runs])
    print(f"{'median':>5}  {bare_iter * 1e3:>10.2f} {trainer_iter * 1e3:>13.2f} "
          f"{trainer_iter / bare_iter:>6.3f}   {bare_step * 1e3:>10.2f} {trainer_step * 1e3:>18.2f} "
          f"{trainer_step / bare_step:>6.3f}   {bare_wall:>8.2f}s {trainer_wall:>6.2f}s")
    print("  iter: loss() call to loss() call, the whole loop iteration incl. the trainer's logging")
    print("  step: batch fetch to optimizer update (the span of the trainer's perf/step_time)")
    print("  run/fit(): the whole run, incl. the trainer's setup, final checkpoint and loss plot")

    losses = (bare_runs[-1].last_loss, trainer_runs[-1].last_loss)
    same = "identical" if losses[0] == losses[1] else f"DIFFER by {abs(losses[0] - losses[1]):.3g}"
    print(f"final loss bare {losses[0]:.6f}, trainer {losses[1]:.6f}: {same}")

    memory = {side: measure_memory_in_subprocess(args, side) for side in ("bare", "trainer")}
    unit = "allocated" if device.type == "cuda" else "peak RSS growth"
    print(f"\npeak memory, MiB ({unit}; each side in a fresh process)")
    print(f"{'side':>8} {'baseline':>9} {'steps peak':>11} {'whole run':>10}")
    for side, figures in memory.items():
        base = figures["baseline"] if device.type == "cpu" else 0
        print(f"{side:>8} {figures['baseline'] / 2**20:>9.1f} {(figures['steps_peak'] - base) / 2**20:>11.1f} "
              f"{(figures['run_peak'] - base) / 2**20:>10.1f}")
    if device.type == "cpu":
        print("  baseline: peak RSS before the run (interpreter, torch, worldtune); the others are growth")

    def growth(side: str, key: str) -> float:
        figures = memory[side]
        return figures[key] - (figures["baseline"] if device.type == "cpu" else 0)

    memory_ratio = growth("trainer", "steps_peak") / max(growth("bare", "steps_peak"), 1)
    run_memory_ratio = growth("trainer", "run_peak") / max(growth("bare", "run_peak"), 1)

    print()
    print(ratio_line("time ratio trainer/bare", trainer_iter / bare_iter))
    print(ratio_line("peak memory ratio trainer/bare", memory_ratio))
    print(f"(for information: trainer perf/step_time vs the same span bare {trainer_step / bare_step:.3f}; "
          f"whole fit() vs whole bare run {trainer_wall / bare_wall:.3f}; "
          f"peak memory over the whole run incl. final checkpoint {run_memory_ratio:.3f})")

    if args.profile:
        profile_trainer(args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available (the Trainer's own choice)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (the Trainer's default)")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of each run's median")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per side, interleaved")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, cProfile one trainer run and print where the time goes")
    parser.add_argument("--side", choices=sorted(RUNNERS), help=argparse.SUPPRESS)  # memory subprocess
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if args.device == "auto":
        args.device = "cuda" if cuda else "cpu"
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device is available")
    if args.device == "cpu" and cuda:
        parser.error("--device cpu: the Trainer always trains on CUDA when one is visible; "
                     "run with CUDA_VISIBLE_DEVICES= for a CPU measurement")
    if args.precision == "auto":
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    if args.steps < args.warmup_steps + 3:
        parser.error(f"--steps must be at least --warmup-steps + 3 ({args.warmup_steps + 3})")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    main()
