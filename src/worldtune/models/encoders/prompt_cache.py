"""Prompt-embedding cache: an in-memory LRU in front of an optional directory of safetensors files.

Disk entries live at `<dir>/<h[:2]>/<h>.safetensors`, `h = sha256(key)`, where the key holds the
model identity, dtype, text length, cleaning mode and the prompt. Each file also stores the prompt
in its metadata and is checked on read, and files are written under a temporary name and renamed,
so several processes can share one directory. Entries are kept on the CPU.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from worldtune.utils.weight_files import save_safetensors

from .common import PathLike


class PromptCache:
    def __init__(self, size: int = 256, directory: PathLike | None = None) -> None:
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = size
        self.directory = Path(directory) if directory is not None else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.disk_hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        """Drop the in-memory entries (disk files stay)."""
        self._memory.clear()

    def path_for(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.directory / digest[:2] / f"{digest}.safetensors"

    def get(self, key: str, prompt: str, disk_key: str | None = None) -> torch.Tensor | None:
        """The entry under `key` in memory, else under `disk_key` on disk (then remembered)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        value = self._read(disk_key, prompt) if disk_key is not None else None
        if value is None:
            self.misses += 1
            return None
        self.disk_hits += 1
        self._remember(key, value)
        return value

    def put(self, key: str, prompt: str, value: torch.Tensor, disk_key: str | None = None) -> None:
        # Entries live in host memory: a long run's prompts must not pile up on the accelerator.
        value = value.detach().cpu()
        self._remember(key, value)
        if disk_key is not None:
            self._write(disk_key, prompt, value)

    def _remember(self, key: str, value: torch.Tensor) -> None:
        if self.size == 0:
            return
        self._memory[key] = value
        self._memory.move_to_end(key)
        while len(self._memory) > self.size:
            self._memory.popitem(last=False)

    def _read(self, key: str, prompt: str) -> torch.Tensor | None:
        path = self.path_for(key)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                if (handle.metadata() or {}).get("prompt") != prompt:
                    return None  # a hash collision or a foreign file: recompute
            return load_file(str(path))["embeds"]
        except (SafetensorError, OSError, KeyError):
            return None  # a torn or corrupt file counts as a miss and is rewritten

    def _write(self, key: str, prompt: str, value: torch.Tensor) -> None:
        path = self.path_for(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({"embeds": value.contiguous().cpu()}, path, metadata={"prompt": prompt})


def files_fingerprint(paths: Iterable[Path], *extra: str) -> str:
    """Cheap identity of weights on disk: every config's content, every other file's name and size.

    Paths themselves are left out, so a moved or copied model keeps its cache.
    """
    digest = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            rel = file.relative_to(root).as_posix() if root.is_dir() else file.name
            digest.update(rel.encode())
            if file.suffix == ".json" and file.stat().st_size < 1 << 20:
                digest.update(file.read_bytes())
            else:
                digest.update(str(file.stat().st_size).encode())
    for item in extra:
        digest.update(item.encode())
    return "files:" + digest.hexdigest()[:32]


def module_fingerprint(module: nn.Module, tokenizer=None) -> str:
    """Identity of an in-memory model: a hash of its weights and of the tokenizer vocabulary."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if tokenizer is not None:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return "weights:" + digest.hexdigest()[:32]
