"""Weight files on disk: finding them, reading them tensor by tensor (or a region of a tensor), and
writing safetensors files. Loading into a model lives in `utils/weights.py`.

Formats: `.safetensors` (one file, or shards named by a `*.safetensors.index.json`) and torch
pickles (`.pt` / `.pth` / `.bin` / `.ckpt`, always `torch.load(weights_only=True)`), whose weights may
sit under a wrapper key (`state_dict`, `model`, `module`). Names may carry wrapper prefixes
(`module.`, `model.`, `diffusion_model.`, `_orig_mod.`) and per-block wrapper segments (FSDP1,
activation checkpointing, `torch.compile`); `strip_wrappers` removes them.

Safetensors data are read with plain file reads, not a memory map: a mapped file's touched pages
count in the process's resident memory until it is closed, so reading a 5B model through a map
holds the file *and* the model. Here a read costs exactly the tensor (or region) read.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
# Training checkpoints nest the weights beside step counters and optimiser state.
WRAPPER_KEYS = ("state_dict", "model", "module")
# Prefixes a wrapper around the whole model leaves on every name (DDP, torch.compile, ComfyUI /
# DiffSynth). Only a prefix shared by every name is stripped.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "diffusion_model.")
# Wrappers applied per block (torch.compile, activation checkpointing, FSDP1) leave a path segment
# in the middle of a name, not only at the start; so does a peft LoRA layer around the layer it
# adapts (`q.base_layer.weight` is `q.weight`), so that plain weights load into a LoRA model.
_WRAPPER_SEGMENTS = re.compile(r"(^|\.)(?:_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module|base_layer)\.")

Source = str | os.PathLike | Mapping[str, torch.Tensor]
Region = tuple[slice, ...]  # one slice per dimension, steps of 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def describe_keys(keys: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ----------------------------------------------------------------------------- names

def wrapper_prefix(keys: Iterable[str], prefixes: Sequence[str] = WRAPPER_PREFIXES) -> str:
    """The wrapper prefix shared by every key (e.g. "model.diffusion_model."), or ""."""
    keys = [_WRAPPER_SEGMENTS.sub(r"\1", k) for k in keys]
    prefix = ""
    while keys:
        shared = next((p for p in prefixes if all(k.startswith(p) for k in keys)), None)
        if shared is None:
            break
        prefix += shared
        keys = [k[len(shared):] for k in keys]
    return prefix


def strip_wrappers(keys: Iterable[str], prefixes: Sequence[str] = WRAPPER_PREFIXES) -> dict[str, str]:
    """{key: key without wrapper prefixes and per-block wrapper segments}; two keys that end up
    with the same name are an error."""
    keys = list(keys)
    prefix = wrapper_prefix(keys, prefixes)
    mapping = {k: _WRAPPER_SEGMENTS.sub(r"\1", k)[len(prefix):] for k in keys}
    check_unique(mapping)
    return mapping


def check_unique(mapping: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for key, renamed in mapping.items():
        if renamed in seen:
            raise ValueError(f"keys {seen[renamed]!r} and {key!r} both map to {renamed!r}")
        seen[renamed] = key


# ----------------------------------------------------------------------------- finding files

def find_file(root: Path, names: Sequence[str]) -> Path | None:
    """The first of `names` that is a file in `root`."""
    for name in names:
        if (root / name).is_file():
            return root / name
    return None


def weight_files(path: str | os.PathLike, *, component: str | None = None,
                 preferred: Sequence[str] = ()) -> list[Path]:
    """The weight files a checkpoint path stands for (shards in index order).

    A file stands for itself (an index for its shards); a folder for its one index, else the first
    `preferred` name present, else its one weight file (safetensors before torch files). A pipeline
    folder (`model_index.json`, or no weights of its own) stands for its `component` subfolder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_file():
        return _files_of_file(path)
    safetensors, torch_files = sorted(path.glob("*" + SAFETENSORS_SUFFIX)), _torch_files(path)
    pipeline = (path / "model_index.json").exists() or not (safetensors or torch_files)
    if component and pipeline and (path / component).is_dir():
        return weight_files(path / component, preferred=preferred)
    indexes = sorted(path.glob("*" + INDEX_SUFFIX))
    if len(indexes) > 1:
        raise CheckpointError(path, f"several index files: {', '.join(p.name for p in indexes)}")
    if indexes:
        return _files_of_file(indexes[0])
    named = find_file(path, preferred)
    if named is not None:
        return [named]
    candidates = safetensors or torch_files
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise CheckpointError(path, f"expected one weight file or an index, found: {found}")
    return candidates


def _files_of_file(path: Path) -> list[Path]:
    if path.name.endswith(INDEX_SUFFIX):
        return list(dict.fromkeys(index_map(path).values()))
    if path.suffix in WEIGHT_SUFFIXES:
        return [path]
    raise CheckpointError(path, f"unsupported file type (want {', '.join(WEIGHT_SUFFIXES)} or *{INDEX_SUFFIX})")


def _torch_files(folder: Path) -> list[Path]:
    return sorted(f for suffix in TORCH_SUFFIXES for f in folder.glob("*" + suffix))


def index_map(index: Path) -> dict[str, Path]:
    """{key: shard path} from a safetensors index; every shard it names must exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(index, f"not a valid safetensors index ({short_error(exc)})") from exc
    shards = {key: index.parent / name for key, name in weight_map.items()}
    for shard in dict.fromkeys(shards.values()):
        if not shard.is_file():
            raise CheckpointError(shard, f"shard named by {index} is missing")
    return shards


# ----------------------------------------------------------------------------- one file

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64,
    "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsFile:
    """A safetensors file read with plain reads: the header once, then any tensor or region of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or 8 + length > size:
                raise CheckpointError(path, "not a readable checkpoint (truncated or not safetensors)")
            try:
                header = json.loads(handle.read(length))
            except ValueError as exc:
                raise CheckpointError(path, f"not a readable checkpoint (bad header: {short_error(exc)})") from exc
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + length
        self._entries = {key: self._entry(key, info, size) for key, info in header.items()}

    def _entry(self, key: str, info: Any, size: int) -> tuple[torch.dtype, tuple[int, ...], int]:
        try:
            dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(self.path, f"not a readable checkpoint (entry {key!r}: {short_error(exc)})") from exc
        if end - begin != math.prod(shape) * dtype.itemsize or self._data_start + end > size:
            raise CheckpointError(self.path, f"not a readable checkpoint (tensor {key!r} lies outside the file: "
                                  "truncated?)")
        return dtype, shape, self._data_start + begin

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._entries[key][1]

    def read(self, key: str, region: Region | None = None) -> torch.Tensor:
        """The tensor, or only `region` of it: the rows of its first dimension are read from disk,
        the other dimensions are cut from those rows."""
        dtype, shape, offset = self._entries[key]
        if not shape:
            return self._read_rows(offset, dtype, (), 0, 1).reshape(())
        rows = region[0] if region else slice(0, shape[0])
        begin, end, _ = rows.indices(shape[0])
        tensor = self._read_rows(offset, dtype, shape[1:], begin, max(end - begin, 0))
        if region and any(r != slice(0, n) for r, n in zip(region[1:], shape[1:], strict=True)):
            tensor = tensor[(slice(None), *region[1:])].contiguous()
        return tensor

    def _read_rows(self, offset: int, dtype: torch.dtype, row_shape: tuple[int, ...], first: int,
                   count: int) -> torch.Tensor:
        row_bytes = math.prod(row_shape) * dtype.itemsize
        buffer = torch.empty(count * row_bytes, dtype=torch.uint8)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(offset + first * row_bytes)
            view, done = memoryview(buffer.numpy()), 0
            while done < len(view):  # one read() returns at most ~2 GiB on Linux
                got = handle.readinto(view[done:])
                if not got:
                    raise CheckpointError(self.path, "not a readable checkpoint (file ends early)")
                done += got
        return buffer.view(dtype).reshape(count, *row_shape)


class TensorDict:
    """An in-memory state dict behind the same interface."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str = "state dict") -> None:
        self.path = label
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._tensors[key].shape)

    def read(self, key: str, region: Region | None = None) -> torch.Tensor:
        tensor = self._tensors[key]
        return tensor[region] if region else tensor


class TorchFile(TensorDict):
    """A torch pickle of a state dict, read with `weights_only=True` (no code runs) and mapped."""

    def __init__(self, path: Path) -> None:
        super().__init__(unwrap_state_dict(_torch_load(path), path))
        self.path = path


WeightFile = SafetensorsFile | TorchFile | TensorDict


def open_file(path: Path) -> WeightFile:
    try:
        return SafetensorsFile(path) if path.suffix == SAFETENSORS_SUFFIX else TorchFile(path)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(path, f"not a readable checkpoint ({type(exc).__name__}: {short_error(exc)})") from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, weights_only=True, map_location="cpu")  # legacy (non-zip) files cannot be mapped


def unwrap_state_dict(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint ({"state_dict": ...}, {"model": ...}, ...)."""
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            other = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise CheckpointError(path, f"not a state dict: non-tensor entries {describe_keys(other, 5)}")
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


# ----------------------------------------------------------------------------- a checkpoint

Rename = Callable[[list[str]], Mapping[str, str]]


class WeightSource:
    """Every tensor of a checkpoint (files or a state dict) under the name `rename` gives it,
    without reading any data yet. `files` overrides how a path is resolved to files."""

    def __init__(self, source: Source, *, rename: Rename | None = None,
                 files: Sequence[Path] | None = None) -> None:
        self.label = "state dict" if isinstance(source, Mapping) else str(source)
        owners: dict[str, WeightFile] = {}
        readers = ([TensorDict(source)] if isinstance(source, Mapping)
                   else [open_file(p) for p in (files if files is not None else weight_files(source))])
        for reader in readers:
            for key in reader.keys():
                if key in owners:
                    raise CheckpointError(reader.path, f"key {key!r} is also in {owners[key].path}")
                owners[key] = reader
        try:
            names = rename(list(owners)) if rename is not None else {k: k for k in owners}
        except ValueError as exc:
            raise CheckpointError(self.label, str(exc)) from exc
        self._where = {names[key]: (reader, key) for key, reader in owners.items()}

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        reader, key = self._where[name]
        return reader.shape(key)

    def fresh(self, name: str) -> bool:
        """Whether `read` returns a tensor nobody else holds, which a model may keep without a copy:
        safetensors reads are; a caller's state dict is not, nor a torch file's tensors (they map
        the file, and a file rewritten in place under a mapping faults the process)."""
        return isinstance(self._where[name][0], SafetensorsFile)

    def read(self, name: str, region: Region | None = None) -> torch.Tensor:
        reader, key = self._where[name]
        try:
            return reader.read(key, region)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(reader.path, f"cannot read tensor {key!r} ({short_error(exc)})") from exc

    def tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._where if names is None else names:
            yield name, self.read(name)


def read_state_dict(path: Source, *, rename: Rename | None = None,
                    files: Sequence[Path] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, index or folder (see `weight_files`)."""
    return dict(WeightSource(path, rename=rename, files=files).tensors())


# ----------------------------------------------------------------------------- writing

def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file atomically, readable like any file the user writes.

    safetensors creates its files with mode 0600 whatever the umask; this gives them the mode a
    plain `open()` would (0666 less the umask), so exports and conversions can be shared.
    """
    from safetensors.torch import save_file

    from worldtune.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
        os.chmod(tmp, 0o666 & ~current_umask())
    return Path(path)


def current_umask() -> int:
    """The process umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
