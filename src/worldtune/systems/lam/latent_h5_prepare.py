"""`worldtune prepare lam-manifest`: validate the latent H5 files of DATA_DIR and split them.

Every ``*.h5`` file is opened before it is listed (:func:`validate_latent_file`: the latent dataset,
5-D, floats, finite values on a sample of chunks), and all files must share one chunk shape
``[C, T_latent, H, W]`` (the most common one; the others are bad). A bad file stops the command
naming it, or with ``on_bad_sample="skip"`` is left out of the manifest and recorded under
``skipped``. The split format is :mod:`worldtune.systems.lam.latent_h5_manifest`.

A manifest fixes which files a run trains on and which it is tested on, so an existing one is never
re-split silently: the same files and settings leave it untouched, a manifest whose split would
differ (other files, seed or ratios) is refused unless ``force=True``.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldtune.systems.lam.latent_h5_files import (
    LatentFile,
    validate_latent_file,
)
from worldtune.systems.lam.latent_h5_manifest import (
    BAD_SAMPLE_MODES,
    CHECKED_CHUNKS,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    SPLITS,
    LatentDataError,
    PathLike,
    check_ratios,
    list_h5_files,
    load_manifest_json,
    nonempty_split_counts,
)
from worldtune.utils.atomic import write_text_atomic


@dataclass
class ManifestReport:
    """What `prepare lam-manifest` did."""

    path: Path
    counts: dict[str, int]  # files per split
    chunk_shape: tuple[int, ...]  # [C, T_latent, H, W] of every listed file
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> problem
    notes: list[str] = field(default_factory=list)  # splits that were given a file
    written: bool = True  # False: the same manifest was already there


# ------------------------------------------------------------------------------------ validation


def _common_shape(files: list[LatentFile]) -> tuple[int, ...]:
    """The most common chunk shape (ties: the one of the first file in name order)."""
    counts = Counter(f.chunk_shape for f in files)
    best = max(counts.values())
    return next(f.chunk_shape for f in files if counts[f.chunk_shape] == best)


def _usable_files(
    root: Path, names: list[str], dataset_name: str | None, on_bad_sample: str, check_chunks: int
) -> tuple[list[LatentFile], dict[str, str]]:
    """Validated files in name order, and the bad ones (name -> problem) when skipping."""
    good: list[LatentFile] = []
    bad: list[LatentDataError] = []
    for name in names:
        try:
            good.append(validate_latent_file(root / name, dataset_name, check_chunks))
        except LatentDataError as e:
            bad.append(e)
    if good:
        shape = _common_shape(good)
        bad += [
            LatentDataError(
                f.path,
                f"chunk shape {list(f.chunk_shape)} [C, T_latent, H, W] differs from {list(shape)} of the "
                f"other files; sequences from both cannot be batched",
            )
            for f in good
            if f.chunk_shape != shape
        ]
        good = [f for f in good if f.chunk_shape == shape]
    if bad and on_bad_sample == "error":
        raise min(bad, key=lambda e: e.path.name)  # the first bad file in name order
    # Skipped files are reported by the caller (ManifestReport.skipped) and recorded in the manifest.
    return good, {e.path.name: e.problem for e in sorted(bad, key=lambda e: e.path.name)}


# ---------------------------------------------------------------------------------------- split


def _manifest(
    files: list[LatentFile], counts: list[int], ratios: tuple[float, ...], seed: int,
    dataset_name: str | None, skipped: dict[str, str],
) -> dict[str, Any]:  # fmt: skip
    names = [f.path.name for f in files]
    random.Random(seed).shuffle(names)
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "ratios": dict(zip(SPLITS, ratios, strict=True)),
        "dataset_name": dataset_name,
        "chunk_shape": list(files[0].chunk_shape),
        "skipped": skipped,
    }
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        # Sorted within a split: membership is random, the listing stays easy to diff.
        manifest[split] = sorted(names[start : start + count])
        start += count
    return manifest


def _membership(manifest: dict[str, Any]) -> dict[str, str]:
    """file name -> split."""
    return {name: split for split in SPLITS for name in manifest.get(split, []) if isinstance(name, str)}


def _split_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """How the split would change, in words; "" when every file stays where it is."""
    before, after = _membership(old), _membership(new)
    moved = sum(1 for name in after if name in before and before[name] != after[name])
    added = sum(1 for name in after if name not in before)
    gone = sum(1 for name in before if name not in after)
    parts = [f"{n} {what}" for n, what in ((moved, "would change split"), (added, "new"), (gone, "gone")) if n]
    return ", ".join(parts)


def _check_overwrite(path: Path, new: dict[str, Any], force: bool) -> bool:
    """Whether ``new`` must be written: False when the same manifest is there; raises when the
    existing one would be re-split without ``force``."""
    if not path.exists() or force:
        return True
    try:
        old = load_manifest_json(path)
    except LatentDataError as e:
        raise LatentDataError(path, f"exists but cannot be read ({e.problem}); --force replaces it") from e
    if old == new:
        return False
    change = _split_change(old, new)
    if change:
        raise LatentDataError(
            path,
            f"exists with another split (files: {change}); runs trained on it would be tested on other "
            "files: keep it, or re-split with --force",
        )
    return True  # same split, other metadata (e.g. an older manifest): nothing moves


def prepare_lam_manifest(
    data_dir: PathLike,
    train_ratio: float = 0.8,
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 42,
    *,
    dataset_name: str | None = None,
    on_bad_sample: str = "error",
    check_chunks: int = CHECKED_CHUNKS,
    force: bool = False,
) -> ManifestReport:
    """Validate ``DATA_DIR/*.h5`` and write ``DATA_DIR/manifest.json`` with a random, reproducible
    split (see the module docstring). ``check_chunks`` chunks per file are checked for NaN/inf
    (0: every chunk)."""
    check_ratios(train_ratio, val_ratio, test_ratio)
    if on_bad_sample not in BAD_SAMPLE_MODES:
        raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_MODES}, got {on_bad_sample!r}")
    root = Path(data_dir)
    names = list_h5_files(root)
    if not names:
        raise LatentDataError(root, "no *.h5 files to split")
    files, skipped = _usable_files(root, names, dataset_name, on_bad_sample, check_chunks)
    if not files:
        first = next(iter(skipped.items()))
        raise LatentDataError(root, f"no usable *.h5 file: {len(skipped)} bad (first: {first[0]}: {first[1]})")
    ratios = (train_ratio, val_ratio, test_ratio)
    counts, notes = nonempty_split_counts(len(files), ratios, root / MANIFEST_FILE)
    manifest = _manifest(files, counts, ratios, seed, dataset_name, skipped)
    path = root / MANIFEST_FILE
    written = _check_overwrite(path, manifest, force)
    if written:
        write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return ManifestReport(
        path=path,
        counts=dict(zip(SPLITS, counts, strict=True)),
        chunk_shape=files[0].chunk_shape,
        skipped=skipped,
        notes=notes,
        written=written,
    )


def write_lam_manifest(data_dir: PathLike, *args: Any, **kwargs: Any) -> Path:
    """:func:`prepare_lam_manifest`, returning the manifest's path."""
    return prepare_lam_manifest(data_dir, *args, **kwargs).path


def report_lines(report: ManifestReport) -> list[str]:
    """What the command prints: the manifest, its split sizes, adjustments and skipped files."""
    sizes = ", ".join(f"{split} {n}" for split, n in report.counts.items())
    state = "written" if report.written else "unchanged (same files and settings)"
    lines = [f"{report.path}: {state}; {sizes} files of chunks {list(report.chunk_shape)}"]
    lines += [f"  note: {note}" for note in report.notes]
    if report.skipped:
        lines.append(f"  skipped {len(report.skipped)} bad file(s), left out of the manifest:")
        lines += [f"    {name}: {problem}" for name, problem in report.skipped.items()]
    return lines
