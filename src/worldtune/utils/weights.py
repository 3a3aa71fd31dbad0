"""Delta loading of plain state dicts (any model): read a .pt / .pth / .bin / .safetensors file
safely and load what matches, with a report, failing loudly on nothing matched or wrong shapes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model", "module")


@dataclass
class PartialLoad:
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing (kept as initialised), "
                f"{len(self.unexpected)} unexpected (ignored)")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a file, with torch.load(weights_only=True) (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / corrupt / not a checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    for key in WRAPPER_KEYS:  # training checkpoints often nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_partial(model: nn.Module, path: str | os.PathLike) -> PartialLoad:
    """`model.load_state_dict(weights, strict=False)` as the seeds do, reported; raises when no key
    matches or a matching key has another shape."""
    weights = read_weights(path)
    own = model.state_dict()
    matched = [k for k in weights if k in own]
    if not matched:
        raise ValueError(f"{path}: none of its {len(weights)} keys match the model "
                         f"(e.g. {list(weights)[:3]} vs {list(own)[:3]})")
    wrong = [f"{k} {tuple(weights[k].shape)} != {tuple(own[k].shape)}" for k in matched
             if weights[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: shapes differ from the model: {wrong[:5]}")
    result = model.load_state_dict({k: weights[k] for k in matched}, strict=False)
    return PartialLoad(matched, list(result.missing_keys), [k for k in weights if k not in own])
