"""Exact resume: a run killed at any step continues to the same per-step losses, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import example_tree, step_metric, subprocess_env, train_example, write_yaml
from worldtune.train import checkpoint as ckpt

# Stochastic data and loss, a stage switch at step 8, accumulation, EMA and validation: every
# source of state a resume has to restore.
HARD = {
    "model": {"dim": 8, "depth": 2, "stochastic": True},
    "train": {"max_steps": 24, "batch_size": 2, "gradient_accumulation": 2, "learning_rate": 1e-2,
              "warmup_steps": 3, "lr_scheduler": "cosine", "ema_decay": 0.9,
              "training_stages": {"head": {"trainable_models": "head", "max_steps": 8},
                                  "all": {"trainable_models": "all", "learning_rate": 5e-3, "max_steps": 16}}},
    "checkpoint": {"every_steps": 5},
    "validation": {"every_steps": 6, "video_num": 1, "max_batches": 1},
}


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()}")
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and step_metric(run_dir) and max(step_metric(run_dir)) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.parametrize("kill_after", [7, 13])  # before and after the stage switch, off the save grid
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, kill_after):
    reference = tmp_path / "reference"
    train_example(reference, **HARD)
    expected = step_metric(reference)
    assert sorted(expected) == list(range(1, 25))

    run = tmp_path / "killed"
    slow = {**HARD, "data": {"num_items": 48, "num_val_items": 4, "load_delay_s": 0.01}}
    config = write_yaml(tmp_path / "run.yaml", example_tree(run, **slow))
    command = [sys.executable, "-m", "worldtune.cli", "train", str(config)]
    proc = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    _wait_for_step(run, kill_after, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert max(step_metric(run)) < 24

    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    assert step_metric(run) == expected  # every step, bit for bit
    assert step_metric(run, "train/lr") == step_metric(reference, "train/lr")


def test_crash_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train_example(reference, **HARD)

    run = tmp_path / "crashed"
    real_write = ckpt._write_json_synced

    def crash_on_step_10(path, data):
        if data["progress"]["step"] == 10:
            raise KeyboardInterrupt("simulated crash while writing the step-10 checkpoint")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "_write_json_synced", crash_on_step_10)
    with pytest.raises(KeyboardInterrupt):
        train_example(run, **HARD)
    monkeypatch.setattr(ckpt, "_write_json_synced", real_write)

    assert (run / "checkpoints" / "step_00000010.tmp" / "state").is_dir()  # half-written
    assert ckpt.latest_checkpoint(run).name == "step_00000005"
    result = train_example(run, **HARD)
    assert result.step == 24
    assert step_metric(run) == step_metric(reference)
    assert not list((run / "checkpoints").glob("*.tmp"))  # cleaned once a later save succeeded


def test_resume_none_restarts_and_resume_path_is_checked(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 4})
    again = train_example(run, train={"max_steps": 4}, checkpoint={"every_steps": 4, "resume": "none"})
    assert again.step == 4
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        train_example(run, checkpoint={"resume": str(tmp_path / "nowhere")})


def test_completed_run_resumes_as_a_no_op(tmp_path):
    run = tmp_path / "run"
    train_example(run, train={"max_steps": 4})
    before = step_metric(run)
    result = train_example(run, train={"max_steps": 4})
    assert result.step == 4
    assert step_metric(run) == before


def test_worker_processes_give_the_same_run(tmp_path):
    """Spawned, persistent DataLoader workers load the same items as the main process."""
    options = {"model": {"dim": 8, "depth": 2, "stochastic": True},
               "data": {"num_items": 20, "num_val_items": 4}}  # 5 steps per epoch: crosses a boundary
    train_example(tmp_path / "inline", **options, train={"max_steps": 8, "batch_size": 4})
    train_example(tmp_path / "workers", **options, train={"max_steps": 8, "batch_size": 4, "num_workers": 2})
    assert step_metric(tmp_path / "workers") == step_metric(tmp_path / "inline")
