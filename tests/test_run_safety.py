"""Run safety: one run per run directory, Ctrl-C, resuming with a changed config, W&B without a login."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import example_config, example_tree, step_metric, subprocess_env, train_example, write_yaml
from worldtune.cli import main
from worldtune.train import checkpoint as ckpt
from worldtune.train.run_lock import LOCK_FILE, RunDirLocked, RunLock

CLI = "import sys; from worldtune.cli import main; sys.exit(main(sys.argv[1:]))"
HOLD_LOCK = ("import sys, time; from worldtune.train.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
             "print('locked', flush=True); time.sleep(300)")
SINCE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture
def lock_holder():
    """start(run_dir) -> a process holding run_dir's lock; killed at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE,
                                text=True, env=subprocess_env())
        started.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file under run_dir but the lock, by relative path (to show that nothing was written)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


# ------------------------------------------------------------------------------- run directory lock


LOG_LINE = "[worldtune "  # the logger's lines (e.g. the thread choice); the tests check the CLI's own


def _without_log_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(LOG_LINE))


def test_second_run_in_a_locked_directory_stops_naming_the_holder(tmp_path, lock_holder, capsys):
    run = tmp_path / "run"
    holder = lock_holder(run)
    config = write_yaml(tmp_path / "run.yaml", example_tree(run))
    assert main(["train", str(config)]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith(LOG_LINE)]
    expected = (rf"worldtune: error: {re.escape(str(run))}: another run is training in this directory "
                rf"\(pid {holder.pid} on {re.escape(socket.gethostname())}, since {SINCE}\); wait for it to end, "
                r"or give this run another output_dir")
    assert len(err) == 1 and re.fullmatch(expected, err[0]), err
    assert files_of(run) == {}  # stopped before writing config.yaml or anything else


def test_a_killed_run_leaves_no_stale_lock(tmp_path, lock_holder):
    run = tmp_path / "run"
    holder = lock_holder(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}\n" in (run / LOCK_FILE).read_text()  # the file stays, the lock does not
    assert train_example(run, train={"max_steps": 2}).step == 2
    assert f"pid {os.getpid()}\n" in (run / LOCK_FILE).read_text()


def test_the_lock_excludes_a_second_holder_until_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirLocked, match=rf"\(pid {os.getpid()} on .+, since {SINCE}\)"):
        RunLock(tmp_path).acquire()  # flock is per open file: the same process is refused too
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held
    assert not again.held


# ------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_names_the_step_and_the_checkpoint_to_resume_from(tmp_path):
    run = tmp_path / "run"
    tree = example_tree(run, data={"num_items": 48, "num_val_items": 4, "load_delay_s": 0.02},
                        train={"max_steps": 30, "batch_size": 4, "learning_rate": 1e-2})
    command = [sys.executable, "-c", CLI, "train", str(write_yaml(tmp_path / "run.yaml", tree))]
    proc = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while ckpt.latest_checkpoint(run) is None or max(step_metric(run) or [0]) < 5:
        assert proc.poll() is None and time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"worldtune: interrupted at step (\d+); last complete checkpoint: step (\d+) \((.+)\); "
                         r"run the same command to resume", last)
    assert found, last
    step, saved, path = int(found[1]), int(found[2]), Path(found[3])
    assert path == ckpt.latest_checkpoint(run) == run / "checkpoints" / f"step_{saved:08d}"
    assert saved % 4 == 0 and 4 <= saved <= step < 30

    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {path}" in resumed.stderr
    assert sorted(step_metric(run)) == list(range(1, 31))


# ------------------------------------------------------------------------------- resume, changed config


@pytest.fixture
def finished_run(tmp_path) -> tuple[Path, Path]:
    """A 4-step run of the example recipe and its YAML (checkpoints at steps 4)."""
    run = tmp_path / "run"
    config = write_yaml(tmp_path / "run.yaml", example_tree(run, train={"max_steps": 4}))
    assert main(["train", str(config)]) == 0
    return run, config


def test_resume_with_a_changed_config_stops_before_writing(finished_run, capsys):
    run, config = finished_run
    before = files_of(run)
    capsys.readouterr()
    assert main(["train", str(config), "train.learning_rate=1e-3", "data.num_items=40"]) == 2
    assert _without_log_lines(capsys.readouterr().err) == (
        f"worldtune: config error: {run}: the config differs from the one step_00000004 was trained with: "
        "data.num_items: 48 -> 40, train.learning_rate: 0.01 -> 0.001. To resume with the new values, add "
        "checkpoint.on_config_change=continue; to start a new run, give it another output_dir "
        f"(or delete {run / 'checkpoints'})\n"
    )
    assert files_of(run) == before  # config.yaml, metrics and checkpoints untouched


def test_extending_a_run_and_changing_how_it_logs_resumes(finished_run, tmp_path, capsys):
    run, config = finished_run
    assert main(["train", str(config), "train.max_steps=8", "log.log_frequency=1", "checkpoint.every_steps=2",
                 "validation.every_steps=3", "checkpoint.keep_last=2"]) == 0
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'}" in capsys.readouterr().err
    reference = tmp_path / "reference"
    train_example(reference, train={"max_steps": 8}, validation={"every_steps": 3})
    assert step_metric(run) == step_metric(reference)


def test_on_config_change_continue_takes_the_new_learning_rate(finished_run, capsys):
    run, config = finished_run
    assert main(["train", str(config), "train.learning_rate=1e-3", "train.max_steps=6",
                 "checkpoint.on_config_change=continue"]) == 0
    err = capsys.readouterr().err
    assert "with changed settings, which apply from here on (checkpoint.on_config_change=continue): " \
           "train.learning_rate: 0.01 -> 0.001" in err
    lr = step_metric(run, "train/lr")
    assert [lr[s] for s in range(1, 7)] == [1e-2] * 4 + [1e-3] * 2
    assert "learning_rate: 0.001" in (run / "config.yaml").read_text()


def test_the_per_rank_batch_may_follow_the_world_size(finished_run):
    run, _ = finished_run
    saved = ckpt.latest_checkpoint(run)  # trained with batch_size 4 on one process
    halved = example_config(run, train={"max_steps": 4, "batch_size": 2})
    assert ckpt.config_changes(saved, halved, world_size=2) == []  # 2 x 2 ranks: the same 4 per step
    assert [str(c) for c in ckpt.config_changes(saved, halved, world_size=1)] == ["train.batch_size: 4 -> 2"]


# ------------------------------------------------------------------------------- W&B without a login

LOG_ONLINE = """
import sys
from pathlib import Path
from worldtune.config import LogConfig
from worldtune.train.logging import RunLogger
cfg = LogConfig(wandb_project="proj", wandb_mode="online", tensorboard=False, progress_bar=False)
with RunLogger(Path(sys.argv[1]), cfg, is_main=True, config={}, total_steps=1) as logger:
    logger.log(1, {"train/loss": 1.0})
    print("wandb mode", logger._wandb_run.settings.mode)
"""


def without_wandb_credentials(tmp_path: Path) -> dict[str, str]:
    """An environment with no W&B key anywhere (env, netrc, settings) and no terminal to ask on."""
    env = {k: v for k, v in subprocess_env().items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env.update(HOME=str(tmp_path / "home"), NETRC=str(tmp_path / "home" / "no.netrc"), WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
               WANDB_DATA_DIR=str(tmp_path / "wandb_data"))
    return env


def test_wandb_online_without_an_api_key_logs_offline(tmp_path):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", LOG_ONLINE, str(run)], env=without_wandb_credentials(tmp_path),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wandb mode offline" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "log.wandb_mode is online but W&B has no API key (run `wandb login` or set WANDB_API_KEY); logging "
        f"offline to {run / 'wandb'} instead: upload it later with `wandb sync`"), result.stderr
    assert "UsageError" not in result.stderr and list((run / "wandb").glob("offline-run-*"))


def test_wandb_asking_for_a_key_at_init_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    from worldtune.train import logging as runlog

    real_init, modes = wandb.init, []

    def init(mode: str, **options):
        modes.append(mode)
        if mode == "online":  # what wandb.init raises without a key and without a terminal
            raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
        return real_init(mode=mode, **options)

    monkeypatch.setattr(runlog, "_wandb_has_credentials", lambda wandb: True)  # a wandb that cannot tell
    monkeypatch.setattr(wandb, "init", init)
    cfg = runlog.LogConfig(wandb_project="proj", wandb_mode="online", tensorboard=False, progress_bar=False)
    with runlog.RunLogger(tmp_path, cfg, is_main=True, config={}, total_steps=1) as logger:
        logger.log(1, {"train/loss": 1.0})
    assert modes == ["online", "offline"]
    assert any("W&B has no API key" in record.message for record in caplog.records)
