"""Atomic file writes: write beside the target, then rename, so a reader (or a resumed run) never
sees half a file; on failure the temporary file is removed and the old target is untouched."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = False) -> Iterator[Path]:
    """Yields a temporary path in the target's directory; renamed over `path` when the block ends
    without an exception (fsynced first with `sync`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if sync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str, sync: bool = False) -> Path:
    with atomic_path(path, sync=sync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2, sync: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n", sync=sync)
