"""Writing Wan DiT weights: the original release layout or a diffusers folder, sharded, atomically."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from worldtune.models.wan import convert
from worldtune.models.wan.checkpoints import INDEX_NAME, SAFETENSORS_NAME, WEIGHTS_NAME
from worldtune.models.wan.convert import KeyFormat
from worldtune.utils.atomic import atomic_path
from worldtune.utils.weight_files import save_safetensors

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from 123, "500MB" or "5GiB" (decimal units as in transformers, binary with "i")."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", size)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read size {size!r} (examples: 5GB, 500MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _savable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, tensor in state_dict.items():
        if tensor.is_meta:
            raise ValueError(f"{key} is on the meta device and has no values to save")
        tensor = tensor.detach().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in storages and tensor.numel():
            tensor = tensor.clone()  # safetensors refuses tensors that share memory (tied weights)
        storages.add(ptr)
        out[key] = tensor
    return out


def _shards(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as tmp:
        write(str(tmp))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    _replace_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def _write_weights(state_dict: Mapping[str, torch.Tensor], out_dir: Path, shard_size: int | str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = _savable(state_dict)
    shards = _shards(tensors, parse_size(shard_size))
    count = len(shards)
    names = [SAFETENSORS_NAME] if count == 1 else [f"{WEIGHTS_NAME}-{i:05d}-of-{count:05d}.safetensors"
                                                   for i in range(1, count + 1)]
    for name, shard in zip(names, shards, strict=True):
        save_safetensors(shard, out_dir / name, metadata={"format": "pt"})
    written = [out_dir / name for name in names]
    if count > 1:
        weight_map = {key: name for name, shard in zip(names, shards, strict=True) for key in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(out_dir / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
        written.append(out_dir / INDEX_NAME)
    # Files of an earlier save with another shard count would otherwise be picked up by readers.
    for stale in out_dir.glob(WEIGHTS_NAME + "*.safetensors*"):
        if stale not in written:
            stale.unlink()
    return written


def _in_format(state_dict: Mapping[str, torch.Tensor], key_format: KeyFormat) -> dict[str, torch.Tensor]:
    names = convert.to_format_names(state_dict, key_format)
    return {names[key]: value for key, value in state_dict.items()}


def save_original(state_dict: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, *,
                  shard_size: int | str = "5GB", config: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the original Wan release layout (original names); returns the files written."""
    out = Path(out_dir)
    written = _write_weights(_in_format(state_dict, "original"), out, shard_size)
    if config is not None:
        cfg = convert.diffusers_config_to_original(config) if convert.is_diffusers_config(config) else dict(config)
        cfg.setdefault("_class_name", "VaceWanModel" if cfg.get("model_type") == "vace" else "WanModel")
        _write_json(out / "config.json", cfg)
        written.append(out / "config.json")
    return written


def save_diffusers(state_dict: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, config: Mapping[str, Any],
                   *, shard_size: int | str = "5GB") -> list[Path]:
    """Write a folder that `WanTransformer3DModel.from_pretrained` (or the VACE class) loads."""
    out = Path(out_dir)
    original = _in_format(state_dict, "original")
    if convert.is_diffusers_config(config):
        cfg = dict(config)
    else:
        cfg = convert.original_config_to_diffusers(config, state_dict=original)
    cfg["_diffusers_version"] = _diffusers_version()
    written = _write_weights(convert.original_to_diffusers(original), out, shard_size)
    _write_json(out / "config.json", cfg)
    return [*written, out / "config.json"]


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.0.0"
