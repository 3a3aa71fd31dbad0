"""torchrun with two CPU ranks (gloo): FSDP2 matches one process, and checkpoints cross world sizes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import example_tree, step_metric, subprocess_env, train_example, write_yaml
from worldtune.train import checkpoint as ckpt
from worldtune.train.export import load_weights

# Deterministic loss (no noise), so a 2-rank run and a 1-rank run with the same global batch differ
# only by floating-point reduction order. A stage switch and EMA run under FSDP too.
STAGED = {
    "train": {"max_steps": None, "learning_rate": 1e-2, "gradient_accumulation": 2, "ema_decay": 0.9,
              "training_stages": {"head": {"trainable_models": "head", "max_steps": 2},
                                  "all": {"trainable_models": "all", "max_steps": 4}}},
    "checkpoint": {"every_steps": 3},
}


def torchrun(config: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "worldtune.cli", "train", str(config)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def global_batch(batch_size: int) -> dict:
    return {"train": {**STAGED["train"], "batch_size": batch_size}}


def assert_close_losses(run: Path, reference: Path) -> None:
    got, want = step_metric(run), step_metric(reference)
    assert sorted(got) == sorted(want) == list(range(1, 7))
    for step in want:
        assert abs(got[step] - want[step]) <= 1e-5, (step, got[step], want[step])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    train_example(run, **{**STAGED, **global_batch(4)})
    return run


def test_fsdp2_two_ranks_match_single_process_and_resume_with_one(tmp_path, reference):
    run = tmp_path / "fsdp"
    sharded = {**STAGED, **global_batch(2), "dist": {"activation_checkpointing": True}}
    torchrun(write_yaml(tmp_path / "two.yaml", example_tree(run, **sharded)))
    assert_close_losses(run, reference)
    final = load_weights(ckpt.latest_checkpoint(run))
    expected = load_weights(ckpt.latest_checkpoint(reference))
    for key in expected:  # the checkpoint holds full tensors, whatever the sharding
        assert torch.allclose(final[key], expected[key], atol=1e-5), key
    assert ckpt.read_trainer_state(ckpt.latest_checkpoint(run))["world_size"] == 2

    # The 2-rank checkpoint of step 3 continues on one process.
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    result = train_example(run, **{**STAGED, **global_batch(4)})
    assert result.step == 6
    assert_close_losses(run, reference)


def test_single_process_checkpoint_resumes_on_two_ranks(tmp_path, reference):
    run = tmp_path / "grow"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / "step_00000006")  # steps 4-6 are logged; resume rewrites them
    result = torchrun(write_yaml(tmp_path / "two.yaml", example_tree(run, **{**STAGED, **global_batch(2)})))
    assert "resumed from" in result.stderr
    assert_close_losses(run, reference)
    ema = load_weights(ckpt.latest_checkpoint(run), "ema")
    expected_ema = load_weights(ckpt.latest_checkpoint(reference), "ema")
    assert all(torch.allclose(ema[k], expected_ema[k], atol=1e-5) for k in expected_ema)
