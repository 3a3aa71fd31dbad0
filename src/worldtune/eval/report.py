"""What every `worldtune eval <system>` does with its numbers: a table on stdout, the same as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worldtune.utils.atomic import write_text_atomic

EVAL_DIR = "eval"


def report_path(json_path: str | Path | None, run_dir: str | Path, stem: str) -> Path:
    """`--json PATH`, or RUN_DIR/eval/<stem>.json by default."""
    return Path(json_path) if json_path else Path(run_dir) / EVAL_DIR / f"{stem}.json"


def print_and_write(report: dict[str, Any], table: str, json_path: str | Path | None, run_dir: str | Path,
                    stem: str) -> Path:
    """Print the table, write `report` as JSON (atomically) and say where."""
    path = report_path(json_path, run_dir, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"worldtune: wrote {path}")
    return path
