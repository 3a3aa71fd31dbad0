"""Run logging: JSONL history, resume truncation, console line, progress, TensorBoard, W&B, plots."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest

from worldtune.config import LogConfig
from worldtune.train import logging as runlog
from worldtune.train import plots
from worldtune.train.logging import RunLogger, format_console_line, read_metrics
from worldtune.utils.logging import NullProgress, get_logger, progress

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let W&B reach the network or write outside the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))


def _cfg(**overrides: object) -> LogConfig:
    base: dict[str, object] = {"tensorboard": False, "progress_bar": False}
    base.update(overrides)
    return LogConfig(**base)  # type: ignore[arg-type]


def _logger(run_dir: Path, resume_step: int = 0, **cfg: object) -> RunLogger:
    return RunLogger(
        run_dir, _cfg(**cfg), is_main=True, config={"lr": 1e-4}, total_steps=100, resume_step=resume_step
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- JSONL


def test_jsonl_lines_round_trip_floats_exactly(tmp_path: Path) -> None:
    losses = [0.1 + 0.2, 1 / 3, 2.5e-310, 123456.789012345678, math.pi]
    with _logger(tmp_path) as logger:
        for step, loss in enumerate(losses, start=1):
            logger.log(step, {"train/loss": loss, "train/lr": 1e-4})
            # Flushed per line: readable while the logger is still open.
            assert len(_lines(tmp_path / "metrics.jsonl")) == step

    records = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["train/loss"] for r in records] == losses  # bitwise-equal floats
    assert all(isinstance(r["time"], float) for r in records)
    assert set(records[0]) == {"step", "time", "train/loss", "train/lr"}


def test_nonfinite_values_are_strings_in_valid_json(tmp_path: Path) -> None:
    with _logger(tmp_path) as logger:
        logger.log(1, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 2})
    text = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert (record["a"], record["b"], record["c"], record["d"]) == ("nan", "inf", "-inf", 2)
    back = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf


def test_resume_truncates_to_resume_step(tmp_path: Path) -> None:
    with _logger(tmp_path) as logger:
        for step in range(1, 11):
            logger.log(step, {"train/loss": float(step)})
    # A torn last line, as a SIGKILL mid-write could leave it.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "train/lo')

    with _logger(tmp_path, resume_step=6) as logger:
        assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
        for step in range(7, 9):
            logger.log(step, {"train/loss": float(step)})

    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not list(tmp_path.glob(".*.tmp"))


def test_fresh_start_appends_after_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x"')
    with _logger(tmp_path) as logger:
        logger.log(3, {"x": 3.0})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 3]


def test_non_main_rank_is_a_silent_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    cfg = _cfg(tensorboard=True, progress_bar=True, wandb_project="never", wandb_mode="offline")
    with RunLogger(run_dir, cfg, is_main=False, config={}, total_steps=10, resume_step=3) as logger:
        logger.advance(5)
        logger.log(5, {"train/loss": 1.0})
        logger.console(5, {"train/loss": 1.0})
        logger.log_videos(5, [tmp_path / "v.mp4"])
        assert logger.plot_loss_curve() is None
    assert not run_dir.exists()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


# --------------------------------------------------------------------------- console


def test_format_console_line_known_keys() -> None:
    metrics = {
        "train/grad_norm": 0.8412,
        "train/loss": 0.031234,
        "train/lr": 1e-4,
        "perf/step_time": 0.2109,
        "perf/samples_per_s": 152.34,
        "perf/data_wait": 0.031,
        "perf/peak_mem_gb": 1.234,
        "train/kl": 0.000123456,
        "val/loss": 9.0,  # validation metrics keep their prefix
        "perf/other": 3.0,  # neither train/* nor val/*: not on the console line
        "train/tag": "text",  # non-numeric: skipped
    }
    assert format_console_line(120, 1000, metrics) == (
        "step 120/1000 | loss 0.03123 | lr 1.00e-04 | grad_norm 0.841 | step_time 0.211s"
        " | samples/s 152.3 | data_wait 3% | peak_mem 1.2GB | kl 0.0001235 | val/loss 9"
    )


def test_format_console_line_sparse_and_nonfinite() -> None:
    assert format_console_line(7, 0, {}) == "step 7"
    assert format_console_line(7, 10, {"train/loss": math.nan}) == "step 7/10 | loss nan"


def test_console_writes_one_line_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _logger(tmp_path) as logger:
        logger.console(3, {"train/loss": 0.5})
    assert capsys.readouterr().err == "step 3/100 | loss 0.5\n"


# --------------------------------------------------------------------------- progress / logger


def test_progress_disabled_is_silent_no_op(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress(range(3), total=3, desc="cache", enabled=False)
    assert isinstance(bar, NullProgress)
    assert list(bar) == [0, 1, 2]  # still iterates
    bar.update(2)
    bar.set_postfix(loss=1.0)
    bar.close()
    with progress(total=5, initial=2, enabled=False) as empty:
        empty.update()
        assert empty.n == 3
        assert list(empty) == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_enabled_and_advance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(4), desc="convert")) == [0, 1, 2, 3]
    assert "convert" in capsys.readouterr().err

    with _logger(tmp_path, resume_step=10, progress_bar=True) as logger:
        assert logger._bar.n == 10
        logger.advance(25)
        assert logger._bar.n == 25
    assert "25/100" in capsys.readouterr().err


def test_get_logger_format_and_rank_filter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = get_logger("wt_test_rank0.sub")
    log.info("hello")
    err = capsys.readouterr().err
    assert err.startswith("[worldtune ") and err.endswith("] hello\n")
    assert get_logger("wt_test_rank0") is logging.getLogger("wt_test_rank0")
    assert len(logging.getLogger("wt_test_rank0").handlers) == 1  # configured once

    monkeypatch.setenv("RANK", "1")
    quiet = get_logger("wt_test_rank1")
    quiet.info("hidden")
    quiet.warning("shown")
    assert capsys.readouterr().err.count("\n") == 1


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_file(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    with _logger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"train/loss": 0.5, "note": "text"})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_tensorboard_missing_warns_and_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with _logger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"train/loss": 0.5})
    assert "TensorBoard logging off" in capsys.readouterr().err
    assert not (tmp_path / "tensorboard").exists()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 1


# --------------------------------------------------------------------------- W&B


def test_wandb_missing_raises_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match=r"pip install worldtune\[wandb\]"):
        _logger(tmp_path, wandb_project="proj", wandb_mode="offline")


def test_wandb_offline_run_and_resume_reuses_id(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    video = tmp_path / "missing.mp4"  # absent: log_videos skips it rather than failing
    with _logger(tmp_path, wandb_project="proj", wandb_mode="offline", experiment_name="t") as logger:
        logger.log(1, {"train/loss": 0.5, "train/lr": 1e-4})
        logger.log_videos(1, [video])
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert run_id
    run_dirs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert run_dirs and list(run_dirs[0].glob("run-*.wandb"))

    with _logger(tmp_path, resume_step=1, wandb_project="proj", wandb_mode="offline") as logger:
        assert logger._wandb_run.id == run_id
        logger.log(2, {"train/loss": 0.25})
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id


# --------------------------------------------------------------------------- plots


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE)


def test_plot_loss_curve_writes_png(tmp_path: Path) -> None:
    records = [{"step": s, "train/loss": 10.0 * 0.97**s} for s in range(1, 301)]
    records += [{"step": s, "val/loss": 10.0 * 0.97**s + 0.1} for s in range(50, 301, 50)]
    records += [{"step": 301, "train/loss": math.nan}, {"step": 302, "train/loss": "inf"}]
    out = plots.plot_loss_curve(records, tmp_path / "sub" / "curve.png")
    assert out == tmp_path / "sub" / "curve.png"
    _assert_png(out)
    assert not list(out.parent.glob(".*.tmp"))


def test_plot_loss_curve_nothing_to_plot(tmp_path: Path) -> None:
    assert plots.plot_loss_curve([], tmp_path / "a.png") is None
    assert plots.plot_loss_curve([{"step": 1, "train/loss": math.nan}], tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())


def test_run_logger_plot_loss_curve(tmp_path: Path) -> None:
    with _logger(tmp_path) as logger:
        assert logger.plot_loss_curve() is None  # empty metrics.jsonl
        for step in range(1, 21):
            logger.log(step, {"train/loss": 1.0 / step})
        logger.log(20, {"val/loss": 0.06})
        path = logger.plot_loss_curve()
    assert path == tmp_path / runlog.LOSS_CURVE_FILE
    _assert_png(path)


def test_ema_smooths_towards_values() -> None:
    assert plots.ema([1.0, 1.0, 1.0], 3) == [1.0, 1.0, 1.0]
    smoothed = plots.ema([0.0, 10.0], 3)
    assert smoothed == [0.0, 5.0]
