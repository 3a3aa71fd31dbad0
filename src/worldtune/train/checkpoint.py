"""Resumable checkpoints: torch.distributed.checkpoint directories, written atomically.

Layout of one checkpoint, `RUN_DIR/checkpoints/step_00001000/`:
    state/               DCP shards of {"model", "optim", "ema"} (resharded on load, any world size)
    rng/rank_<r>.pt      each rank's RNG state (weights_only-loadable)
    config.yaml          the resolved run config
    trainer_state.json   step, epoch, data position, stage, counters, scheduler; written last

Everything is written under `step_XXXXXXXX.tmp` and renamed when complete, so a crash mid-write
leaves the previous checkpoint as the newest complete one. Multi-node runs need a shared filesystem.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from worldtune.train.distributed import DistEnv, barrier

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"


@contextlib.contextmanager
def quiet_single_process() -> Iterator[None]:
    """DCP warns when used without a process group; for us that is the normal single-process case."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: Path) -> bool:
    return CHECKPOINT_RE.match(path.name) is not None and (path / TRAINER_STATE).is_file()


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from for `checkpoint.resume` (auto | none | a path)."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(f"checkpoint.resume: {path} is not a complete checkpoint directory "
                                f"(expected step_<N>/ with {TRAINER_STATE})")
    return path


def save_checkpoint(run_dir: Path, step: int, app_state: dict[str, Any], trainer_state: dict,
                    rng_state: dict, config_yaml: str, env: DistEnv, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    root = checkpoints_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier(env)
    with quiet_single_process():
        dcp.save(app_state, checkpoint_id=str(tmp / "state"))
    torch.save(rng_state, tmp / "rng" / f"rank_{env.rank}.pt")
    barrier(env)
    if env.is_main:
        (tmp / "config.yaml").write_text(config_yaml)
        _write_json_synced(tmp / TRAINER_STATE, trainer_state)
        if final.exists():  # a checkpoint of the same step from a run that was later resumed
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _prune(run_dir, keep_last)
    barrier(env)
    return final


def load_checkpoint(path: Path, app_state: dict[str, Any], env: DistEnv) -> tuple[dict, dict | None]:
    """Loads DCP state into `app_state` in place; returns (trainer_state, this rank's RNG or None)."""
    with quiet_single_process():
        dcp.load(app_state, checkpoint_id=str(path / "state"))
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    rng_file = path / "rng" / f"rank_{env.rank}.pt"
    rng_state = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
    return trainer_state, rng_state


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / TRAINER_STATE).read_text())


def _prune(run_dir: Path, keep_last: int) -> None:
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_root(run_dir).glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _write_json_synced(path: Path, data: dict) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
