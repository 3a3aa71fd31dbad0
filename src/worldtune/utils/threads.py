"""CPU threads: torch's intra-op pool sized to the cores this process may use, and passive OpenMP waits.

Two problems, both worst on a small or shared machine:

- torch sizes its pool from the machine's cores, not from the cores the process may run on
  (``os.sched_getaffinity``: a container's or ``taskset``'s mask), and every local rank of a
  torchrun job takes the whole pool. :func:`configure_threads` gives each process
  ``dist.num_threads``, else ``OMP_NUM_THREADS`` when the user set it, else
  ``usable cores // local ranks`` (``LOCAL_WORLD_SIZE``), and logs the choice. Under torchrun with
  several local ranks ``OMP_NUM_THREADS`` is not taken: torchrun sets it to 1 itself when unset, so
  it says nothing about the user's wish (``dist.num_threads`` does). DataLoader workers get one
  thread each (:func:`worker_init_fn`).
- OpenMP threads that finish their share of an op spin, burning their core, until the slowest
  thread is done (GNU OpenMP: up to 300,000 spins before sleeping). When another process holds a
  core, the thread it preempted finishes late and its partners spin through their time slices
  meanwhile, so every parallel op waits for the scheduler. ``OMP_WAIT_POLICY=PASSIVE`` makes
  waiting threads sleep instead, and ``GOMP_SPINCOUNT=1000`` lets them spin briefly first, so that
  back-to-back small ops do not each pay a wake-up. OpenMP reads both once, when torch loads it:
  :func:`prefer_passive_openmp` sets them (unless the user set either) and must run before
  ``import torch`` (the command line does it first).

Measured on 2 cores beside a loop of torch matmuls (median s/step, alone -> beside it): a small conv
net 0.030 -> 0.393 spinning, 0.030 -> 0.055 passive; the tiny LAM 0.021 -> 2.04 spinning, 0.030 ->
0.070 passive; Ctrl-World's tiny.yaml 0.42 -> 1.60 spinning (up to 19.7 while other jobs ran too),
0.51 -> 0.96 passive. Tiny models with many small ops lose up to a third alone (each op wakes its
threads); ``OMP_WAIT_POLICY=ACTIVE`` gets the spinning back on a machine of one's own.

The spin count, measured on the whole 16 px demo at 60 steps (``benchmarks/demo_contention.py``,
wall seconds alone / beside a matmul loop with torch's default threads, one or two runs each):
300,000 spins (GNU's default) 40 / 198; passive, 0 spins 59-65 / 80-90; 1,000 spins 46-48 / 89-90;
10,000 spins 44 / 127; 100,000 spins 47 / 114. A thousand spins keeps most of passive's gain beside
another job and gives back most of what it costs alone.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from worldtune.utils.logging import get_logger

logger = get_logger("worldtune.utils.threads")

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
# Spins before a waiting thread sleeps (GNU OpenMP: 300,000 by default, 0 when passive). A thousand
# (some microseconds) keeps back-to-back small ops from paying a wake-up each, and is over long before a
# preempted partner comes back (see the module docstring for the measurements).
SHORT_SPIN = 1000


@dataclass(frozen=True)
class ThreadChoice:
    """How many intra-op threads this process uses, and why."""

    threads: int
    cores: int  # cores this process may run on
    local_ranks: int  # processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE)
    source: str  # "dist.num_threads", "OMP_NUM_THREADS" or "cores"

    def describe(self) -> str:
        if self.source == "cores":
            ranks = f" / {self.local_ranks} local ranks" if self.local_ranks > 1 else ""
            why = f"{self.cores} usable cores{ranks}; dist.num_threads overrides"
        else:
            why = f"{self.source}={self.threads}"
        policy = os.environ.get(WAIT_POLICY, "unset")
        spin = f", {SPIN_COUNT}={os.environ[SPIN_COUNT]}" if SPIN_COUNT in os.environ else ""
        return (f"torch threads: {self.threads} ({why}); 1 in each data-loading worker; "
                f"{WAIT_POLICY}={policy}{spin}")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), or every core where there is no mask."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes of this job on this machine: torchrun's LOCAL_WORLD_SIZE, 1 without torchrun."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _env_threads(ranks: int) -> int | None:
    """OMP_NUM_THREADS when the user set it: outside torchrun jobs of several local ranks (where
    torchrun itself sets it to 1 when unset)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value.isdigit() or int(value) < 1 or ranks > 1:
        return None
    return int(value)


def choose_threads(requested: int | None, cores: int, ranks: int, env_threads: int | None = None) -> ThreadChoice:
    """``requested`` (dist.num_threads), else ``env_threads`` (OMP_NUM_THREADS), else an equal share of
    ``cores`` per local rank (at least 1)."""
    if requested is not None and requested < 1:
        raise ValueError(f"dist.num_threads must be >= 1 (or null for the usable cores), got {requested}")
    if requested is not None:
        return ThreadChoice(requested, cores, ranks, "dist.num_threads")
    if env_threads is not None:
        return ThreadChoice(env_threads, cores, ranks, "OMP_NUM_THREADS")
    return ThreadChoice(max(1, cores // ranks), cores, ranks, "cores")


def configure_threads(requested: int | None, ranks: int | None = None) -> ThreadChoice:
    """Set torch's intra-op threads for this process (see the module docstring) and log the choice.

    ``ranks`` defaults to :func:`local_ranks`.
    """
    import torch

    ranks = local_ranks() if ranks is None else ranks
    choice = choose_threads(requested, usable_cores(), ranks, _env_threads(ranks))
    torch.set_num_threads(choice.threads)
    logger.info(choice.describe())
    return choice


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one intra-op thread per worker, whatever the parent chose
    (the workers run beside the training process, on the same cores)."""
    import torch

    torch.set_num_threads(1)


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` with a short spin (``GOMP_SPINCOUNT``, GNU OpenMP's, which
    torch's CPU builds use) unless the user set either. Only effective before torch is imported
    (OpenMP reads them when it loads); returns whether it will take effect."""
    if "torch" in sys.modules:
        return False
    if WAIT_POLICY not in os.environ and SPIN_COUNT not in os.environ:
        os.environ[SPIN_COUNT] = str(SHORT_SPIN)
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    return True
