"""Run logging for the trainer: console lines, a progress bar, JSONL, TensorBoard and W&B.

`RunLogger` is the trainer's single sink for metrics. On the main rank it always appends to
`run_dir/metrics.jsonl` (one JSON object per `log` call, flushed per line so a killed run keeps
its history) and optionally mirrors the scalars to TensorBoard and Weights & Biases. On other
ranks every method is a no-op, so the trainer can call it unconditionally.

JSON has no NaN/Infinity, so non-finite floats are stored as the strings "nan", "inf" and
"-inf"; `read_metrics` turns them back into floats.

    with RunLogger(run_dir, cfg.log, is_main=rank == 0, config=cfg_dict, total_steps=1000) as log:
        for step in range(1, 1001):
            ...
            log.advance(step)
            log.log(step, {"train/loss": loss, "train/lr": lr})
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

from worldtune.config import LogConfig
from worldtune.train import plots
from worldtune.utils.atomic import write_text_atomic
from worldtune.utils.logging import NullProgress, get_logger, progress

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_id.txt"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"

# Non-finite floats as written to JSONL (JSON itself has no NaN/Infinity).
_NONFINITE_TO_STR = {math.inf: "inf", -math.inf: "-inf"}
_STR_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------- console line

# Known metrics, in display order: key -> (label, formatter).
_CONSOLE_FORMATS: dict[str, tuple[str, str]] = {
    "train/loss": ("loss", "{:.4g}"),
    "train/lr": ("lr", "{:.2e}"),
    "train/grad_norm": ("grad_norm", "{:.3g}"),
    "perf/step_time": ("step_time", "{:.3g}s"),
    "perf/samples_per_s": ("samples/s", "{:.1f}"),
    "perf/data_wait": ("data_wait", "{:.0%}"),
    "perf/peak_mem_gb": ("peak_mem", "{:.1f}GB"),
}


def format_console_line(step: int, total_steps: int | None, metrics: Mapping[str, Any]) -> str:
    """One compact line, e.g. "step 120/1000 | loss 0.0312 | lr 1.00e-04 | data_wait 3%".

    Known keys (see `_CONSOLE_FORMATS`) come first in a fixed order; any other numeric `train/*`
    (shown without the prefix) or `val/*` scalar follows as "name value" with 4 significant digits. Missing or non-numeric values are left out.
    """
    parts = [f"step {step}/{total_steps}" if total_steps else f"step {step}"]
    for key, (label, fmt) in _CONSOLE_FORMATS.items():
        value = _as_number(metrics.get(key))
        if value is not None:
            parts.append(f"{label} {fmt.format(value)}")
    for key, raw in metrics.items():
        if key in _CONSOLE_FORMATS or not key.startswith(("train/", "val/")):
            continue
        value = _as_number(raw)
        if value is not None:
            parts.append(f"{key.removeprefix('train/')} {value:.4g}")
    return " | ".join(parts)


# --------------------------------------------------------------------------- metrics file


def _as_number(value: Any) -> float | None:
    """A float for numeric scalars (Python, NumPy, 0-d tensors); None for anything else."""
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _json_value(value: Any) -> Any:
    """A JSON-safe value: non-finite floats become "nan"/"inf"/"-inf"; other scalars to float/int."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    number = _as_number(value)
    if number is None:
        return str(value)
    if math.isnan(number):
        return "nan"
    return _NONFINITE_TO_STR.get(number, number)


def encode_record(step: int, metrics: Mapping[str, Any], timestamp: float | None = None) -> str:
    """One JSONL line (no newline). `json` writes floats with repr, so they round-trip exactly."""
    record: dict[str, Any] = {"step": int(step), "time": time.time() if timestamp is None else timestamp}
    record.update({key: _json_value(value) for key, value in metrics.items()})
    return json.dumps(record, allow_nan=False)


def _decode_record(line: str) -> dict[str, Any] | None:
    """Parse one line; None for a blank or torn line (e.g. the last one of a killed run)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return {key: _STR_TO_NONFINITE.get(v, v) if isinstance(v, str) else v for key, v in record.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All valid records of a metrics.jsonl, in file order; "nan"/"inf"/"-inf" back to floats."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [record for line in f if (record := _decode_record(line)) is not None]


def truncate_metrics(path: Path, max_step: int) -> None:
    """Keep only records with step <= max_step, rewriting the file atomically (temp + replace)."""
    with open(path, encoding="utf-8") as f:
        kept = [line.rstrip("\n") for line in f if (r := _decode_record(line)) and r["step"] <= max_step]
    write_text_atomic(path, "".join(line + "\n" for line in kept), sync=True)


# --------------------------------------------------------------------------- W&B credentials


def _wandb_has_credentials(wandb: Any) -> bool:
    """Whether W&B has an API key (environment, settings or .netrc), asked without prompting and
    without the network. True when this wandb cannot say: `wandb.init` then decides."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # a wandb older than login(prompt=...)
        return True


# --------------------------------------------------------------------------- run logger


class RunLogger:
    """The trainer's metrics sink: JSONL always, plus TensorBoard / W&B / console / progress bar.

    Every method is a no-op when `is_main` is False (nothing is created on other ranks).
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: LogConfig,
        *,
        is_main: bool,
        config: dict[str, Any],
        total_steps: int,
        resume_step: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.is_main = is_main
        self.total_steps = total_steps
        self.metrics_path = self.run_dir / METRICS_FILE
        self._log = get_logger("worldtune.train.logging")
        self._file: Any = None
        self._tb: Any = None
        self._wandb: Any = None  # the wandb module, once a run is live
        self._wandb_run: Any = None
        self._bar: tqdm | NullProgress = NullProgress(total=total_steps, initial=resume_step)
        self._closed = not is_main
        if not is_main:
            return

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step > 0 and self.metrics_path.exists():
            # Drop what was logged after the checkpoint we resume from: the file reads as one history.
            truncate_metrics(self.metrics_path, resume_step)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        try:
            self._end_torn_line()
            if cfg.tensorboard:
                self._tb = self._open_tensorboard()
            if cfg.wandb_project and cfg.wandb_mode != "disabled":
                self._init_wandb(config, resume=resume_step > 0)
        except BaseException:
            self._finish(exit_code=1)  # don't leak the open file / writer when setup fails
            raise
        self._bar = progress(
            total=total_steps,
            initial=resume_step,
            desc="train",
            unit="step",
            enabled=cfg.progress_bar,
        )

    # -- setup

    def _end_torn_line(self) -> None:
        """A run killed mid-write can leave a partial last line; start ours on a fresh line."""
        if self._file.tell() == 0:
            return
        with open(self.metrics_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                self._file.write("\n")
                self._file.flush()

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            self._log.warning("TensorBoard logging off: torch.utils.tensorboard unavailable (%s)", err)
            return None
        return SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))

    def _init_wandb(self, config: dict[str, Any], *, resume: bool) -> None:
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError(
                f"log.wandb_project is set ({self.cfg.wandb_project!r}) but wandb is not installed: "
                "run `pip install worldtune[wandb]`, or unset log.wandb_project"
            ) from err
        self._wandb = wandb
        mode = self.cfg.wandb_mode
        if mode == "online" and not _wandb_has_credentials(wandb):
            mode = self._offline_instead()
        options = {"project": self.cfg.wandb_project, "entity": self.cfg.wandb_entity,
                   "name": self.cfg.experiment_name, "dir": str(self.run_dir), "config": config,
                   "resume": "allow", "id": self._wandb_run_id(resume)}
        try:
            self._wandb_run = wandb.init(mode=mode, **options)
        except wandb.errors.UsageError as err:
            # A wandb whose credential check above could not tell: it asks for a key only now.
            if mode != "online" or "api key" not in str(err).lower():
                raise
            self._wandb_run = wandb.init(mode=self._offline_instead(), **options)

    def _offline_instead(self) -> str:
        self._log.warning(
            "log.wandb_mode is online but W&B has no API key (run `wandb login` or set WANDB_API_KEY); "
            "logging offline to %s instead: upload it later with `wandb sync`", self.run_dir / "wandb"
        )
        return "offline"

    def _wandb_run_id(self, resume: bool) -> str:
        """The run id stored in run_dir, reused on resume so W&B continues the same run.

        A fresh start (resume_step 0) gets a new id: W&B drops steps at or below a run's last
        logged step, so reusing the old run would swallow the new run's early steps.
        """
        path = self.run_dir / WANDB_ID_FILE
        if resume and path.exists():
            run_id = path.read_text(encoding="utf-8").strip()
            if run_id:
                return run_id
        run_id = secrets.token_hex(4)  # 8 lowercase hex chars: a valid W&B id
        write_text_atomic(path, run_id + "\n")
        return run_id

    # -- logging

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` at `step` in every enabled sink."""
        if self._closed:
            return
        self._file.write(encode_record(step, metrics) + "\n")
        self._file.flush()  # a SIGKILL then loses at most the line being written
        scalars = {key: v for key, raw in metrics.items() if (v := _as_number(raw)) is not None}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=step)

    def console(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Print one compact metrics line above the progress bar."""
        if self._closed:
            return
        tqdm.write(format_console_line(step, self.total_steps, metrics), file=sys.stderr)

    def advance(self, step: int) -> None:
        """Move the progress bar to `step`."""
        if self._closed:
            return
        delta = step - self._bar.n
        if delta:
            self._bar.update(delta)

    def log_videos(self, step: int, paths: Sequence[Path], key: str = "validation_videos") -> None:
        """Upload validation videos to W&B; silently nothing when W&B is off or no file exists."""
        if self._closed or self._wandb_run is None:
            return
        videos = [self._wandb.Video(str(p)) for p in paths if Path(p).is_file()]
        if videos:
            self._wandb_run.log({key: videos}, step=step)

    def log_artifact(self, path: Path | None, name: str) -> None:
        """Upload a file or folder (a checkpoint, an export) to W&B as a model artifact
        (`log.save_model_artifacts`); nothing when W&B is off."""
        if self._closed or self._wandb_run is None or path is None:
            return
        artifact = self._wandb.Artifact(f"{self._wandb_run.id}-{name}", type="model")
        if Path(path).is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self._wandb_run.log_artifact(artifact)

    def plot_loss_curve(self) -> Path | None:
        """Render run_dir/loss_curve.png from metrics.jsonl; None if there is nothing to plot."""
        if not self.is_main:
            return None
        title = f"Loss: {self.cfg.experiment_name or self.run_dir.name}"
        return plots.plot_loss_curve(
            read_metrics(self.metrics_path), self.run_dir / LOSS_CURVE_FILE, title=title
        )

    # -- teardown

    def close(self) -> None:
        """Close the bar and every sink; safe to call twice."""
        self._finish(exit_code=0)

    def _finish(self, exit_code: int) -> None:
        if self._closed:
            return
        self._closed = True
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            # A non-zero exit code marks the W&B run as failed rather than finished.
            self._wandb_run.finish(exit_code=exit_code)
            self._wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish(exit_code=0 if exc_type is None else 1)
