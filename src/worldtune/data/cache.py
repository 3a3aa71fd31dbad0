"""Latent cache: precomputed tensors per dataset item, so training reads tensors, not videos.

Layout of a cache directory:

    meta.json                  {"version", "settings", "created", "num_items", "item_settings" (optional)}
    index.json                 item key -> [shard file, tensor-name prefix]
    shard-00000.safetensors    tensors of up to `shard_size` items, named "<prefix>/<tensor name>"
    shared.safetensors         tensors shared by all items (e.g. the empty-prompt embedding)

Item keys are given by the dataset and already encode content hash + transform settings; the
prefix is a hash of the key, so keys may contain any characters. `settings` (model / transform
settings) are stored too: opening a cache with other settings raises `StaleCacheError`.

    stats = build_cache(cache_dir, keys, compute, settings)   # resumes an interrupted build
    dataset = CachedDataset(source, LatentCache(cache_dir, settings))
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from worldtune.data.errors import CacheMissError, StaleCacheError
from worldtune.utils.atomic import atomic_path
from worldtune.utils.logging import get_logger
from worldtune.utils.logging import progress as progress_bar
from worldtune.utils.weight_files import save_safetensors

CACHE_VERSION = 1
META_FILE = "meta.json"
INDEX_FILE = "index.json"
SHARED_FILE = "shared.safetensors"
_SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")
REBUILD_HINT = "rebuild it with `worldtune prepare cache CONFIG`"

Tensors = dict[str, torch.Tensor]
ComputeFn = Callable[[list[int]], list[Tensors]]


@dataclass(frozen=True)
class CacheStats:
    """What one build did; `bytes_written` counts the shard and shared files it wrote."""

    total: int
    computed: int
    reused: int
    bytes_written: int


class KeyedSource(Protocol):
    """What `CachedDataset` needs from a dataset: keys (and optional metadata) without decoding.

    A source may also have `clip_settings()`, the settings its keys hash (e.g. frame size): built with
    `item_settings=source.clip_settings()`, a cache then names the setting that changed on a miss.
    """

    def __len__(self) -> int: ...

    def clip_key(self, index: int) -> str: ...


# --------------------------------------------------------------------------- files


def _prefix(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _atomic_replace(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _write_json(path: Path, data: Any) -> None:
    _atomic_replace(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1), encoding="utf-8"))


def _write_tensors(path: Path, tensors: Tensors) -> int:
    save_safetensors(tensors, path)  # atomic, and with the umask's mode (safetensors alone gives 0600)
    return path.stat().st_size


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they read back from JSON (tuples -> lists), so comparisons match."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """"key: cached 'a' != 'b', ..." for every setting that differs; "" when none does."""
    old, new = _flatten(stored), _flatten(_normalise(wanted))
    diffs = [(k, old.get(k, "<unset>"), new.get(k, "<unset>")) for k in sorted(old.keys() | new.keys())]
    return ", ".join(f"{k}: cached {a!r} != {b!r}" for k, a, b in diffs if a != b)


def _check_settings(cache_dir: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    if details := _differences(stored, wanted):
        raise StaleCacheError(
            f"stale latent cache {cache_dir}: settings differ ({details}); delete the directory and "
            + REBUILD_HINT
        )


def _load_meta(cache_dir: Path) -> dict[str, Any] | None:
    path = cache_dir / META_FILE
    if not path.exists():
        return None
    meta = _read_json(path)
    if meta.get("version") != CACHE_VERSION:
        raise StaleCacheError(
            f"latent cache {cache_dir} has format version {meta.get('version')!r}, this worldtune "
            f"reads version {CACHE_VERSION}; delete the directory and {REBUILD_HINT}"
        )
    return meta


def _load_index(cache_dir: Path) -> dict[str, tuple[str, str]]:
    path = cache_dir / INDEX_FILE
    if not path.exists():
        return {}
    return {key: (shard, prefix) for key, (shard, prefix) in _read_json(path).items()}


# --------------------------------------------------------------------------- building


class _ShardWriter:
    """Collects computed items and writes them as shards, updating index and meta after each."""

    def __init__(self, cache_dir: Path, meta: dict[str, Any], index: dict[str, tuple[str, str]]) -> None:
        self.cache_dir, self.meta, self.index = cache_dir, meta, index
        self.pending: list[tuple[str, Tensors]] = []
        self.bytes_written = 0
        # Count past every shard on disk, not just indexed ones: a crash between writing a shard
        # and the index leaves an orphan that must not be mistaken for a new shard's name.
        numbers = [int(m.group(1)) for p in cache_dir.iterdir() if (m := _SHARD_RE.match(p.name))]
        self.next_shard = max(numbers, default=-1) + 1

    def add(self, key: str, tensors: Tensors) -> None:
        self.pending.append((key, tensors))

    def flush(self, count: int) -> None:
        """Write the first `count` pending items as one shard."""
        items, self.pending = self.pending[:count], self.pending[count:]
        if not items:
            return
        shard = f"shard-{self.next_shard:05d}.safetensors"
        self.next_shard += 1
        flat = {f"{_prefix(key)}/{name}": t for key, tensors in items for name, t in tensors.items()}
        self.bytes_written += _write_tensors(self.cache_dir / shard, flat)
        self.index.update({key: (shard, _prefix(key)) for key, _ in items})
        _write_json(self.cache_dir / INDEX_FILE, {k: list(v) for k, v in self.index.items()})
        self.meta["num_items"] = len(self.index)
        _write_json(self.cache_dir / META_FILE, self.meta)


def _owned(tensors: Mapping[str, torch.Tensor], key: str) -> Tensors:
    """CPU copies: views of a batch tensor would otherwise keep the batch alive (and share memory,
    which safetensors refuses to save)."""
    if not isinstance(tensors, Mapping) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError(f"compute must return a dict of tensors per item; got {type(tensors)} for {key!r}")
    return {str(name): t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}


def _todo(keys: Sequence[str], index: Mapping[str, Any]) -> list[int]:
    """Indices of keys to compute: not cached yet, first occurrence only."""
    seen: set[str] = set()
    todo = []
    for i, key in enumerate(keys):
        if key not in index and key not in seen:
            todo.append(i)
        seen.add(key)
    return todo


def _open_for_build(cache_dir: Path, settings: Mapping[str, Any],
                    item_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = _load_meta(cache_dir)
    if meta is not None:
        _check_settings(cache_dir, meta["settings"], settings)
    else:
        meta = {
            "version": CACHE_VERSION,
            "settings": _normalise(settings),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_items": 0,
        }
    if item_settings is not None:  # the latest build's: items of earlier settings stay under their keys
        meta["item_settings"] = _normalise(item_settings)
    _write_json(cache_dir / META_FILE, meta)
    return meta


def build_cache(
    cache_dir: str | os.PathLike[str],
    keys: Sequence[str],
    compute: ComputeFn,
    settings: Mapping[str, Any],
    *,
    batch_size: int = 8,
    shard_size: int = 256,
    shared: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
    item_settings: Mapping[str, Any] | None = None,
) -> CacheStats:
    """Compute and store the items of `keys` not cached yet; `compute(indices)` gets dataset
    indices and returns one dict of tensors per index. Safe to rerun after an interruption.

    `item_settings` (the source's `clip_settings()`, what its keys hash) are recorded in meta.json,
    so that a miss caused by a changed setting can name it."""
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
    root = Path(cache_dir)
    meta = _open_for_build(root, settings, item_settings)
    writer = _ShardWriter(root, meta, _load_index(root))
    if shared is not None:
        writer.bytes_written += _write_tensors(root / SHARED_FILE, _owned(shared, "<shared>"))
    todo = _todo(keys, writer.index)
    bar = progress_bar(total=len(todo), desc="cache", unit="item", enabled=progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            outputs = compute(batch)
            if len(outputs) != len(batch):
                raise ValueError(f"compute returned {len(outputs)} items for {len(batch)} indices")
            for i, tensors in zip(batch, outputs, strict=True):
                writer.add(keys[i], _owned(tensors, keys[i]))
            while len(writer.pending) >= shard_size:
                writer.flush(shard_size)
            bar.update(len(batch))
    finally:
        # Keep what was computed before an error or interrupt: the rerun then resumes from here.
        writer.flush(len(writer.pending))
        bar.close()
    stats = CacheStats(len(set(keys)), len(todo), len(set(keys)) - len(todo), writer.bytes_written)
    get_logger("worldtune.data.cache").info(
        f"latent cache {root}: {stats.total} items ({stats.computed} computed, {stats.reused} reused), "
        f"{stats.bytes_written / 1e6:.1f} MB written"
    )
    return stats


# --------------------------------------------------------------------------- reading


class LatentCache:
    """Read access to a built cache. Shard handles open lazily per process and are not pickled,
    so an instance can be handed to DataLoader workers."""

    def __init__(self, cache_dir: str | os.PathLike[str], settings: Mapping[str, Any] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        meta = _load_meta(self.cache_dir)
        if meta is None:
            raise StaleCacheError(f"no latent cache at {self.cache_dir}; {REBUILD_HINT}")
        if settings is not None:
            _check_settings(self.cache_dir, meta["settings"], settings)
        self.meta = meta
        self._index = _load_index(self.cache_dir)
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[str, Any] = {}
        self._names: dict[str, dict[str, list[str]]] = {}  # shard -> prefix -> tensor names
        self._shared: Tensors | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_handles", "_names", "_shared"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[str]:
        return list(self._index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if key not in self._index]

    def _shard(self, shard: str) -> tuple[Any, dict[str, list[str]]]:
        if self._pid != os.getpid():  # forked worker: don't share the parent's handles
            self._reset_handles()
        if shard not in self._handles:
            handle = safe_open(str(self.cache_dir / shard), framework="pt", device="cpu")
            names: dict[str, list[str]] = {}
            for full in handle.keys():
                prefix, name = full.split("/", 1)
                names.setdefault(prefix, []).append(name)
            self._handles[shard], self._names[shard] = handle, names
        return self._handles[shard], self._names[shard]

    def get(self, key: str) -> Tensors:
        """The item's tensors, as CPU copies the caller may modify in place."""
        if key not in self._index:
            raise CacheMissError(
                f"item {key!r} is not in the latent cache {self.cache_dir}: the item changed or "
                f"the cache is incomplete; {REBUILD_HINT}"
            )
        shard, prefix = self._index[key]
        handle, names = self._shard(shard)
        # get_tensor returns a view of the mmap shared by all reads: clone so edits stay local.
        return {name: handle.get_tensor(f"{prefix}/{name}").clone() for name in names.get(prefix, [])}

    def shared(self) -> Tensors:
        """Tensors shared by all items; empty when the cache has none."""
        if self._shared is None:
            path = self.cache_dir / SHARED_FILE
            self._shared = load_file(str(path)) if path.exists() else {}
        return {name: t.clone() for name, t in self._shared.items()}


class CachedDataset(Dataset):
    """Items of `source` read from the cache: `{**source.item_metadata(i), **cache.get(key)}`.

    Only `source.clip_key`, `len(source)` and the optional `source.item_metadata` are called,
    so no video is decoded. With `verify`, every key is checked up front so a stale cache fails
    at start instead of mid-training.
    """

    def __init__(self, source: KeyedSource, cache: LatentCache, *, verify: bool = True) -> None:
        self.source, self.cache = source, cache
        if verify:
            missing = [i for i in range(len(source)) if source.clip_key(i) not in cache]
            if missing:
                raise CacheMissError(
                    f"{len(missing)} of {len(source)} items are not in the latent cache "
                    f"{cache.cache_dir} (first: index {missing[0]}, key {source.clip_key(missing[0])!r}): "
                    f"{_miss_reason(source, cache.meta)}; {REBUILD_HINT}"
                )

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        metadata = getattr(self.source, "item_metadata", None)
        extra = metadata(index) if metadata is not None else {}
        return {**extra, **self.cache.get(self.source.clip_key(index))}


def _miss_reason(source: KeyedSource, meta: Mapping[str, Any]) -> str:
    """Why items are missing: the settings that changed, when the cache recorded them at build time."""
    stored, current = meta.get("item_settings"), getattr(source, "clip_settings", None)
    if stored is not None and current is not None and (details := _differences(stored, current())):
        return f"the data settings differ from those the cache was built with ({details})"
    return "the items changed or the cache is incomplete"
