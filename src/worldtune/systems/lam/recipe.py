"""VVAE latent action model (seed `3-vvae-lam.md`): discrete actions that explain the change
between consecutive video-VAE latent frames.

Every sequence of `sequence_length` latent frames gives `sequence_length - 1` transitions; the
model encodes each (x_t, x_t+1) pair into 3 codes and predicts x_t+1 from x_t and the codes. The
loss is MSE (MAE logged) plus the VQ losses; with `model.rollout_horizon` >= 2 the decoder also runs
on its own predictions (`train/rollout_loss`). `train.test_mode: true` overfits one batch and
reports PASS / FAIL against the seed's criteria (MSE < 0.01, MAE < 0.05).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from worldtune.config import ConfigError
from worldtune.models.lam import VVAELatentActionVQVAE
from worldtune.systems.lam.config import LamRunConfig
from worldtune.systems.lam.latent_h5 import EmptySplitError, LatentH5Config, LatentSequenceDataset
from worldtune.systems.lam.restart import DeadCodeRestart
from worldtune.train.recipe import Parts, Recipe
from worldtune.utils.logging import get_logger

log = get_logger()

# The seed's overfit criteria.
PASS_MSE, PASS_MAE = 0.01, 0.05


def transitions(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, S, H, W] -> (x_t, x_t+1), each [B*(S-1), C, H, W], sequence-major."""
    frames = latents.permute(0, 2, 1, 3, 4)  # [B, S, C, H, W]
    return frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1)


class LamRecipe(Recipe):
    name = "lam"
    config_class = LamRunConfig

    def build(self, cfg: LamRunConfig) -> Parts:
        model_cfg = cfg.model
        if cfg.data.channels != model_cfg.in_channels:
            raise ConfigError(f"model.in_channels {model_cfg.in_channels} != data.channels {cfg.data.channels}")
        model = self.build_model(cfg)
        # Dead codes restart after each optimiser step, the same on one rank or many (lam_restart).
        threshold = model_cfg.dead_code_threshold
        model.quantizer.dead_code_threshold = 0
        restart = DeadCodeRestart(threshold) if threshold else None
        train = LatentSequenceDataset(dataclasses.replace(cfg.data, split="train"))
        val = _optional_split(cfg.data, "val")
        for dataset in filter(None, (train, val)):  # a mismatch names the file and model.latent_size
            dataset.check_model_frames(model_cfg.in_channels, model_cfg.latent_size)
        return Parts(model=model, train_dataset=train, val_dataset=val, cfg=cfg,
                     extras={"restart": restart})

    def build_model(self, cfg: LamRunConfig) -> VVAELatentActionVQVAE:
        return VVAELatentActionVQVAE(cfg.model)  # the section is a LamConfig

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        latents = batch["latents"].float()
        x_t, x_next = transitions(latents)
        out = parts.model(x_t, x_next)
        restart = parts.extras.get("restart")
        if restart is not None and parts.model.training:
            restart.record(out.indices, out.encoded, parts.model.quantizer.num_embeddings)
        mse = F.mse_loss(out.prediction, x_next)
        metrics = {
            "mse_loss": mse, "mae_loss": F.l1_loss(out.prediction, x_next).detach(),
            "vq_loss": out.vq_loss.detach(), "codebook_loss": out.codebook_loss.detach(),
            "commitment_loss": out.commitment_loss.detach(), "codebook_usage": out.usage,
            "perplexity": out.perplexity,
        }
        loss = mse + out.vq_loss
        horizon = parts.cfg.model.rollout_horizon
        if horizon >= 2:
            rollout = self.rollout_loss(parts.model, latents, out, horizon)
            loss = loss + parts.cfg.model.rollout_weight * rollout
            metrics["rollout_loss"] = rollout.detach()
        return {"loss": loss, **metrics}

    @staticmethod
    def rollout_loss(model, latents: torch.Tensor, out, horizon: int) -> torch.Tensor:
        """The decoder fed its own predictions for horizon-1 more steps, with the encoder's codes
        of the true transitions: mean MSE of those multi-step predictions."""
        b, _, s = latents.shape[:3]
        frames = latents.permute(0, 2, 1, 3, 4)
        pred = out.prediction.unflatten(0, (b, s - 1))
        codes = out.quantised.unflatten(0, (b, s - 1))
        losses = []
        for k in range(1, min(horizon, s - 1)):
            pred = model.decode(pred[:, :-1].flatten(0, 1), codes[:, k:].flatten(0, 1)).unflatten(0, (b, s - 1 - k))
            losses.append(F.mse_loss(pred, frames[:, k + 1:]))
        return torch.stack(losses).mean() if losses else latents.new_zeros(())

    def after_update(self, parts: Parts) -> dict[str, float] | None:
        restart = parts.extras.get("restart")
        if restart is None:
            return None
        return {"restarted_codes": float(restart.apply(parts.model.quantizer))}

    def describe_data(self, parts: Parts) -> str | None:
        from worldtune.systems.lam.latent_h5 import describe

        return describe(parts.train_dataset)

    def on_train_end(self, parts: Parts, trainer: Any) -> dict[str, float] | None:
        if not trainer.cfg.train.test_mode:
            return None
        return overfit_verdict(parts, trainer)


@torch.no_grad()
def overfit_verdict(parts: Parts, trainer: Any) -> dict[str, float]:
    """The seed's overfit check on the fixed batch: PASS when MSE < 0.01 and MAE < 0.05."""
    from worldtune.train.data import move_to_device
    from worldtune.train.distributed import all_reduce_mean

    cfg, env = trainer.cfg, trainer.env
    count = min(len(parts.train_dataset), cfg.train.batch_size * env.world_size)
    mine = [parts.train_dataset[i] for i in range(env.rank, count, env.world_size)]
    batch = move_to_device(torch.utils.data.default_collate(mine), env.device)
    trainer.model.eval()
    x_t, x_next = transitions(batch["latents"].float())
    prediction = trainer.model(x_t, x_next).prediction
    values = torch.stack([F.mse_loss(prediction, x_next), F.l1_loss(prediction, x_next)])
    mse, mae = all_reduce_mean(values, env).tolist()
    passed = mse < PASS_MSE and mae < PASS_MAE
    if env.is_main:
        verdict = "PASS" if passed else "FAIL"
        print(f"test_mode {verdict}: MSE {mse:.5f} (< {PASS_MSE}) MAE {mae:.5f} (< {PASS_MAE}) "
              f"after {trainer.progress.step} steps", flush=True)
    return {"test_mode/mse_loss": mse, "test_mode/mae_loss": mae, "test_mode/pass": float(passed)}


def _optional_split(data: LatentH5Config, split: str) -> LatentSequenceDataset | None:
    try:
        dataset = LatentSequenceDataset(dataclasses.replace(data, split=split))
    except EmptySplitError as err:  # a bad file in the split is an error, not a missing split
        log.info("no %s split: %s", split, err)
        return None
    return dataset if len(dataset) else None


RECIPE = LamRecipe()
