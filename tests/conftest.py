"""Shared test helpers: the example recipe, small run configs, reading metrics."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Identical thread counts make CPU float results reproducible across the processes we compare: the
# trainer sets torch's threads from OMP_NUM_THREADS (utils/threads.py), here and in every subprocess.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

torch.set_num_threads(1)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["WANDB_MODE"] = "offline"
    return env


def example_tree(run_dir: Path, **sections) -> dict:
    """A config tree for the example recipe; keyword sections update the defaults."""
    tree = {
        "recipe": "custom_recipe:RECIPE",
        "output_dir": str(run_dir),
        "seed": 7,
        "model": {"dim": 8, "depth": 2},
        "data": {"num_items": 48, "num_val_items": 4},
        "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2},
        "checkpoint": {"every_steps": 4, "keep_last": 10},
        "log": {"tensorboard": False, "progress_bar": False, "log_frequency": 100},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            tree.setdefault(key, {}).update(value)
        else:
            tree[key] = value
    return tree


def example_config(run_dir: Path, **sections):
    from custom_recipe import ExampleConfig

    from worldtune.config import build_config

    return build_config(ExampleConfig, example_tree(run_dir, **sections))


def train_example(run_dir: Path, **sections):
    from custom_recipe import RECIPE

    from worldtune.train.loop import Trainer

    return Trainer(example_config(run_dir, **sections), RECIPE).fit()


def step_metric(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """{step: value} from metrics.jsonl (the last record of a step wins)."""
    values: dict[int, float] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if key in record:
            values[record["step"]] = float(record[key])
    return values


def train_then_kill(command: list[str], run: Path, step: int, timeout: float = 180) -> None:
    """Start the training `command` (writing `run`/metrics.jsonl) and SIGKILL it once `step` is logged:
    the crash a resume test recovers from."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and max(step_metric(run) or [0]) >= step:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"step {step} not reached (exit {proc.poll()})")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def write_yaml(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Ctrl-World: two recordings converted with space-to-depth latents (`ctrl_world_fixtures.convert_two`)."""
    from ctrl_world_fixtures import convert_two

    return convert_two(tmp_path_factory.mktemp("ctrl"))
