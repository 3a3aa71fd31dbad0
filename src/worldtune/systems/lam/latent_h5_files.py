"""One latent H5 file: a dataset ``[N_chunks, C, T_latent, H, W]`` of floats.

Which dataset: the one named by ``dataset_name`` (``data.dataset_name``, ``--dataset_name``), or, when
that is None (the default), the file's only 5-D dataset, wherever it is in the file
(``prepare vae-latents`` writes it as ``latents``). :func:`open_latent_file` reads only metadata
(HDF5 headers) and is what a reader does on open; values are read, and checked for NaN/inf, per item.
:func:`validate_latent_file` is the manifest's stricter check: a float dtype and finite values on a
sample of chunks too. Every problem is a :class:`LatentDataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from worldtune.systems.lam.latent_h5_manifest import CHECKED_CHUNKS, LatentDataError

LATENT_RANK = 5  # [N_chunks, C, T_latent, H, W]


@dataclass(frozen=True)
class LatentFile:
    """A usable file: where its latents are and their shape."""

    path: Path
    dataset: str  # name of the 5-D dataset inside the file
    shape: tuple[int, int, int, int, int]

    @property
    def num_chunks(self) -> int:
        return self.shape[0]

    @property
    def chunk_shape(self) -> tuple[int, int, int, int]:
        """``(C, T_latent, H, W)`` of one chunk."""
        return self.shape[1:]  # type: ignore[return-value]


def _datasets(f: h5py.File) -> dict[str, tuple[int, ...]]:
    """Every dataset in the file (groups included), name -> shape."""
    found: dict[str, tuple[int, ...]] = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = tuple(obj.shape)

    f.visititems(visit)
    return found


def find_latent_dataset(f: h5py.File, path: Path, name: str | None) -> str:
    """``name`` if given and present, else the file's only 5-D dataset."""
    datasets = _datasets(f)
    if name is not None:
        if name.strip("/") not in datasets:
            raise LatentDataError(path, f"no dataset {name!r} (datasets: {sorted(datasets) or 'none'})")
        return name.strip("/")
    candidates = sorted(n for n, shape in datasets.items() if len(shape) == LATENT_RANK)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        listing = ", ".join(f"{n} {list(s)}" for n, s in sorted(datasets.items())) or "none"
        raise LatentDataError(
            path,
            f"no 5-D dataset [N_chunks, C, T, H, W] to auto-detect (datasets: {listing}); set dataset_name",
        )
    raise LatentDataError(path, f"several 5-D datasets {candidates}; set dataset_name to pick one")


def open_latent_file(path: Path, dataset_name: str | None) -> LatentFile:
    """Open ``path`` for its metadata only and return the latent dataset's name and shape."""
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise LatentDataError(path, f"not a readable HDF5 file ({e})") from e
    with f:
        name = find_latent_dataset(f, path, dataset_name)
        shape = tuple(f[name].shape)
    if len(shape) != LATENT_RANK:
        raise LatentDataError(
            path, f"dataset {name!r} has shape {list(shape)}, expected 5-D [N_chunks, C, T_latent, H, W]"
        )
    return LatentFile(path=path, dataset=name, shape=shape)  # type: ignore[arg-type]


def chunks_per_sequence(file: LatentFile, sequence_length: int) -> int:
    """How many consecutive chunks make one sequence of ``sequence_length`` latent frames."""
    t = file.shape[2]
    if t < 1 or sequence_length % t:
        raise LatentDataError(
            file.path,
            f"sequence_length {sequence_length} is not a multiple of the {t} latent frames per chunk",
        )
    return sequence_length // t


def check_latent_file(
    file: LatentFile, channels: int, sequence_length: int, reference: LatentFile | None
) -> None:
    """Channels, enough chunks for one sequence, and the same chunk shape as ``reference``."""
    c = file.shape[1]
    if c != channels:
        raise LatentDataError(
            file.path, f"dataset {file.dataset!r} has {c} channels, expected {channels} (data.channels)"
        )
    needed = chunks_per_sequence(file, sequence_length)
    if file.num_chunks < needed:
        raise LatentDataError(
            file.path,
            f"too few chunks: {file.num_chunks}, a sequence of {sequence_length} latent frames needs {needed}",
        )
    if reference is not None and file.chunk_shape != reference.chunk_shape:
        raise LatentDataError(
            file.path,
            f"chunk shape {list(file.chunk_shape)} differs from {list(reference.chunk_shape)} "
            f"of {reference.path.name}; sequences from both cannot be batched",
        )


def sampled_chunks(num_chunks: int, count: int) -> list[int]:
    """``count`` chunk indices spread evenly from the first to the last (all of them when ``count`` is 0)."""
    if count <= 0 or count >= num_chunks:
        return list(range(num_chunks))
    if count == 1:
        return [0]
    return sorted({round(i * (num_chunks - 1) / (count - 1)) for i in range(count)})


def _check_values(f: h5py.File, file: LatentFile, check_chunks: int) -> None:
    dataset = f[file.dataset]
    if dataset.dtype.kind != "f":
        raise LatentDataError(
            file.path, f"dataset {file.dataset!r} holds {dataset.dtype}, expected floats (float16 / float32)"
        )
    for chunk in sampled_chunks(file.num_chunks, check_chunks):
        try:
            values = np.asarray(dataset[chunk])
        except OSError as e:
            raise LatentDataError(file.path, f"cannot read chunk {chunk} of dataset {file.dataset!r} ({e})") from e
        if not np.isfinite(values).all():
            raise LatentDataError(file.path, f"chunk {chunk} of dataset {file.dataset!r} holds NaN or inf values")


def validate_latent_file(path: Path, dataset_name: str | None, check_chunks: int = CHECKED_CHUNKS) -> LatentFile:
    """:func:`open_latent_file`, then a float dtype, at least one chunk, and finite values in
    ``check_chunks`` chunks spread over the file (every chunk when 0)."""
    file = open_latent_file(path, dataset_name)
    if file.num_chunks == 0:
        raise LatentDataError(path, f"dataset {file.dataset!r} has no chunks (shape {list(file.shape)})")
    with h5py.File(path, "r") as f:
        _check_values(f, file, check_chunks)
    return file
