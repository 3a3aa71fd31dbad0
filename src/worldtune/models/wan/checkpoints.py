"""Wan DiT weights on disk: what is Wan's own on top of `utils/weights` (which reads every format and
loads by name): the release layouts, the naming (original <-> diffusers) and the config.

Writing lives in saving.py. Readers accept the original release layout (`diffusion_pytorch_model[-0000i-of-0000n].safetensors`
+ index + `config.json`), diffusers folders (or pipelines with a `transformer/` folder) and single
`.safetensors` / `.pt` / `.pth` / `.bin` files, and hand out original Wan names whatever the file used.

    report = load_into(model, "/ckpt/Wan2.2-TI2V-5B", dtype=torch.bfloat16)
    print(report.summary())
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldtune.models.wan import convert
from worldtune.models.wan.convert import KeyFormat
from worldtune.utils import weight_files as files
from worldtune.utils.weight_files import CheckpointError, Source, WeightSource, short_error
from worldtune.utils.weights import InitMissing, LoadReport, load_weights, model_names

__all__ = ["CheckpointError", "LoadReport", "iter_tensors", "load_into", "read_config", "read_state_dict",
           "wan_source", "weight_files"]

WEIGHTS_NAME = "diffusion_pytorch_model"
SAFETENSORS_NAME = WEIGHTS_NAME + ".safetensors"
INDEX_NAME = SAFETENSORS_NAME + ".index.json"


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a DiT checkpoint path: a pipeline's `transformer/` (`transformer_2/` is
    Wan2.2's second expert), `diffusion_pytorch_model*` before any other file. Original release
    folders also hold the VAE and T5 as .pth files; the DiT is the safetensors."""
    return files.weight_files(path, component="transformer", preferred=(SAFETENSORS_NAME,))


def wan_source(source: Source, key_format: KeyFormat = "original") -> WeightSource:
    """A checkpoint's tensors under Wan names in `key_format`, whatever the file used."""
    paths = None if isinstance(source, Mapping) else weight_files(source)
    return WeightSource(source, rename=lambda keys: convert.to_format_names(keys, key_format), files=paths)


def iter_tensors(path: str | os.PathLike, *, key_format: KeyFormat = "original"
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time, so that a large model never has two copies in memory."""
    yield from wan_source(path, key_format).tensors()


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
                raise CheckpointError(candidate, f"invalid JSON ({short_error(exc)})") from exc
            return convert.diffusers_config_to_original(cfg) if convert.is_diffusers_config(cfg) else cfg
    return None


def load_into(model: nn.Module, source: Source, *, strict: bool = False, dtype: torch.dtype | None = None,
              init_missing: InitMissing | None = None) -> LoadReport:
    """Load a checkpoint (path or state dict) into `model` by name, tensor by tensor.

    Names are converted to the model's scheme (original Wan or diffusers), so any Wan file fits any
    Wan model; everything else is `utils.weights.load_weights`: missing and unexpected keys are
    reported (delta loading) unless `strict`, meta models are materialised in `dtype`, sharded ones
    read their own regions, shape conflicts raise before anything is written.
    """
    key_format = convert.detect_key_format(model_names(model))
    return load_weights(model, wan_source(source, key_format), strict=strict, dtype=dtype,
                        init_missing=init_missing)
