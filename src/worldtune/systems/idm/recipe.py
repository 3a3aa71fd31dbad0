"""The inverse dynamics model (seed `2-vidar-vidarc.md`, `idm.pt`): frame -> robot action through a
learned mask of the pixels that show the robot.

Loss (Eq. 4): `huber(a_hat - a) + lambda * mean|m|`, on actions normalised with the training
split's per-dimension mean / std (stored in the model, so `idm.pt` predicts joint units). Metrics:
`train/loss`, `train/huber_loss`, `train/mask_l1` (mean soft mask), `train/mask_mean` (the share of
pixels the hard mask keeps) and `action_mae/<group>` in joint units; the same under `val/`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from worldtune.data.errors import DataError
from worldtune.models.idm import IDM, IDMConfig, preprocess
from worldtune.systems.idm.config import IdmModelSection, IdmRunConfig
from worldtune.systems.idm.data import IdmFrameDataset, action_statistics, collate_frames
from worldtune.train.recipe import Parts, Recipe
from worldtune.utils.logging import get_logger

log = get_logger()


def build_idm(m: IdmModelSection) -> IDM:
    """The network the `model` section describes (the section is an `IDMConfig`)."""
    return IDM(IDMConfig(**{f.name: getattr(m, f.name) for f in dataclasses.fields(IDMConfig)}))


def idm_losses(model: IDM, m: IdmModelSection, frames: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 4 and the metrics, for frames `[B, 3, H, W]` in [-1, 1] and actions `[B, D]` in joint units."""
    prediction, mask = model(preprocess(frames, m.image_size), return_mask=True, normalized=True)
    huber = F.huber_loss(prediction.float(), model.normalize(actions.float()), delta=m.huber_delta)
    mask_l1 = mask.float().abs().mean()
    errors = (model.denormalize(prediction.float()) - actions.float()).abs().detach()
    metrics = {f"action_mae/{name}": errors[:, dims].mean() for name, dims in m.groups().items()}
    return {"loss": huber + m.mask_lambda * mask_l1, "huber_loss": huber.detach(), "mask_l1": mask_l1.detach(),
            "mask_mean": (mask >= 0.5).float().mean().detach(), **metrics}


class IdmRecipe(Recipe):
    name = "idm"
    config_class = IdmRunConfig
    export_name = "idm"

    def build(self, cfg: IdmRunConfig) -> Parts:
        train = IdmFrameDataset(dataclasses.replace(cfg.data, split="train"), augment=True)
        val = _optional_split(cfg, "val")
        model = self.build_model(cfg)
        mean, std = action_statistics(train.all_actions())
        # Set on every build; a resumed run's checkpoint holds the same values (same train split).
        model.set_normalization(torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32))
        log.info("idm: %d train frames from %d episodes%s; action mean %s std %s", len(train), len(train.episodes),
                 f", {len(val)} val frames" if val else "", mean.round(4).tolist(), std.round(4).tolist())
        return Parts(model=model, train_dataset=train, val_dataset=val, cfg=cfg, collate_fn=collate_frames)

    def build_model(self, cfg: IdmRunConfig) -> IDM:
        return build_idm(cfg.model)

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return idm_losses(parts.model, parts.cfg.model, batch["frames"], batch["actions"])

    def export_payload(self, weights: dict[str, torch.Tensor], cfg: IdmRunConfig) -> dict[str, Any]:
        """`idm.pt`: upstream's `{"model_state_dict": ...}` (the released file's layout; our names are
        upstream's, so the weights go in unchanged) plus what
        labelling needs without the run; every value loads with `torch.load(weights_only=True)`."""
        return {"model_state_dict": weights, "output_dim": cfg.model.output_dim, **idm_settings(cfg)}


def idm_settings(cfg: IdmRunConfig) -> dict[str, Any]:
    """The sizes and input convention an exported IDM needs (plain Python values)."""
    net = {f.name: _plain(getattr(cfg.model, f.name)) for f in dataclasses.fields(IDMConfig)}
    return {"idm_config": net, "image_size": cfg.model.image_size,
            "frame": {"height": cfg.data.height, "width": cfg.data.width, "cameras": list(cfg.data.cameras),
                      "camera_layout": cfg.data.camera_layout, "fps": float(cfg.data.fps)},
            "action_groups": cfg.model.groups()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _optional_split(cfg: IdmRunConfig, split: str) -> IdmFrameDataset | None:
    try:
        return IdmFrameDataset(dataclasses.replace(cfg.data, split=split))
    except DataError:  # a bad file in the split is an error, not a missing split
        raise
    except ValueError as err:  # no episode in that split
        log.info("idm: no %s split (%s)", split, err)
        return None


RECIPE = IdmRecipe()
