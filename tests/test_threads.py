"""CPU threads: torch's pool sized from the usable cores and the local ranks, overridable, logged;
one thread per DataLoader worker; passive OpenMP waits set before torch loads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import subprocess_env
from worldtune.config import ConfigError, DistConfig
from worldtune.train.distributed import init_distributed
from worldtune.utils import threads
from worldtune.utils.threads import choose_threads, configure_threads, worker_init_fn


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def thread_log():
    """The messages worldtune.utils.threads logs (its logger does not propagate to pytest's)."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("worldtune.utils.threads")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
def six_cores(monkeypatch):
    """A process allowed on 6 cores (whatever this machine has)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 6, 7}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_choice_shares_the_cores_among_local_ranks():
    assert choose_threads(None, cores=6, ranks=1).threads == 6
    assert choose_threads(None, cores=6, ranks=2).threads == 3
    assert choose_threads(None, cores=6, ranks=4).threads == 1  # floor, and never below 1
    assert choose_threads(None, cores=2, ranks=8).threads == 1
    assert choose_threads(5, cores=2, ranks=2, env_threads=1).threads == 5  # the config wins
    assert choose_threads(None, cores=6, ranks=1, env_threads=2).threads == 2  # then OMP_NUM_THREADS
    with pytest.raises(ValueError, match="dist.num_threads must be >= 1"):
        choose_threads(0, cores=2, ranks=1)


def test_affinity_mask_not_machine_cores(six_cores, restore_threads, thread_log):
    assert threads.usable_cores() == 6
    choice = configure_threads(None)
    assert (choice.threads, choice.cores, choice.local_ranks) == (6, 6, 1)
    assert torch.get_num_threads() == 6
    assert thread_log[-1].startswith("torch threads: 6 (6 usable cores; dist.num_threads overrides); "
                                     "1 in each data-loading worker; OMP_WAIT_POLICY=")


def test_torchrun_local_ranks_divide_the_cores(six_cores, monkeypatch, restore_threads, thread_log):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert configure_threads(None).threads == 3 and torch.get_num_threads() == 3
    assert thread_log[-1].startswith("torch threads: 3 (6 usable cores / 2 local ranks;")


def test_omp_num_threads_is_the_users_choice_except_from_torchrun(six_cores, monkeypatch, restore_threads,
                                                                  thread_log):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert configure_threads(None).threads == 2
    assert thread_log[-1].startswith("torch threads: 2 (OMP_NUM_THREADS=2);")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun sets OMP_NUM_THREADS=1 for its ranks itself
    assert configure_threads(None).threads == 2 and "6 usable cores / 3 local ranks" in thread_log[-1]


def test_override_from_the_config(six_cores, restore_threads, thread_log):
    init_distributed(DistConfig(num_threads=1))  # where the trainer sets up the process
    assert torch.get_num_threads() == 1
    assert thread_log[-1].startswith("torch threads: 1 (dist.num_threads=1);")
    with pytest.raises(ConfigError, match="dist.num_threads: must be >= 1"):
        DistConfig(num_threads=0).check()


def test_worker_init_fn_gives_one_thread(restore_threads):
    torch.set_num_threads(2)
    worker_init_fn(0)
    assert torch.get_num_threads() == 1


def test_passive_openmp_only_before_torch_and_not_over_the_user(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert threads.prefer_passive_openmp() is False  # torch is loaded here: too late to matter
    assert "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    code = ("import os, sys; from worldtune.utils.threads import prefer_passive_openmp; "
            "print(prefer_passive_openmp(), os.environ['OMP_WAIT_POLICY'], os.environ.get('GOMP_SPINCOUNT'), "
            "'torch' in sys.modules)")
    clean = {k: v for k, v in subprocess_env().items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def chosen(**user: str) -> list[str]:
        run = subprocess.run([sys.executable, "-c", code], env={**clean, **user}, capture_output=True, text=True,
                             check=True)
        return run.stdout.split()

    assert chosen() == ["True", "PASSIVE", "1000", "False"]  # sleep after a short spin
    assert chosen(OMP_WAIT_POLICY="ACTIVE") == ["True", "ACTIVE", "None", "False"]  # the user's choice stays
    assert chosen(GOMP_SPINCOUNT="50") == ["True", "PASSIVE", "50", "False"]


def test_the_command_line_asks_for_passive_waits_before_torch_loads():
    code = ("import os, sys\nfrom worldtune.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in subprocess_env().items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split()[-2:] == ["PASSIVE", "False"]
