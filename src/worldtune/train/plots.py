"""Static plots of a run's metrics, rendered headless.

Uses `matplotlib.figure.Figure` directly rather than pyplot: no backend selection, no global
figure registry to leak figures into, so it is safe on display-less training nodes and in threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from worldtune.utils.atomic import atomic_path

# Smoothing window as a fraction of the number of points (TensorBoard-like EMA).
SMOOTH_FRACTION = 0.02
MIN_SMOOTH_WINDOW = 3


def plot_loss_curve(
    records: Sequence[Mapping[str, Any]],
    out_path: Path,
    keys: Sequence[str] = ("train/loss", "val/loss"),
    *,
    title: str = "Loss curve",
) -> Path | None:
    """Plot `keys` against `step` from metric records and save a PNG atomically.

    The first key is drawn as a thin raw line plus an EMA-smoothed line; the others as markers.
    Non-finite and non-numeric values are skipped. Returns `out_path`, or None when no key has a
    single finite point (nothing is written then).
    """
    series = {key: _series(records, key) for key in keys}
    if not any(steps for steps, _ in series.values()):
        return None

    fig = Figure(figsize=(8.0, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for index, (key, (steps, values)) in enumerate(series.items()):
        if not steps:
            continue
        color = f"C{index}"
        if index == 0:
            _plot_line(ax, key, steps, values, color)
        else:
            ax.plot(steps, values, "o-", color=color, markersize=4, linewidth=0.8, label=key)

    all_values = [v for _, values in series.values() for v in values]
    if min(all_values) > 0 and max(all_values) / min(all_values) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")

    _save_atomic(fig, Path(out_path))
    fig.clear()
    return Path(out_path)


def _plot_line(ax: Any, key: str, steps: list[float], values: list[float], color: str) -> None:
    """Raw values faint and thin; their EMA on top when there are enough points to smooth."""
    window = max(MIN_SMOOTH_WINDOW, round(len(values) * SMOOTH_FRACTION))
    if len(values) < 2 * window:
        ax.plot(steps, values, color=color, linewidth=1.2, label=key)
        return
    ax.plot(steps, values, color=color, linewidth=0.6, alpha=0.35, label=f"{key} (raw)")
    ax.plot(steps, ema(values, window), color=color, linewidth=1.6, label=f"{key} (EMA {window})")


def ema(values: Sequence[float], window: int) -> list[float]:
    """Exponential moving average with span `window`, started at the first value (no warm-up bias)."""
    alpha = 2.0 / (window + 1)
    out: list[float] = []
    acc = values[0] if values else 0.0
    for value in values:
        acc = alpha * value + (1.0 - alpha) * acc
        out.append(acc)
    return out


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Finite (step, value) pairs for `key`, sorted by step."""
    points: list[tuple[float, float]] = []
    for record in records:
        step, value = _as_float(record.get("step")), _as_float(record.get(key))
        if step is not None and value is not None:
            points.append((step, value))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def _as_float(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric ("nan" strings included) and non-finite."""
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _save_atomic(fig: Figure, out_path: Path) -> None:
    """Write next to the target then rename, so a reader never sees a half-written PNG."""
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
