"""Console logging and progress bars for every long job (training, caching, conversion).

`get_logger()` prints "[worldtune HH:MM:SS] message" to stderr through tqdm, so log lines never break
a live progress bar; `progress()` is a tqdm bar, or a silent stand-in when disabled.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

_LOG_FORMAT = "[worldtune %(asctime)s] %(message)s"
_configured_loggers: set[str] = set()


# --------------------------------------------------------------------------- console logger


class _TqdmStderrHandler(logging.Handler):
    """Writes via `tqdm.write` to the *current* sys.stderr, so records never break a live bar
    (and pytest's capture, which swaps sys.stderr, sees them)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _is_nonzero_rank() -> bool:
    rank = os.environ.get("RANK")
    return rank is not None and rank != "0"


def get_logger(name: str = "worldtune") -> logging.Logger:
    """A stdlib logger printing "[worldtune HH:MM:SS] message" to stderr at INFO.

    The handler is installed once on the top-level logger of `name` (so "worldtune.train.x"
    shares "worldtune"'s handler); on ranks other than 0 (env RANK) only warnings and errors pass.
    """
    top = name.split(".", 1)[0]
    if top not in _configured_loggers:
        root = logging.getLogger(top)
        handler = _TqdmStderrHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING if _is_nonzero_rank() else logging.INFO)
        # Our own handler prints it; propagating would print it twice under a configured root.
        root.propagate = False
        _configured_loggers.add(top)
    return logging.getLogger(name)


# --------------------------------------------------------------------------- progress bars


class NullProgress:
    """Stand-in for a tqdm bar that prints nothing; iterating still yields the items."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, initial: int = 0):
        self.iterable = iterable
        self.total = total
        self.n = initial

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        for item in self.iterable:
            yield item
            self.n += 1

    def __len__(self) -> int:
        if self.total is not None:
            return self.total
        return len(self.iterable)  # type: ignore[arg-type]

    def update(self, n: float = 1) -> None:
        self.n += n  # type: ignore[assignment]

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    initial: int = 0,
    enabled: bool = True,
    unit: str = "it",
) -> tqdm | NullProgress:
    """A tqdm bar with ETA on stderr for any long job; a silent `NullProgress` when not `enabled`."""
    if not enabled:
        return NullProgress(iterable, total=total, initial=initial)
    # Redirected output (SLURM logs, nohup) cannot redraw in place: refresh rarely there so the
    # log gets an occasional ETA line instead of thousands of carriage-return updates.
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        initial=initial,
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.1 if interactive else 30.0,
        file=sys.stderr,
    )
