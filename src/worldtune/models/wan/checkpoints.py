"""Wan DiT weights on disk: read them (whole or tensor by tensor), load them into a model, save them.

Writing lives in saving.py. Readers accept the original release layout (`diffusion_pytorch_model[-0000i-of-0000n].safetensors`
+ index + `config.json`), diffusers folders (or pipelines with a `transformer/` folder) and single
`.safetensors` / `.pt` / `.pth` / `.bin` files, and hand out original Wan names whatever the file used.

    report = load_into(model, "/ckpt/Wan2.2-TI2V-5B", dtype=torch.bfloat16)
    print(report.summary())
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from worldtune.models.wan import convert
from worldtune.models.wan.convert import ConversionError, KeyFormat, describe_keys

WEIGHTS_NAME = "diffusion_pytorch_model"
SAFETENSORS_NAME = WEIGHTS_NAME + ".safetensors"
INDEX_NAME = SAFETENSORS_NAME + ".index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
Source = str | os.PathLike | Mapping[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ----------------------------------------------------------------------------- finding files

def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files a checkpoint path stands for (shards in index order)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such file or directory")
    if path.is_file():
        if path.name.endswith(".index.json"):
            return list(dict.fromkeys(_index_map(path).values()))
        if path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES:
            return [path]
        raise CheckpointError(path, "unsupported file type (want .safetensors, .pt, .pth, .bin, *.index.json)")
    safetensors, torch_files = sorted(path.glob("*.safetensors")), _torch_files(path)
    # A diffusers pipeline folder: the DiT lives in transformer/ (transformer_2/ is Wan2.2's second expert).
    pipeline = (path / "model_index.json").exists() or not (safetensors or torch_files)
    if pipeline and (path / "transformer").is_dir():
        return weight_files(path / "transformer")
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(path, f"several index files: {', '.join(p.name for p in indexes)}")
    if indexes:
        return weight_files(indexes[0])
    if (path / SAFETENSORS_NAME).exists():
        return [path / SAFETENSORS_NAME]
    # Original release folders also hold the VAE and T5 as .pth files; the DiT is the safetensors.
    candidates = safetensors or torch_files
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise CheckpointError(path, f"expected one weight file or an index, found: {found}")
    return candidates


def _torch_files(folder: Path) -> list[Path]:
    return sorted(f for suffix in TORCH_SUFFIXES for f in folder.glob("*" + suffix))


def _index_map(index: Path) -> dict[str, Path]:
    """{key: shard path} from a safetensors index; every shard it names must exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(index, f"not a valid safetensors index ({_short(exc)})") from exc
    shards = {key: index.parent / name for key, name in weight_map.items()}
    for shard in dict.fromkeys(shards.values()):
        if not shard.is_file():
            raise CheckpointError(shard, f"shard named by {index} is missing")
    return shards


# ----------------------------------------------------------------------------- reading

class _Reader:
    """One weight file, opened once and read tensor by tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._safe: Any = None
        self._dict: Mapping[str, torch.Tensor] = {}
        try:
            if path.suffix == ".safetensors":
                self._safe = safe_open(str(path), framework="pt", device="cpu")
            else:
                self._dict = _torch_state_dict(path)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors / torch raise many types for corrupt files
            raise CheckpointError(path, f"cannot read ({_short(exc)})") from exc

    def keys(self) -> list[str]:
        return list(self._safe.keys()) if self._safe is not None else list(self._dict)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._safe is not None:
            return tuple(self._safe.get_slice(key).get_shape())
        return tuple(self._dict[key].shape)

    def tensor(self, key: str) -> torch.Tensor:
        if self._safe is None:
            return self._dict[key]
        try:
            return self._safe.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(self.path, f"cannot read tensor {key!r} ({_short(exc)})") from exc


def _torch_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        obj = torch.load(path, weights_only=True, map_location="cpu")  # legacy (non-zip) files cannot be mapped
    # Training checkpoints often nest the weights beside step counters and optimiser state.
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            other = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            raise CheckpointError(path, f"not a state dict: non-tensor entries {describe_keys(other, 5)}")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    return obj


class _Checkpoint:
    """Every tensor of a source under its converted name, without reading the data yet."""

    def __init__(self, source: Source, key_format: KeyFormat = "original") -> None:
        self.label = "state dict" if isinstance(source, Mapping) else str(source)
        self._where: dict[str, tuple[Any, str]] = {}
        raw: dict[str, tuple[Any, str]] = {}
        if isinstance(source, Mapping):
            raw = {key: (source, key) for key in source}
        else:
            for reader in map(_Reader, weight_files(source)):
                for key in reader.keys():
                    if key in raw:
                        raise CheckpointError(reader.path, f"key {key!r} is also in {raw[key][0].path}")
                    raw[key] = (reader, key)
        try:
            names = convert.to_format_names(raw, key_format)
        except ConversionError as exc:
            raise CheckpointError(self.label, str(exc)) from exc
        self._where = {names[key]: place for key, place in raw.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: _shape(owner, key) for name, (owner, key) in self._where.items()}

    def tensors(self, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._where if names is None else names:
            owner, key = self._where[name]
            yield name, owner.tensor(key) if isinstance(owner, _Reader) else owner[key]


def _shape(owner: Any, key: str) -> tuple[int, ...]:
    return owner.shape(key) if isinstance(owner, _Reader) else tuple(owner[key].shape)


def iter_tensors(path: str | os.PathLike, *, key_format: KeyFormat = "original"
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, so that a large model never has two copies in memory."""
    yield from _Checkpoint(path, key_format).tensors()


def read_state_dict(path: str | os.PathLike, *, key_format: KeyFormat = "original") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, in original Wan names (or `key_format="diffusers"`)."""
    return dict(iter_tensors(path, key_format=key_format))


def read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The model config next to the weights, in original keys; None when there is none."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    for candidate in (folder / "config.json", folder / "transformer" / "config.json"):
        if candidate.is_file():
            try:
                cfg = json.loads(candidate.read_text())
            except ValueError as exc:
                raise CheckpointError(candidate, f"invalid JSON ({_short(exc)})") from exc
            return convert.diffusers_config_to_original(cfg) if convert.is_diffusers_config(cfg) else cfg
    return None


# ----------------------------------------------------------------------------- loading

@dataclass
class LoadReport:
    """What `load_into` did, in the model's own (wrapper-free) names."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.loaded) + len(self.missing)
        lines = [f"{self.source}: loaded {len(self.loaded)} of {total} model tensors"]
        for label, names in (("missing (model values kept)", self.missing),
                             ("unexpected (ignored)", self.unexpected),
                             ("initialised by init_missing", self.initialised)):
            if names:
                lines.append(f"  {label}: {len(names)}: {describe_keys(names)}")
        lines += [f"  shape mismatch {k}: checkpoint {list(c)} vs model {list(m)}"
                  for k, c, m in self.shape_mismatched]
        return "\n".join(lines)


_Slot = tuple[nn.Module, str, bool]  # (owning module, attribute, is_parameter)


def _slots(model: nn.Module) -> dict[str, _Slot]:
    """Every state-dict entry of `model` (tied weights under each name), keyed by wrapper-free name."""
    slots: dict[str, _Slot] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        slots.update({dot + a: (module, a, True) for a, p in module._parameters.items() if p is not None})
        slots.update({dot + a: (module, a, False) for a, b in module._buffers.items()
                      if b is not None and a not in module._non_persistent_buffers_set})
    names = convert.strip_wrappers(slots)
    return {names[key]: slot for key, slot in slots.items()}


def _current(slot: _Slot) -> torch.Tensor:
    module, attr, is_param = slot
    return (module._parameters if is_param else module._buffers)[attr]


def _plan(ckpt: _Checkpoint, slots: dict[str, _Slot]) -> LoadReport:
    report = LoadReport(ckpt.label)
    shapes = ckpt.shapes()
    report.unexpected = [name for name in shapes if name not in slots]
    for name, slot in slots.items():  # model order, so reports read like the model
        if name not in shapes:
            report.missing.append(name)
        elif shapes[name] != tuple(_current(slot).shape):
            report.shape_mismatched.append((name, shapes[name], tuple(_current(slot).shape)))
        else:
            report.loaded.append(name)
    return report


def _check(report: LoadReport, slots: dict[str, _Slot], strict: bool, can_init: bool) -> None:
    if report.shape_mismatched:
        raise CheckpointError(report.source, "shape mismatch:\n" + "\n".join(
            f"  {k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in report.shape_mismatched))
    if not report.loaded:
        raise CheckpointError(report.source, "no tensor matches the model; checkpoint keys: "
                              f"{describe_keys(report.unexpected, 5)}; model keys: {describe_keys(list(slots), 5)}")
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(report.source, "strict load failed\n" + report.summary())
    tied = {id(_current(slots[name])) for name in report.loaded}  # a tied weight loads under its twin's name
    on_meta = [n for n in report.missing if _current(slots[n]).is_meta and id(_current(slots[n])) not in tied]
    if on_meta and not can_init:
        raise CheckpointError(report.source, f"{len(on_meta)} model tensor(s) on the meta device are not in the "
                              f"checkpoint: {describe_keys(on_meta)}; pass init_missing=... to initialise them")


def _assign(slot: _Slot, value: torch.Tensor, dtype: torch.dtype | None, done: dict[int, torch.Tensor]) -> None:
    module, attr, is_param = slot
    table = module._parameters if is_param else module._buffers
    old = table[attr]
    if id(old) in done:  # a tied weight, already replaced under another name
        table[attr] = done[id(old)]
        return
    target = dtype if dtype is not None and old.is_floating_point() else old.dtype
    if not old.is_meta and old.dtype == target:
        with torch.no_grad():
            old.copy_(value)  # in place: optimisers and hooks keep pointing at the same tensor
        return
    new = value.to(device="cpu" if old.is_meta else old.device, dtype=target, copy=True)
    if is_param:
        new = nn.Parameter(new, requires_grad=old.requires_grad)
    table[attr] = done[id(old)] = new


def load_into(model: nn.Module, source: Source, *, strict: bool = False, dtype: torch.dtype | None = None,
              init_missing: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> LoadReport:
    """Load a checkpoint (path or state dict) into `model` by name, tensor by tensor.

    Names are converted to the model's scheme (original Wan or diffusers). Missing and unexpected
    keys are reported, not fatal (delta loading), unless `strict`. A model built on the meta device
    is materialised on the CPU, in `dtype` (floating tensors) or its own dtype; meta tensors absent
    from the checkpoint get `init_missing(name, meta_tensor)` or raise. Non-persistent buffers are
    the model's own business. Shape conflicts raise before anything is written.
    """
    slots = _slots(model)
    key_format = convert.detect_key_format(slots)
    ckpt = _Checkpoint(source, key_format)
    report = _plan(ckpt, slots)
    _check(report, slots, strict, init_missing is not None)
    done: dict[int, torch.Tensor] = {}
    for name, tensor in ckpt.tensors(report.loaded):
        _assign(slots[name], tensor, dtype, done)
    for name in report.missing:
        old = _current(slots[name])
        if id(old) in done:
            _assign(slots[name], old, dtype, done)  # re-tie to the tensor loaded under the twin's name
        elif init_missing is not None and old.is_meta:
            value = init_missing(name, old)
            if tuple(value.shape) != tuple(old.shape):
                raise CheckpointError(report.source, f"init_missing gave {name} shape {list(value.shape)}, "
                                      f"model has {list(old.shape)}")
            _assign(slots[name], value, dtype, done)
            report.initialised.append(name)
    return report

