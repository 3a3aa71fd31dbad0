"""Train/val/test manifest for a folder of latent H5 files (seed 3, ``create_vvae_manifest``).

``DATA_DIR/manifest.json``::

    {"version": 1, "seed": 42, "ratios": {"train": 0.8, "val": 0.1, "test": 0.1},
     "dataset_name": null, "chunk_shape": [16, 2, 64, 64], "skipped": {"bad.h5": "why"},
     "train": ["a.h5", ...], "val": [...], "test": [...]}

File names are relative to DATA_DIR. Every usable ``*.h5`` file directly in DATA_DIR lands in exactly
one split; which one is drawn with ``random.Random(seed)``, so the same seed gives the same split.
Split sizes are ``n * ratio`` rounded by largest remainder, except that a split with a non-zero ratio
never ends up empty: it takes one file from the largest split (5 files at 0.8 / 0.1 / 0.1 give
3 / 1 / 1), and too few files for that is an error naming the split. ``skipped`` lists the files
left out as bad (``--on_bad_sample skip``). This module reads and checks the format; writing it
(validating the files, refusing to re-split) is :mod:`worldtune.systems.lam.latent_h5_prepare`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from worldtune.data.errors import DataError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
_RATIO_TOLERANCE = 1e-6
# What a reader or the manifest does with a bad file: stop naming it, or leave it out and count it.
BAD_SAMPLE_MODES = ("error", "skip")
# Chunks whose values the manifest checks per file: enough to catch a file of NaNs or a broken tail
# without reading every chunk of thousands of files.
CHECKED_CHUNKS = 8

PathLike = str | os.PathLike[str]


class LatentDataError(DataError):
    """A latent file or manifest cannot be used; the message names the file and the problem."""


class EmptySplitError(LatentDataError):
    """The manifest (or folder) lists no file for the split asked for: an optional split is then
    absent, while any other error of its files stops the run."""


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


def nonempty_split_counts(n: int, ratios: tuple[float, ...], where: PathLike) -> tuple[list[int], list[str]]:
    """:func:`split_counts`, then one file for every split with a non-zero ratio that got none, taken
    from the largest split: (counts, a note per such move). Too few files for that raises."""
    counts = split_counts(n, ratios)
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    notes = []
    for i in wanted:
        if counts[i]:
            continue
        donor = max(wanted, key=lambda j: (counts[j], -j))
        if counts[donor] < 2:
            listed = ", ".join(f"{SPLITS[j]} {counts[j]}" for j in range(len(ratios)))
            raise LatentDataError(
                where,
                f"split {SPLITS[i]!r} ({SPLITS[i]}_ratio {ratios[i]:g}) gets 0 of {n} usable files "
                f"({listed}): add files or set --{SPLITS[i]}_ratio 0",
            )
        counts[donor] -= 1
        counts[i] += 1
        notes.append(
            f"{SPLITS[i]}_ratio {ratios[i]:g} of {n} files rounds to 0 files: "
            f"{SPLITS[i]!r} gets 1 file from {SPLITS[donor]!r}"
        )
    return counts, notes


def load_manifest_json(path: Path) -> dict[str, object]:
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
    raw = load_manifest_json(path)
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
