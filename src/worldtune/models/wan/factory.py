"""Build a Wan DiT for a config or named size, and load one from a checkpoint with little memory.

    model, report = load_wan("/ckpt/Wan2.2-TI2V-5B", dtype=torch.bfloat16)

The model is built on the `meta` device (instant, no memory) and its weights are read from disk
tensor by tensor in the target dtype, so a 5B model loads with about one copy of its weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

from worldtune.models.wan.checkpoints import CheckpointError, LoadReport, load_into, read_config
from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.sizes import WanConfig, wan_config
from worldtune.models.wan.vace import WanVaceModel

# Builds the DiT class for a config (a recipe's subclass, e.g. VACE-E's `WanVaceEModel`).
MakeModel = Callable[[WanConfig], WanModel]


def build_wan(config: WanConfig | str, device: str | torch.device | None = None,
              make: MakeModel | None = None) -> WanModel:
    """A randomly initialised DiT (`WanVaceModel` for VACE configs, or what `make` builds); device
    "meta" builds instantly."""
    config = wan_config(config)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if make is not None:
            return make(config)
        return WanVaceModel(config) if config.model_type == "vace" else WanModel(config)


SIZE_HINT = "pass the size (e.g. config='wan2.2-ti2v-5b')"


def resolve_config(path: str | os.PathLike, config: WanConfig | str | None = None, *,
                   hint: str = SIZE_HINT) -> WanConfig:
    """The given config / size, else the checkpoint's config.json (original or diffusers keys);
    `hint` says how the caller's user passes a size when there is neither."""
    if config is not None:
        return wan_config(config)
    found = read_config(path)
    if found is None:
        raise CheckpointError(path, f"no config.json beside the weights; {hint}")
    return WanConfig.from_dict(found)


def load_wan(path: str | os.PathLike, *, config: WanConfig | str | None = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", strict: bool = True,
             make: MakeModel | None = None) -> tuple[WanModel, LoadReport]:
    """A DiT with the checkpoint's weights; `strict=False` allows partial (delta) checkpoints, the
    tensors they lack initialised as a fresh model's, reported in the returned LoadReport.

    The model is built on meta and each tensor materialised from the file (or its initial value),
    so loading holds one copy of the weights; it then runs as built on the CPU.
    """
    wan = resolve_config(path, config)
    model = build_wan(wan, device="meta", make=make)
    init_missing = None if strict else (lambda name, _: model.initial_value(name))
    report = load_into(model, path, strict=strict, dtype=dtype, init_missing=init_missing)
    return model.to(device), report


def convert_checkpoint(source: str | os.PathLike, out_dir: str | os.PathLike, *, to: str,
                       config: WanConfig | str | None = None, dtype: torch.dtype | None = None,
                       shard_size: str = "5GB") -> list:
    """`worldtune convert`: rewrite a DiT checkpoint in original or diffusers layout and names."""
    from worldtune.models.wan.checkpoints import read_state_dict
    from worldtune.models.wan.saving import save_diffusers, save_original

    wan = resolve_config(source, config, hint="pass --size (e.g. --size wan2.2-ti2v-5b)")
    state = read_state_dict(source)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    original_config = {"_class_name": "VaceWanModel" if wan.model_type == "vace" else "WanModel", **wan.to_dict()}
    if to == "original":
        return save_original(state, out_dir, shard_size=shard_size, config=original_config)
    if to == "diffusers":
        return save_diffusers(state, out_dir, original_config, shard_size=shard_size)
    raise ValueError(f"--to must be 'original' or 'diffusers', got {to!r}")
