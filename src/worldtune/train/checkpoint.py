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
import fnmatch
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from worldtune.config import ConfigError, RunConfig
from worldtune.train.distributed import DistEnv, barrier

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
TRAINER_STATE = "trainer_state.json"

# Settings that may differ between a checkpoint's run and the run resuming it without
# `checkpoint.on_config_change: continue`: where the run lives, how long it runs (extending a run),
# how often it saves, validates and logs, and how the model is laid out on the devices. Any other
# difference changes what the resumed steps compute. Keep in step with CheckpointConfig's comment.
RESUMABLE_CHANGES = (
    "output_dir", "train.max_steps", "train.num_epochs", "train.num_workers",
    "checkpoint.*", "validation.*", "log.*",
    "dist.activation_checkpointing", "dist.compile_blocks", "dist.cpu_offload", "dist.reshard_after_forward",
    "dist.backend",
)  # fmt: skip
# The per-rank batch may change with the world size: only the effective batch (per rank x
# accumulation x ranks) is compared, so a checkpoint resumes on another number of GPUs.
BATCH_KEYS = ("train.batch_size", "train.gradient_accumulation")
_UNSET = "<unset>"


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


# ----------------------------------------------------------------------------- config changes


class ConfigChangedError(ConfigError):
    """A resume whose config differs from the checkpoint's; the message lists the changed keys."""


@dataclass(frozen=True)
class ConfigChange:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}"


def config_changes(checkpoint: Path, cfg: RunConfig, world_size: int) -> list[ConfigChange]:
    """Settings of `cfg` that differ from those the checkpoint was trained with (its config.yaml),
    leaving out RESUMABLE_CHANGES and a per-rank batch that only follows the world size."""
    saved = Path(checkpoint) / "config.yaml"
    if not saved.is_file():
        return []
    old = _flatten(_saved_config(saved, type(cfg)))
    new = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))
    changes = [ConfigChange(key, old.get(key, _UNSET), new.get(key, _UNSET))
               for key in sorted(old.keys() | new.keys())
               if old.get(key, _UNSET) != new.get(key, _UNSET) and not _may_change(key)]
    saved_world = int(read_trainer_state(checkpoint).get("world_size", world_size))
    old_batch = _effective_batch(old, saved_world)
    if old_batch is not None and old_batch == _effective_batch(new, world_size):
        changes = [c for c in changes if c.key not in BATCH_KEYS]
    return changes


def _saved_config(path: Path, schema: type[RunConfig]) -> dict:
    """The saved config with today's defaults for keys it predates, so that only real changes show."""
    saved = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), saved), resolve=True)
    except OmegaConfBaseException:  # a key renamed or removed since: compare what the file has
        return OmegaConf.to_container(saved, resolve=True)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train.learning_rate": 0.0001, ...}; an empty section stays one entry ({}), so that adding
    e.g. training stages to a run that had none counts as a change."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _may_change(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_CHANGES)


def _effective_batch(flat: Mapping[str, Any], world_size: int) -> int | None:
    """Samples per optimizer step; None when the config does not say (then the keys are compared)."""
    values = [flat.get(key) for key in BATCH_KEYS]
    if not all(isinstance(v, int) for v in values):
        return None
    return values[0] * values[1] * world_size


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return value if isinstance(value, str) else str(value)


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
