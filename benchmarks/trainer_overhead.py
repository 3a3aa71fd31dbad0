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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from memory import peak_rss, reset_peak_rss  # benchmarks/memory.py
from torch import nn
from torch.utils.data import DataLoader, Dataset

from worldtune.config import RunConfig, build_config
from worldtune.train.logging import METRICS_FILE, read_metrics
from worldtune.train.loop import Trainer
from worldtune.train.recipe import Parts, Recipe

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
    return peak_rss()


class OverheadRecipe(Recipe):
    """Next-token cross entropy. `loss()` timestamps every call, optionally reads the memory mark,
    and, given a `partner` bare loop, runs one step of it first (lockstep mode)."""

    name = "trainer_overhead"
    config_class = OverheadConfig

    def __init__(self, device: torch.device, probe_memory: bool = False,
                 partner: BareLoop | None = None) -> None:
        self.device = device
        self.probe_memory = probe_memory
        self.partner = partner
        self.marks: list[float] = []  # entering loss()
        self.resumed: list[float] = []  # leaving the partner's step, i.e. starting our forward
        self.memory: list[int] = []

    def build(self, cfg: OverheadConfig) -> Parts:
        m = cfg.model
        model = TinyLM(m.vocab, m.dim, m.layers, m.heads)
        data = TokenDataset(cfg.data.num_items, m.seq, m.vocab, seed=cfg.seed + 1)
        return Parts(model=model, train_dataset=data)

    def loss(self, parts: Parts, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.marks.append(time.perf_counter())
        if self.partner is not None:
            self.partner.step()
            self.resumed.append(time.perf_counter())
        if self.probe_memory:
            self.memory.append(_memory_mark(self.device))
        logits = parts.model(batch["tokens"])
        return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())}


# ----------------------------------------------------------------------------- the two sides


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
        "validation": {"every_steps": 0},
        "log": {"tensorboard": False, "progress_bar": False},  # log_frequency keeps its default
        "dist": {"mixed_precision": args.precision},
        "model": {"vocab": args.vocab, "dim": args.dim, "layers": args.layers, "heads": args.heads,
                  "seq": args.seq},
        "data": {"num_items": args.batch * steps},  # exactly one epoch
    }
    return build_config(OverheadConfig, tree, source="trainer_overhead")  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The plain PyTorch loop, built like the trainer builds its run, stepped one step at a time."""

    def __init__(self, args: argparse.Namespace, steps: int, probe_memory: bool = False) -> None:
        self.device = torch.device(args.device)
        self.precision = args.precision
        cfg = make_config(args, output_dir="unused", steps=steps)
        tc = cfg.train
        self.max_grad_norm = tc.max_grad_norm
        self.recipe = OverheadRecipe(self.device, probe_memory)
        torch.manual_seed(cfg.seed)  # the Trainer seeds the same way right before recipe.build
        self.parts = self.recipe.build(cfg)
        self.model = self.parts.model.to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=tc.learning_rate, betas=(tc.betas[0], tc.betas[1]),
                                           eps=tc.eps, weight_decay=tc.weight_decay)
        loader = DataLoader(self.parts.train_dataset, batch_size=tc.batch_size, shuffle=False, drop_last=True,
                            pin_memory=self.device.type == "cuda",  # as the trainer's loader
                            generator=torch.Generator().manual_seed(cfg.seed))  # leaves the global RNG alone
        self.batches = iter(loader)
        self.step_times: list[float] = []
        self.last_loss = float("nan")

    def step(self) -> None:
        start = time.perf_counter()
        device = self.device
        # In lockstep mode this runs inside the trainer's autocast region: use only our own.
        with torch.autocast(device_type=device.type, enabled=False):
            batch = next(self.batches)
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            if self.precision == "bf16":
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    loss = self.recipe.loss(self.parts, batch)["loss"]
            else:
                loss = self.recipe.loss(self.parts, batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            # One host sync per step, at the point where the trainer has its own: it reads the loss
            # and the grad norm with a single .tolist() after clipping, before optimizer.step().
            self.last_loss = loss.item()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step_times.append(time.perf_counter() - start)


@dataclass
class RunResult:
    side: str
    marks: list[float]  # perf_counter at each loss() call
    step_times: list[float]  # bare: fetch..update; trainer: its perf/step_time (the same span)
    wall: float  # the whole run: build + loop (bare) / fit() (trainer)
    last_loss: float
    memory: list[int] = field(default_factory=list)  # memory mark at each loss() call
    memory_end: int = 0
    partner: BareLoop | None = None
    resumed: list[float] = field(default_factory=list)


def run_bare(args: argparse.Namespace, steps: int, probe_memory: bool = False) -> RunResult:
    start_run = time.perf_counter()
    bare = BareLoop(args, steps, probe_memory)
    for _ in range(steps):
        bare.step()
    _sync(bare.device)
    wall = time.perf_counter() - start_run
    return RunResult("bare", bare.recipe.marks, bare.step_times, wall, bare.last_loss, bare.recipe.memory,
                     _memory_mark(bare.device))


def run_trainer(args: argparse.Namespace, steps: int, probe_memory: bool = False,
                profiler: cProfile.Profile | None = None, lockstep: bool = False) -> RunResult:
    device = torch.device(args.device)
    partner = BareLoop(args, steps) if lockstep else None
    recipe = OverheadRecipe(device, probe_memory, partner)
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
                     float(records[-1]["train/loss"]), recipe.memory, memory_end, partner, recipe.resumed)


RUNNERS = {"bare": run_bare, "trainer": run_trainer}


# ----------------------------------------------------------------------------- measurement


def med(values: list[float]) -> float:
    return statistics.median(values)


def iteration_times(result: RunResult, warmup: int) -> list[float]:
    """Time between consecutive loss() calls (one full loop iteration), warm-up steps dropped."""
    gaps = [b - a for a, b in zip(result.marks, result.marks[1:], strict=False)]
    return gaps[warmup:]


def lockstep(args: argparse.Namespace) -> dict[str, float]:
    """One fit() with a bare step inside every trainer step; per-side medians (seconds)."""
    gc.collect()
    run = run_trainer(args, args.steps, lockstep=True)
    bare = run.partner
    assert bare is not None
    warm = args.warmup_steps
    # Trainer iteration i: from leaving bare step i (start of trainer forward i) to entering loss()
    # i+1, which is everything the trainer does for one step, the partner's step excluded.
    trainer_iter = [b - a for a, b in zip(run.resumed, run.marks[1:], strict=False)][warm:]
    bare_iter = bare.step_times[warm:]
    # The trainer's perf/step_time of step i contains bare step i (run inside its loss()).
    trainer_span = [t - b for t, b in zip(run.step_times, bare.step_times, strict=True)][warm:]
    paired = [t / b for t, b in zip(trainer_iter, bare_iter[: len(trainer_iter)], strict=True)]
    return {"bare": med(bare_iter), "trainer": med(trainer_iter), "trainer_span": med(trainer_span),
            "paired": med(paired), "bare_loss": bare.last_loss, "trainer_loss": run.last_loss,
            "steps": len(trainer_iter)}


def alternating(args: argparse.Namespace) -> dict[str, float]:
    results: dict[str, list[RunResult]] = {"bare": [], "trainer": []}
    for round_index in range(args.rounds):
        order = ("bare", "trainer") if round_index % 2 == 0 else ("trainer", "bare")
        for side in order:
            gc.collect()
            results[side].append(RUNNERS[side](args, args.steps))
    bare_runs, trainer_runs = results["bare"], results["trainer"]
    warm = args.warmup_steps
    print(f"\nalternating runs: ms per step, median over the steps of each run ({args.rounds} rounds)")
    print(f"{'round':>6}  {'bare iter':>10} {'trainer iter':>13} {'ratio':>6}   "
          f"{'bare step':>10} {'trainer step_time':>18} {'ratio':>6}   {'bare run':>9} {'fit()':>7}")
    rows = []
    for b, t in zip(bare_runs, trainer_runs, strict=True):
        rows.append((med(iteration_times(b, warm)), med(iteration_times(t, warm)),
                     med(b.step_times[warm:]), med(t.step_times[warm:]), b.wall, t.wall))
    for i, (bi, ti, bs, ts, bw, tw) in enumerate(rows, start=1):
        print(f"{i:>6}  {bi * 1e3:>10.2f} {ti * 1e3:>13.2f} {ti / bi:>6.3f}   "
              f"{bs * 1e3:>10.2f} {ts * 1e3:>18.2f} {ts / bs:>6.3f}   {bw:>8.2f}s {tw:>6.2f}s")
    bi, ti, bs, ts, bw, tw = (med([row[k] for row in rows]) for k in range(6))
    print(f"{'median':>6}  {bi * 1e3:>10.2f} {ti * 1e3:>13.2f} {ti / bi:>6.3f}   "
          f"{bs * 1e3:>10.2f} {ts * 1e3:>18.2f} {ts / bs:>6.3f}   {bw:>8.2f}s {tw:>6.2f}s")
    print("  iter: loss() call to loss() call, a whole loop iteration incl. the trainer's logging")
    print("  step: batch fetch to optimizer update (the span of the trainer's perf/step_time)")
    print("  run/fit(): the whole run, incl. the trainer's setup, final checkpoint and loss plot")
    return {"iter": ti / bi, "step": ts / bs, "wall": tw / bw}


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
    resettable = True
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        resettable = reset_peak_rss()
        baseline = peak_rss()
    result = RUNNERS[args.side](args, args.steps, probe_memory=True)
    figures = {"baseline": baseline, "steps_peak": result.memory[-1], "run_peak": result.memory_end,
               "resettable": resettable}
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


def memory(args: argparse.Namespace) -> tuple[float, float]:
    device = torch.device(args.device)
    figures = {side: measure_memory_in_subprocess(args, side) for side in ("bare", "trainer")}
    cuda = device.type == "cuda"
    print(f"\npeak memory, MiB ({'allocated by torch' if cuda else 'peak RSS'}; each side in a fresh process)")
    print(f"{'side':>8} {'baseline':>9} {'+ steps':>9} {'+ whole run':>12}")
    growth: dict[str, tuple[int, int]] = {}
    for side, f in figures.items():
        growth[side] = (f["steps_peak"] - f["baseline"], f["run_peak"] - f["baseline"])
        print(f"{side:>8} {f['baseline'] / 2**20:>9.1f} {growth[side][0] / 2**20:>9.1f} "
              f"{growth[side][1] / 2**20:>12.1f}")
    print("  baseline: " + ("allocated before the run" if cuda else
                            "RSS before the run (interpreter, torch, worldtune)")
          + "; + steps: peak growth until the last step starts; + whole run: incl. the final checkpoint")
    if not all(f["resettable"] for f in figures.values()):
        print("  NOTE: the peak-RSS mark could not be reset (/proc/self/clear_refs); import-time peaks "
              "may hide the growth")
    steps_ratio = growth["trainer"][0] / max(growth["bare"][0], 1)
    run_ratio = growth["trainer"][1] / max(growth["bare"][1], 1)
    return steps_ratio, run_ratio


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
    params = sum(p.numel() for p in TinyLM(args.vocab, args.dim, args.layers, args.heads).parameters())
    print(f"trainer overhead: device {args.device} ({args.precision}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"model: dim {args.dim} x {args.layers} layers, vocab {args.vocab} ({params / 1e6:.2f}M params); "
          f"batch {args.batch} x seq {args.seq}; {args.steps} steps per run, the first {args.warmup_steps} "
          "left out of the medians")

    # Untimed: one short run of each side pays the one-time costs (lazy init, first checkpoint,
    # first plot) so that they do not land on whichever side happens to run first.
    for side in ("bare", "trainer"):
        RUNNERS[side](args, args.warmup_steps + 3)

    step = lockstep(args)
    print(f"\nlockstep (one bare step before every trainer step, {step['steps']} steps): ms per step")
    print(f"  bare iteration {step['bare'] * 1e3:.2f} | trainer iteration {step['trainer'] * 1e3:.2f} "
          f"(ratio {step['trainer'] / step['bare']:.3f}, median of per-step ratios {step['paired']:.3f}) | "
          f"trainer perf/step_time {step['trainer_span'] * 1e3:.2f} (ratio {step['trainer_span'] / step['bare']:.3f})")
    same = step["bare_loss"] == step["trainer_loss"]
    print(f"  loss after the last step: bare {step['bare_loss']:.6f}, trainer {step['trainer_loss']:.6f} "
          f"({'identical' if same else 'DIFFERENT: the two sides do not compute the same thing'})")

    runs = alternating(args) if args.rounds else None
    memory_steps, memory_run = memory(args)

    print()
    print(ratio_line("time ratio trainer/bare", step["trainer"] / step["bare"]))
    print(ratio_line("peak memory ratio trainer/bare", memory_steps))
    info = [f"peak memory incl. the final checkpoint {memory_run:.2f}"]
    if runs is not None:
        info[:0] = [f"alternating runs {runs['iter']:.2f}", f"perf/step_time span {runs['step']:.2f}",
                    f"whole fit() vs whole bare run {runs['wall']:.2f}"]
    print("for information, trainer/bare: " + "; ".join(info))

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
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of each median")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating runs per side (0: lockstep and memory only)")
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
    if args.rounds < 0:
        parser.error("--rounds must be >= 0")
    return args


if __name__ == "__main__":
    main()
