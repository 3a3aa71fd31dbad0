"""Train/val/test manifest for a folder of latent H5 files (seed 3, ``create_vvae_manifest``).

``DATA_DIR/manifest.json``::

    {"version": 1, "seed": 42, "ratios": {"train": 0.8, "val": 0.1, "test": 0.1},
     "train": ["a.h5", ...], "val": [...], "test": [...]}

File names are relative to DATA_DIR. Every ``*.h5`` file directly in DATA_DIR lands in exactly one
split; which one is drawn with ``random.Random(seed)``, so the same seed gives the same split.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from worldtune.data.errors import DataError
from worldtune.utils.atomic import write_text_atomic

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
_RATIO_TOLERANCE = 1e-6

PathLike = str | os.PathLike[str]


class LatentDataError(DataError):
    """A latent file or manifest cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class LamManifest:
    """A validated manifest: relative file names per split."""

    path: Path
    data_dir: Path
    seed: int | None
    ratios: dict[str, float]
    splits: dict[str, tuple[str, ...]]

    def files(self, split: str) -> list[Path]:
        """Absolute paths of ``split`` ("all": every split, in train, val, test order)."""
        names = [n for s in SPLITS for n in self.splits[s]] if split == "all" else self.splits[split]
        return [self.data_dir / name for name in names]


def list_h5_files(data_dir: PathLike) -> list[str]:
    """Sorted names of the ``*.h5`` files directly in ``data_dir``."""
    root = Path(data_dir)
    if not root.is_dir():
        raise LatentDataError(root, "not a directory")
    # Hidden files are half-written temporaries of the encoder, never data.
    return sorted(p.name for p in root.glob("*.h5") if p.is_file() and not p.name.startswith("."))


def check_ratios(train: float, val: float, test: float) -> None:
    """Each ratio in [0, 1] and together 1 (within 1e-6); else ``ValueError`` naming them."""
    ratios = (train, val, test)
    if any(not math.isfinite(r) or r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > _RATIO_TOLERANCE:
        raise ValueError(
            f"split ratios must be non-negative and sum to 1, got train_ratio={train}, "
            f"val_ratio={val}, test_ratio={test} (sum {sum(ratios):.6g})"
        )


def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Sizes of the splits of ``n`` files: floors of ``n * ratio``, the rest by largest remainder."""
    total = sum(ratios)
    exact = [n * r / total for r in ratios]
    # The epsilon keeps 0.7 * 10 = 7.000000000000001 and 0.3 * 10 = 2.9999999999999996 both whole.
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def write_lam_manifest(
    data_dir: PathLike,
    train_ratio: float = 0.8,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 42,
) -> Path:
    """Write ``DATA_DIR/manifest.json`` with a random, reproducible split of the ``*.h5`` files."""
    check_ratios(train_ratio, val_ratio, test_ratio)
    root = Path(data_dir)
    names = list_h5_files(root)
    if not names:
        raise LatentDataError(root, "no *.h5 files to split")
    random.Random(seed).shuffle(names)
    ratios = (train_ratio, val_ratio, test_ratio)
    manifest: dict[str, object] = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "ratios": dict(zip(SPLITS, ratios, strict=True)),
    }
    start = 0
    for split, count in zip(SPLITS, split_counts(len(names), ratios), strict=True):
        # Sorted within a split: membership is random, the listing stays easy to diff.
        manifest[split] = sorted(names[start : start + count])
        start += count
    path = root / MANIFEST_FILE
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def _load_json(path: Path) -> dict[str, object]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise LatentDataError(path, "no manifest here; create one with `worldtune prepare lam-manifest DATA_DIR`") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LatentDataError(path, f"malformed manifest JSON ({e})") from e
    if not isinstance(raw, dict):
        raise LatentDataError(path, "malformed manifest: expected a JSON object")
    return raw


def _split_names(raw: dict[str, object], path: Path) -> dict[str, tuple[str, ...]]:
    splits: dict[str, tuple[str, ...]] = {}
    for split in SPLITS:
        names = raw.get(split, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise LatentDataError(path, f"malformed manifest: {split!r} must be a list of file names")
        splits[split] = tuple(names)
    return splits


def _check_unique(splits: dict[str, tuple[str, ...]], path: Path) -> None:
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for name in names:
            key = os.path.normpath(name)
            if key in seen:
                where = (
                    f"twice in {split!r}" if seen[key] == split else f"in both {seen[key]!r} and {split!r}"
                )
                raise LatentDataError(path, f"{name} is listed {where}")
            seen[key] = split


def read_lam_manifest(path: PathLike, data_dir: PathLike) -> LamManifest:
    """Load and validate a manifest: well-formed, every file listed once and present in ``data_dir``."""
    path, root = Path(path), Path(data_dir)
    raw = _load_json(path)
    splits = _split_names(raw, path)
    _check_unique(splits, path)
    for names in splits.values():
        for name in names:
            if not (root / name).is_file():
                raise LatentDataError(path, f"{name} is listed but {root / name} does not exist")
    ratios = raw.get("ratios")
    seed = raw.get("seed")
    return LamManifest(
        path=path,
        data_dir=root,
        seed=seed if isinstance(seed, int) else None,
        ratios=dict(ratios) if isinstance(ratios, dict) else {},
        splits=splits,
    )
