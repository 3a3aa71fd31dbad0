"""The recipe contract: what a training system tells the trainer, and nothing more.

A recipe builds its modules and datasets (`build`), turns a batch into losses (`loss`) and, for
validation and `worldtune generate`, produces samples (`sample`). The trainer owns everything else:
devices, sharding, optimisation, checkpoints, logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from worldtune.config import RunConfig

if TYPE_CHECKING:
    from worldtune.train.distributed import DistEnv


@dataclass
class Parts:
    """What `Recipe.build` returns."""

    # Root of everything that can be trained; its state is what checkpoints hold.
    model: nn.Module
    train_dataset: Dataset | None
    val_dataset: Dataset | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    # Frozen helpers (VAE, text encoder, ...): moved to the device, never checkpointed.
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    # Units for FSDP sharding, activation checkpointing and compile (transformer blocks).
    # None: every element of every nn.ModuleList in `model`.
    blocks: list[nn.Module] | None = None
    # Names usable in `trainable_models` besides module paths, e.g. {"lora": "*lora_*"}.
    trainable_aliases: dict[str, str] = field(default_factory=dict)
    # The run config the parts were built from (the recipe's own RunConfig subclass): loss and sample
    # read their typed sections from it (`parts.cfg.model`).
    cfg: RunConfig | None = None
    # Anything else the recipe's loss / sample need (noise schedulers, statistics, ...).
    extras: dict[str, Any] = field(default_factory=dict)
    # Called by the trainer right after sharding (`prepare_model`), on every rank: fills a model
    # that `build` left on `meta` under torchrun, each rank reading only its own shards (so no rank
    # ever holds the full weights). None: the model came out of `build` with its weights.
    load_after_shard: Callable[[nn.Module, DistEnv], None] | None = None


class Recipe:
    """Base class of recipes. Subclasses set `name`, `config_class` and implement build / loss."""

    name: str = ""
    config_class: type[RunConfig] = RunConfig
    # `worldtune export` file stem of the recipe's own artefact (e.g. "vidar" -> vidar.pt); None:
    # the generic export of the trainable weights as model.safetensors / model.pt.
    export_name: str | None = None

    def build(self, cfg: RunConfig) -> Parts:
        raise NotImplementedError

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """The trainable root alone, without data or frozen helpers: what `load_run` puts a
        checkpoint's weights into. The default builds everything and keeps the model."""
        return self.build(cfg).model

    def build_for_inspect(self, cfg: RunConfig) -> Parts:
        """What `worldtune inspect` reports on: the datasets as training builds them, the modules
        possibly on `meta` (only their parameter counts are read). Recipes with large models
        build them on meta here; the default is `build`."""
        return self.build(cfg)

    def loss(self, parts: Parts, batch: Any) -> dict[str, torch.Tensor]:
        """Returns {"loss": scalar tensor, other metric name: scalar tensor, ...}."""
        raise NotImplementedError

    def sample(self, parts: Parts, batch: Any) -> dict[str, Any] | None:
        """Validation samples: {"video": [B,C,T,H,W] in [-1,1], "target": same (optional),
        any scalar metrics}. None when the recipe has nothing to sample."""
        return None

    def describe_data(self, parts: Parts) -> str | None:
        """Extra lines for `worldtune inspect` (files, splits, sample statistics)."""
        return None

    def on_train_end(self, parts: Parts, trainer: Any) -> dict[str, float] | None:
        """Called on every rank after the last step; returned metrics are logged (e.g. test_mode
        PASS / FAIL). `trainer.cfg`, `trainer.model`, `trainer.env` are available."""
        return None

    def after_update(self, parts: Parts) -> dict[str, float] | None:
        """Called on every rank after each optimiser step that was applied (not after skipped ones);
        returned values are logged as `train/<name>`. For updates that are not gradients (e.g. LAM's
        dead-code restart)."""
        return None

    def export_weights(self, weights: dict[str, torch.Tensor], cfg: RunConfig) -> dict[str, torch.Tensor]:
        """The exported artefact from all model weights of a checkpoint (only with export_name)."""
        return weights

    def export_payload(self, weights: dict[str, torch.Tensor], cfg: RunConfig) -> dict[str, Any] | None:
        """What `<export_name>.pt` holds when it is not the plain state dict (e.g. the IDM's
        `{"model_state_dict": ..., "output_dim": ...}`, the released file's layout); tensors, numbers,
        strings, lists and dicts only, so that it loads with `weights_only=True`. None: the weights."""
        return None

    def export_binaries(self, weights: dict[str, torch.Tensor], cfg: RunConfig) -> dict[str, dict]:
        """More `torch.save` files beside the export ({relative path: payload}), e.g. the original
        system's own files (Sim-Physics' `final/motion_head.pth`); `weights` are export_weights'."""
        return {}

    def export_files(self, cfg: RunConfig) -> dict[str, str]:
        """Text files written beside the exported weights ({file name: contents}), e.g. the
        model's config.json, so that the export loads (and converts) without the run."""
        return {}

    def batch_size_of(self, batch: Any) -> int:
        """Number of samples in a batch (for samples/s)."""
        if isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    return int(value.shape[0])
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            return int(batch[0].shape[0])
        return 1
