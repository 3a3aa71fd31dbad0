"""Sequences of VAE latents from H5 files (seed 3, VVAE latent action model).

Each ``DATA_DIR/*.h5`` file holds one video as one float dataset (float16 or float32, read as float32)
of shape ``[N_chunks, C=16, T_latent=2, H, W]``: chunks encoded independently (see
:mod:`worldtune.systems.lam.vae_latents`, which writes it as ``latents``; the seed's files are
``[N, 16, 2, 64, 64]``). The dataset is the one named by ``data.dataset_name``, or when that is null
(the default) the file's only 5-D dataset, wherever it is; other datasets (fps, actions, ...) are
ignored. A sequence is ``sequence_length`` latent frames cut from consecutive chunks of one file, the
chunks concatenated along time. An item is::

    {"latents": float32 [C, sequence_length, H, W], "file": str, "start_chunk": int}

Latents are returned as stored: this reader does not normalise them (the seed's LAM takes them raw).
:meth:`LatentSequenceDataset.check_model_frames` compares the files' ``C x H x W`` with the model's
``model.in_channels x model.latent_size x model.latent_size`` before anything is trained.

Windows are indexed up front from dataset shapes only (``prepare lam-manifest`` has checked dtypes
and values on a sample of chunks). Values are read per item, from H5 handles opened lazily in the
process that reads (h5py handles survive neither fork nor pickling), and checked for NaN/inf there.
``on_bad_sample="skip"`` drops bad files up front and replaces a bad window by the next good one;
every skip is logged and recorded in ``dataset.skipped`` of the reading process.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from worldtune.systems.lam.latent_h5_files import (
    LatentFile,
    check_latent_file,
    chunks_per_sequence,
    open_latent_file,
)
from worldtune.systems.lam.latent_h5_manifest import (
    BAD_SAMPLE_MODES,
    MANIFEST_FILE,
    SPLITS,
    EmptySplitError,
    LamManifest,
    LatentDataError,
    list_h5_files,
    read_lam_manifest,
)
from worldtune.systems.lam.latent_h5_prepare import prepare_lam_manifest, write_lam_manifest

__all__ = [
    "EmptySplitError",
    "LamManifest",
    "LatentDataError",
    "LatentH5Config",
    "LatentSequenceDataset",
    "describe",
    "prepare_lam_manifest",
    "read_lam_manifest",
    "write_lam_manifest",
]

logger = logging.getLogger("worldtune.data.latent_h5")

# Bounds open files per process when a split has thousands of H5 files.
MAX_OPEN_FILES = 64

Skipped = list[tuple[str, str]]  # (file, reason), in the order found


@dataclass
class LatentH5Config:
    """Where the latent H5 files are and how sequences are cut (an OmegaConf structured section)."""

    data_dir: str = MISSING  # DATA_DIR holding *.h5 (and manifest.json)
    manifest_path: str | None = None  # None: DATA_DIR/manifest.json
    split: str = "train"  # "train" | "val" | "test" | "all" ("all" needs no manifest)
    sequence_length: int = 8  # latent frames per sequence, a multiple of the chunk's latent frames
    sequence_stride: int = 1  # chunks between the starts of consecutive sequences
    dataset_name: str | None = None  # H5 dataset [N_chunks, C, T, H, W]; None: the file's only 5-D one
    channels: int = 16  # expected latent channels
    on_bad_sample: str = "error"  # "error" | "skip" (log, count, exclude)


def check_config(cfg: LatentH5Config) -> None:
    if cfg.split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {cfg.split!r}")
    if cfg.on_bad_sample not in BAD_SAMPLE_MODES:
        raise ValueError(f"on_bad_sample must be one of {BAD_SAMPLE_MODES}, got {cfg.on_bad_sample!r}")
    for name in ("sequence_length", "sequence_stride", "channels"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def load_manifest(cfg: LatentH5Config) -> LamManifest | None:
    """The validated manifest, or None for split "all" when there is none (every ``*.h5`` file)."""
    path = Path(cfg.manifest_path) if cfg.manifest_path else Path(cfg.data_dir) / MANIFEST_FILE
    if cfg.split == "all" and cfg.manifest_path is None and not path.exists():
        return None
    return read_lam_manifest(path, cfg.data_dir)


class LatentSequenceDataset(Dataset):
    """Fixed windows of ``sequence_length`` latent frames over the files of one split."""

    def __init__(self, cfg: LatentH5Config) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.data_dir = Path(cfg.data_dir)
        self.manifest = load_manifest(cfg)
        self.skipped: Skipped = []
        self.files = self._usable_files(self._split_paths())
        self.chunks_per_sequence = chunks_per_sequence(self.files[0], cfg.sequence_length)
        counts = [(f.num_chunks - self.chunks_per_sequence) // cfg.sequence_stride + 1 for f in self.files]
        self._ends = np.cumsum(counts).tolist()  # window i lies in the first file whose end exceeds i
        self._bad: set[int] = set()
        self._handles: OrderedDict[Path, h5py.File] = OrderedDict()
        self._pid: int | None = os.getpid()

    # ------------------------------------------------------------------ indexing

    def _split_paths(self) -> list[Path]:
        if self.manifest is None:
            paths = [self.data_dir / name for name in list_h5_files(self.data_dir)]
        else:
            paths = self.manifest.files(self.cfg.split)
        if not paths:
            where = self.manifest.path if self.manifest else self.data_dir
            raise EmptySplitError(where, f"split {self.cfg.split!r} has no files")
        return paths

    def _usable_files(self, paths: list[Path]) -> list[LatentFile]:
        usable: list[LatentFile] = []
        for path in paths:
            try:
                file = open_latent_file(path, self.cfg.dataset_name)
                check_latent_file(
                    file, self.cfg.channels, self.cfg.sequence_length, usable[0] if usable else None
                )
            except LatentDataError as e:
                if self.cfg.on_bad_sample == "error":
                    raise
                self._record_skip(e)
                continue
            usable.append(file)
        if not usable:
            raise LatentDataError(
                self.data_dir, f"no usable file in split {self.cfg.split!r}; skipped {len(self.skipped)}"
            )
        return usable

    def __len__(self) -> int:
        return self._ends[-1]

    def check_model_frames(self, channels: int, latent_size: int) -> None:
        """The files' latent frames ``C x H x W`` are the model's ``channels x latent_size x latent_size``
        (every file of a split shares the first one's chunk shape)."""
        first = self.files[0]
        c, _, h, w = first.chunk_shape
        if (c, h, w) == (channels, latent_size, latent_size):
            return
        fix = []
        if (h, w) != (latent_size, latent_size):
            fix.append(f"model.latent_size={h}" if h == w else "square latents (model.latent_size is H = W)")
        if c != channels:
            fix.append(f"model.in_channels={c} and data.channels={c}")
        raise LatentDataError(
            first.path,
            f"latent frames are {c} x {h} x {w} (C x H x W of dataset {first.dataset!r}), the model takes "
            f"{channels} x {latent_size} x {latent_size} (model.in_channels x model.latent_size): "
            f"set {' and '.join(fix)}, or encode the videos at another size",
        )

    def locate(self, index: int) -> tuple[LatentFile, int]:
        """The file and first chunk of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        k = bisect.bisect_right(self._ends, index)
        first = self._ends[k - 1] if k else 0
        return self.files[k], (index - first) * self.cfg.sequence_stride

    # ------------------------------------------------------------------ reading

    def _record_skip(self, error: LatentDataError) -> None:
        logger.warning("skipping bad latent data: %s", error)
        self.skipped.append((str(error.path), error.problem))

    def _h5(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():
            # A handle inherited through fork shares HDF5 state with the parent: start afresh.
            self._handles = OrderedDict()
            self._pid = os.getpid()
        handle = self._handles.get(path)
        if handle is not None:
            self._handles.move_to_end(path)
            return handle
        try:
            handle = h5py.File(path, "r")
        except (OSError, ValueError) as e:
            raise LatentDataError(path, f"not a readable HDF5 file ({e})") from e
        self._handles[path] = handle
        if len(self._handles) > MAX_OPEN_FILES:
            self._handles.popitem(last=False)[1].close()
        return handle

    def _read_window(self, index: int) -> dict[str, Any]:
        file, start = self.locate(index)
        stop = start + self.chunks_per_sequence
        span = f"chunks {start}-{stop - 1} of dataset {file.dataset!r}"
        try:
            chunks = np.asarray(self._h5(file.path)[file.dataset][start:stop], dtype=np.float32)
        except (OSError, KeyError) as e:
            raise LatentDataError(file.path, f"cannot read {span} ({e})") from e
        if not np.isfinite(chunks).all():
            raise LatentDataError(file.path, f"{span} contain NaN or inf values")
        c, _, h, w = file.chunk_shape
        # [k, C, T, H, W] -> [C, k*T, H, W]: chunk 0's latent frames first, then chunk 1's, ...
        latents = torch.from_numpy(chunks).permute(1, 0, 2, 3, 4).reshape(c, -1, h, w)
        return {"latents": latents, "file": str(file.path), "start_chunk": start}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)  # samplers may hand numpy or torch integers
        if index < 0:
            index += len(self)
        self.locate(index)  # IndexError before any skipping
        if self.cfg.on_bad_sample == "error":
            return self._read_window(index)
        # Deterministic replacement: the next good window in index order (wrapping around).
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad:
                continue
            try:
                return self._read_window(candidate)
            except LatentDataError as e:
                self._bad.add(candidate)
                self._record_skip(e)
        raise LatentDataError(self.data_dir, f"every sequence of split {self.cfg.split!r} is bad")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close this process's open files (they reopen on the next read)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # h5py handles cannot be pickled into workers
        state["_pid"] = None
        return state


# ---------------------------------------------------------------------- inspection


def _split_row(ds: LatentSequenceDataset) -> str:
    chunks = sum(f.num_chunks for f in ds.files)
    skipped = f", {len(ds.skipped)} skipped" if ds.skipped else ""
    return f"  {ds.cfg.split:<6} {len(ds.files):>6} files {chunks:>8} chunks {len(ds):>8} sequences{skipped}"


def _other_split_row(cfg: LatentH5Config, split: str) -> str:
    try:
        return _split_row(LatentSequenceDataset(replace(cfg, split=split)))
    except LatentDataError as e:
        return f"  {split:<6} -- {e.problem}"


def _sample_lines(dataset: LatentSequenceDataset) -> list[str]:
    item = dataset[0]
    x = item["latents"]
    return [
        f"sample 0 of {dataset.cfg.split!r}: {Path(item['file']).name} from chunk {item['start_chunk']}, "
        f"latents {list(x.shape)} {str(x.dtype).removeprefix('torch.')}",
        f"  mean {x.mean().item():.4g}  std {x.std().item():.4g}  "
        f"min {x.min().item():.4g}  max {x.max().item():.4g}",
    ]


def describe(dataset: LatentSequenceDataset) -> str:
    """A report for ``worldtune inspect``: files, chunks and sequences per split, and one sample."""
    cfg = dataset.cfg
    first = dataset.files[0]
    manifest = dataset.manifest.path if dataset.manifest else "none (all *.h5 files)"
    lines = [
        f"latent H5 data: {dataset.data_dir}",
        f"manifest: {manifest}",
        f"dataset {first.dataset!r}: chunks of {list(first.chunk_shape)} [C, T_latent, H, W]",
        f"sequence: {cfg.sequence_length} latent frames = {dataset.chunks_per_sequence} chunks, "
        f"stride {cfg.sequence_stride} chunk(s)",
    ]
    splits = SPLITS if dataset.manifest else ("all",)
    lines += [_split_row(dataset) if s == cfg.split else _other_split_row(cfg, s) for s in splits]
    lines += _sample_lines(dataset)
    if dataset.skipped:
        lines.append(f"skipped in {cfg.split!r}: {len(dataset.skipped)} (first: {dataset.skipped[0][0]})")
    return "\n".join(lines)
