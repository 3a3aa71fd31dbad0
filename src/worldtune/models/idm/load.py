"""`load_idm_state`: weights into an `IDM` from upstream's `idm.pt`, our export, or a state dict.

Upstream saves `{"model_state_dict": model.state_dict(), ...}` (beside optimiser state); a plain
state dict and the usual wrappers (`state_dict`, `model`) are accepted too, as are the `module.` /
`_orig_mod.` prefixes DDP and `torch.compile` leave. Unlike `utils.weights.load_weights`' delta
load, this is strict: an IDM with a missing tensor would regress garbage, so every mismatch is an
error that names the file and lists the keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from worldtune.utils.weight_files import (
    CheckpointError,
    describe_keys,
    short_error,
    strip_wrappers,
    unwrap_state_dict,
)
from worldtune.utils.weights import load_weights

from .model import IDM

UPSTREAM_KEY = "model_state_dict"
# Only whole-model wrappers: upstream's own names start with "model.", which must stay.
_WRAPPERS = ("module.", "_orig_mod.")
_FC_WEIGHT = "model.resnet_model.fc.weight"


def _read(path: str | os.PathLike) -> Any:
    """`torch.load` without running pickled code; mapped, so a 1 GB file with optimiser state costs
    only the tensors read."""
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(path, f"not a readable IDM checkpoint ({type(exc).__name__}: {short_error(exc)})") from exc


def _state_dict(obj: Any, label: str) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint, with whole-model wrapper prefixes removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get(UPSTREAM_KEY), Mapping):
        obj = obj[UPSTREAM_KEY]
    state = unwrap_state_dict(obj, label)
    try:
        names = strip_wrappers(state, _WRAPPERS)
    except ValueError as exc:
        raise CheckpointError(label, str(exc)) from exc
    return {names[k]: v for k, v in state.items()}


def _check_output_dim(model: IDM, obj: Any, state: Mapping[str, torch.Tensor], label: str) -> None:
    """An output_dim mismatch gets its own message: it means another variant (14-D bimanual vs 9-D
    Franka-style) or another dataset, not a damaged file."""
    declared = obj.get("output_dim") if isinstance(obj, Mapping) else None
    found = int(state[_FC_WEIGHT].shape[0]) if _FC_WEIGHT in state else declared
    if found is not None and int(found) != model.output_dim:
        raise CheckpointError(label, f"output_dim mismatch: the checkpoint has output_dim {int(found)}, the model "
                              f"has output_dim {model.output_dim}; build it with IDM.published(output_dim={int(found)})")


def _mismatch_report(model: IDM, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {describe_keys(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {describe_keys(unexpected)}")
    if shapes:
        lines.append(f"shape mismatches ({len(shapes)}):\n  " + "\n  ".join(shapes[:12]))
    if lines and not any(k.startswith("model.mask_model.") for k in state):
        lines.append("it has no mask network (model.mask_model.*): not upstream's masked IDM ('mask' variant)")
    return lines


def load_idm_state(model: IDM, source: str | os.PathLike | Mapping[str, Any]) -> IDM:
    """Load `source` (a file path, or an already loaded checkpoint / state dict) into `model`, strictly.

    Raises `CheckpointError` (a `ValueError`) naming the file for an unreadable file, an output_dim
    mismatch, or missing / unexpected keys and shape mismatches (all listed). A model built on the
    meta device is materialised on the CPU. Returns `model`.
    """
    label = "state dict" if isinstance(source, Mapping) else str(source)
    obj = source if isinstance(source, Mapping) else _read(source)
    state = _state_dict(obj, label)
    _check_output_dim(model, obj, state, label)
    problems = _mismatch_report(model, state)
    if problems:
        raise CheckpointError(label, "does not fit the IDM:\n" + "\n".join(problems))
    load_weights(model, state, strict=True, rename=lambda keys: {k: k for k in keys})
    return model
