"""The list of episodes of a dataset: a directory scan, or ``DATA_DIR/manifest.json``.

``manifest.json`` (written by ``worldtune prepare manifest``) records each episode's split, frame
count, fps, cameras and action_dim, so training can start without probing every video::

    {"version": 1, "created_by": "worldtune prepare manifest",
     "episodes": [{"name": "ep_0001", "split": "train", "num_frames": 120, "fps": 10.0,
                   "cameras": [], "action_dim": 14}, ...]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worldtune.data.errors import MessageDataError
from worldtune.data.formats.episode_files import (
    EPISODES_DIR,
    EpisodeInfo,
    Skipped,
    collect,
    inspect_episode,
    verify_listed,
)
from worldtune.utils.atomic import write_text_atomic

logger = logging.getLogger("worldtune")

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
CREATED_BY = "worldtune prepare manifest"
DEFAULT_VAL_RATIO = 0.05
DEFAULT_SPLIT_SEED = 42
SPLITS = ("train", "val", "all")


class ManifestError(MessageDataError):
    """``manifest.json`` is unreadable, malformed or out of date; the message names the file."""


def assign_splits(
    names: Sequence[str], val_ratio: float = DEFAULT_VAL_RATIO, seed: int = DEFAULT_SPLIT_SEED
) -> dict[str, str]:
    """``{name: "train" | "val"}``: the ``round(val_ratio * n)`` names ranked first by a seeded hash.

    Ranking by a hash of (seed, name) makes the split independent of listing order and keeps most
    episodes in their split when episodes are added. With >= 2 episodes and ``val_ratio > 0`` at least
    one episode is in val and at least one in train.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n = len(names)
    n_val = 0 if n < 2 or val_ratio == 0 else min(n - 1, max(1, round(val_ratio * n)))
    ranked = sorted(names, key=lambda name: (hashlib.sha1(f"{seed}:{name}".encode()).hexdigest(), name))
    val = set(ranked[:n_val])
    return {name: "val" if name in val else "train" for name in names}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def episode_dirs(data_dir: str | Path) -> list[Path]:
    """The episode directories under ``DATA_DIR/episodes``, sorted by name."""
    root = Path(data_dir) / EPISODES_DIR
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no episodes directory (expected {EPISODES_DIR}/<episode>/video.mp4)"
        )
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise FileNotFoundError(f"{root}: no episode directories")
    return dirs


def scan_episodes(
    data_dir: str | Path,
    cameras: Sequence[str] | None = None,
    *,
    split: str = "all",
    skipped: Skipped | None = None,
) -> list[EpisodeInfo]:
    """Inspect every episode directory (probing headers, not decoding).

    ``cameras=None`` detects each episode's cameras from its files. Splits are assigned with the
    defaults of :func:`write_manifest`, so a scan agrees with a freshly written manifest. A bad episode
    raises :class:`BadEpisode`, or, when a ``skipped`` list is given, is logged, appended and excluded.
    """
    _check_split(split)
    dirs = episode_dirs(data_dir)
    splits = assign_splits([d.name for d in dirs])
    wanted = [d for d in dirs if split in ("all", splits[d.name])]  # probe only the split asked for
    return collect(wanted, lambda d: inspect_episode(d, cameras, splits[d.name]), skipped)


def write_manifest(
    data_dir: str | Path,
    val_ratio: float = DEFAULT_VAL_RATIO,
    seed: int = DEFAULT_SPLIT_SEED,
    *,
    cameras: Sequence[str] | None = None,
    skipped: Skipped | None = None,
) -> Path:
    """Scan ``data_dir`` and write ``DATA_DIR/manifest.json`` with a reproducible train/val split.

    Bad episodes raise, or with a ``skipped`` list are left out of the manifest. Returns the path.
    """
    infos = scan_episodes(data_dir, cameras, skipped=skipped)
    if not infos:
        raise ValueError(f"{data_dir}: no usable episodes to write a manifest for")
    splits = assign_splits([i.name for i in infos], val_ratio, seed)
    entries = [
        {
            "name": i.name,
            "split": splits[i.name],
            "num_frames": i.num_frames,
            "fps": i.fps,
            "cameras": list(i.cameras),
            "action_dim": i.action_dim,
        }
        for i in infos
    ]
    path = Path(data_dir) / MANIFEST_FILE
    tree = {"version": MANIFEST_VERSION, "episodes": entries, "created_by": CREATED_BY}
    write_text_atomic(path, json.dumps(tree, indent=1) + "\n")
    n_val = sum(s == "val" for s in splits.values())
    logger.info("wrote %s: %d episodes (%d train, %d val)", path, len(entries), len(entries) - n_val, n_val)
    return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one manifest entry, or None."""
    if not isinstance(entry, dict):
        return f"must be an object, got {type(entry).__name__}"
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        return f"'name' must be a directory name, got {name!r}"
    if entry.get("split") not in ("train", "val"):
        return f"'split' must be 'train' or 'val', got {entry.get('split')!r}"
    if not _is_int(entry.get("num_frames")) or entry["num_frames"] < 1:
        return f"'num_frames' must be a positive integer, got {entry.get('num_frames')!r}"
    fps = entry.get("fps")
    if not (_is_int(fps) or isinstance(fps, float)) or not math.isfinite(fps) or fps <= 0:
        return f"'fps' must be a positive number, got {fps!r}"
    cams = entry.get("cameras", [])
    if not isinstance(cams, list) or not all(isinstance(c, str) and c for c in cams):
        return f"'cameras' must be a list of names, got {cams!r}"
    dim = entry.get("action_dim")
    if dim is not None and (not _is_int(dim) or dim < 1):
        return f"'action_dim' must be a positive integer or null, got {dim!r}"
    return None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no such manifest") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from e
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: malformed JSON ({e})") from e
    if not isinstance(tree, dict) or not isinstance(tree.get("episodes"), list):
        raise ManifestError(f"{path}: expected an object with an 'episodes' list")
    if tree.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"{path}: unsupported manifest version {tree.get('version')!r} (expected 1)")
    return tree


def read_manifest(path: str | Path, data_dir: str | Path, *, check_exists: bool = True) -> list[EpisodeInfo]:
    """Parse and validate a manifest; with ``check_exists`` every listed episode directory must exist."""
    path = Path(path)
    root = Path(data_dir) / EPISODES_DIR
    infos: list[EpisodeInfo] = []
    for i, entry in enumerate(_load_json(path)["episodes"]):
        problem = _entry_problem(entry)
        if problem:
            raise ManifestError(f"{path}: episodes[{i}]: {problem}")
        infos.append(
            EpisodeInfo(
                entry["name"], root / entry["name"], entry["num_frames"], float(entry["fps"]),
                tuple(entry.get("cameras", [])), entry["split"], entry.get("action_dim"),
            )
        )  # fmt: skip
    duplicates = sorted(name for name, count in Counter(i.name for i in infos).items() if count > 1)
    if duplicates:
        raise ManifestError(f"{path}: episodes listed more than once: {', '.join(duplicates)}")
    if check_exists:
        missing = [info.name for info in infos if not info.dir.is_dir()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ManifestError(
                f"{path}: {len(missing)} listed episode(s) no longer exist under {root}: {shown} "
                "(rewrite the manifest with `worldtune prepare manifest`)"
            )
    return infos


def load_episodes(
    data_dir: str | Path,
    manifest: str | Path | None = None,
    split: str = "train",
    cameras: Sequence[str] | None = None,
    *,
    skipped: Skipped | None = None,
) -> list[EpisodeInfo]:
    """The checked episodes of ``split`` ("train" | "val" | "all").

    ``manifest=None`` uses ``DATA_DIR/manifest.json`` when present and scans the directory otherwise.
    Manifest entries are trusted for frame counts; their files are still checked (no probing unless
    ``cameras`` asks for cameras the manifest does not list). Bad episodes raise, or with a
    ``skipped`` list are recorded and excluded (a manifest naming missing episodes then skips them).
    """
    _check_split(split)
    path = Path(manifest) if manifest is not None else Path(data_dir) / MANIFEST_FILE
    if manifest is None and not path.exists():
        logger.info("%s not found: scanning %s", path, Path(data_dir) / EPISODES_DIR)
        return scan_episodes(data_dir, cameras, split=split, skipped=skipped)
    listed = read_manifest(path, data_dir, check_exists=skipped is None)
    wanted = [info for info in listed if split in ("all", info.split)]
    return collect(wanted, lambda info: verify_listed(info, cameras), skipped)
