"""`worldtune export`: the weights a user hands on, read straight from a DCP checkpoint.

The checkpoint is read tensor by tensor from its metadata, without building the model, so any size
exports with one copy of the weights in memory and no GPU. Output: `<name>.safetensors` and
`<name>.pt` (a plain state dict, loadable with `torch.load(path, weights_only=True)`), plus the
recipe's `export_files` (a Wan DiT's config.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from worldtune.train import checkpoint as ckpt
from worldtune.train.recipe import Recipe
from worldtune.utils.atomic import atomic_path, write_text_atomic
from worldtune.utils.weight_files import save_safetensors


def find_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint to export: the one given, RUN_DIR itself if it is one, or the newest in RUN_DIR."""
    if checkpoint is not None:
        path = Path(checkpoint)
    elif ckpt.is_complete(Path(run_dir)):
        path = Path(run_dir)
    else:
        path = ckpt.latest_checkpoint(Path(run_dir))
        if path is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint under {ckpt.checkpoints_root(Path(run_dir))}")
    if not ckpt.is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint directory")
    return path


def load_weights(path: Path, section: str = "model", keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of `section` ("model" or "ema") in a checkpoint, as full CPU tensors."""
    reader = dcp.FileSystemReader(str(path / "state"))
    metadata = reader.read_metadata().state_dict_metadata
    prefix = section + "."
    wanted: dict[str, torch.Tensor] = {}
    for full_key, meta in metadata.items():
        if not full_key.startswith(prefix) or not isinstance(meta, TensorStorageMetadata):
            continue
        name = full_key[len(prefix):]
        if keys is None or name in keys:
            wanted[name] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not wanted:
        raise ValueError(f"{path}: checkpoint has no {section!r} weights"
                         f"{' (was the run trained with train.ema_decay?)' if section == 'ema' else ''}")
    state = {section: wanted}
    with ckpt.quiet_single_process():
        dcp.load(state, storage_reader=reader, no_dist=True)
    return state[section]


def export_run(run_dir: str | Path, recipe: Recipe | None = None, *, checkpoint: str | Path | None = None,
               ema: bool = False,
               out_dir: str | Path | None = None, name: str | None = None,
               trainable_only: bool = True) -> list[Path]:
    """Write the run's weights. Recipes with an artefact of their own (Vidar's `vidar.pt`: the whole
    DiT in original Wan names, LoRA merged) name and shape it through `Recipe.export_weights`;
    without a recipe (or one with no artefact) the trainable weights go to `model.*`."""
    path = find_checkpoint(run_dir, checkpoint)
    trainer_state = ckpt.read_trainer_state(path)
    custom = recipe is not None and recipe.export_name is not None
    keys = set(trainer_state["trainable_keys"]) if trainable_only and not custom else None
    weights = load_weights(path, "ema" if ema else "model", keys)
    cfg = _config_of(path, recipe) if custom else None
    if custom:
        weights = recipe.export_weights(weights, cfg)
    run_root = path.parent.parent if path.parent.name == "checkpoints" else path
    out = Path(out_dir) if out_dir is not None else run_root / "export"
    step = trainer_state["progress"]["step"]
    stem = name or (recipe.export_name.format(step=step) if custom else "model")
    payload = recipe.export_payload(weights, cfg) if custom else None
    written = write_weights(weights, out, stem, metadata={"step": str(trainer_state["progress"]["step"])},
                            pt_payload=payload)
    extra = recipe.export_files(cfg) if custom else {}
    written += [write_text_atomic(out / file_name, text) for file_name, text in extra.items()]
    for file_name, payload in (recipe.export_binaries(weights, cfg) if custom else {}).items():
        (out / file_name).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / file_name) as tmp:
            torch.save(payload, tmp)
        written.append(out / file_name)
    save_path = getattr(getattr(cfg, "output", None), "save_path", None)
    if save_path:  # the seeds' output.save_path (checkpoints/vidar/vidar.pt): a copy of the .pt there
        written.append(copy_atomic(out / f"{stem}.pt", Path(save_path)))
    return written


def copy_atomic(source: Path, dest: Path) -> Path:
    import shutil

    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    return dest


def _config_of(path: Path, recipe):
    from worldtune.config import build_config, read_yaml

    return build_config(recipe.config_class, read_yaml(path / "config.yaml"), source=str(path / "config.yaml"))


def write_weights(weights: dict[str, torch.Tensor], out_dir: Path, name: str,
                  metadata: dict[str, str] | None = None, pt_payload: dict | None = None) -> list[Path]:
    """`<name>.safetensors` and `<name>.pt` (the weights, or `pt_payload` when given), each written
    to a temporary file and renamed, with the mode any file the user writes gets (the umask's)."""
    weights = {k: v.contiguous() for k, v in sorted(weights.items())}
    safetensors = save_safetensors(weights, out_dir / f"{name}.safetensors", metadata=metadata)
    with atomic_path(out_dir / f"{name}.pt") as tmp:
        torch.save(weights if pt_payload is None else pt_payload, tmp)
    return [safetensors, out_dir / f"{name}.pt"]
