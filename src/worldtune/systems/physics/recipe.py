"""Sim-Physics (seed 4): motion and depth heads on Wan2.2-TI2V, then LoRA with the heads.

Stage 1 (`trainable_models: heads`): the DiT frozen, the video loss off; the heads learn motion and
depth from the last block's hidden states. Stage 2 (`lora,heads`): LoRA on the DiT with the heads,
the video flow-matching loss on, so the video model itself learns the physics. The first frame is
TI2V's clean conditioning frame in training as at inference (the original noised it in training).
Loss: video x `video_loss_weight` (when on) + `motion_loss_weight` x motion + `depth_loss_weight` x
depth + `warp_loss_weight` x warp.
"""

from __future__ import annotations

from typing import Any

import torch

from worldtune.config import ConfigError
from worldtune.data.formats.sim_physics import SimPhysicsDataset, video_to_unit_range
from worldtune.diffusion.flow_matching import (
    drop_conditions,
    flow_matching_loss,
    ti2v_loss_mask,
    ti2v_noisy_latents,
    ti2v_token_timesteps,
    to_timestep,
)
from worldtune.models.wan.physics import WanPhysicsModel
from worldtune.systems.physics.config import PhysicsRunConfig
from worldtune.systems.physics.losses import (
    depth_loss,
    depth_metrics,
    end_point_error,
    motion_loss,
    moving_pixels,
    upsample,
    warp_loss,
)
from worldtune.systems.wan_parts import (
    build_dit,
    build_text_encoder,
    build_vae,
    dit_config,
    dit_loader,
    pad_text,
)
from worldtune.train.recipe import Parts, Recipe

HEADS = ("motion_head.", "depth_head.")


class PhysicsRecipe(Recipe):
    name = "physics"
    config_class = PhysicsRunConfig
    export_name = "physics"

    # ------------------------------------------------------------------ build

    def build(self, cfg: PhysicsRunConfig) -> Parts:
        import dataclasses

        parts = self.build_models(cfg)
        parts.train_dataset = SimPhysicsDataset(dataclasses.replace(cfg.data, split="train"))
        parts.val_dataset = self.val_dataset(cfg)
        return parts

    @staticmethod
    def val_dataset(cfg: PhysicsRunConfig):
        import dataclasses

        from worldtune.data.errors import DataError

        try:
            return SimPhysicsDataset(dataclasses.replace(cfg.data, split="val"))
        except DataError:
            return None  # no held-out scene: validation samples the training set

    def build_models(self, cfg: PhysicsRunConfig, dit_weights=None, device: str | None = None) -> Parts:
        wan = dit_config(cfg.model)
        if wan.model_type != "ti2v":
            raise ConfigError(f"model.size: Sim-Physics extends a TI2V model (wan2.2-ti2v-5b), got {wan.model_type!r}")
        frozen, extras = {}, {"text_len": wan.text_len, "patch": wan.patch_size}
        if device != "meta":
            vae = build_vae(cfg.model, wan)
            if vae.temporal_stride != cfg.data.target_stride:
                raise ConfigError(f"data.target_stride {cfg.data.target_stride} must be the VAE's frames per latent "
                                  f"frame ({vae.temporal_stride}): the heads predict one target per latent frame")
            frozen = {"vae": vae, "text_encoder": build_text_encoder(cfg.model, wan)}
            extras["null_text"] = frozen["text_encoder"].encode([cfg.model.sampling.negative_prompt])[0]
        model_cfg, dit_weights = original_pt_dir(cfg, dit_weights)
        kinds = cfg.model.head_kinds()
        model = build_dit(model_cfg, device=device, weights=dit_weights,
                          make=lambda wan_config: WanPhysicsModel(wan_config, kinds))
        return Parts(model=model, train_dataset=None, frozen=frozen, trainable_aliases=self.trainable_aliases(cfg),
                     load_after_shard=dit_loader(cfg), cfg=cfg, extras=extras)

    def build_for_inspect(self, cfg: PhysicsRunConfig) -> Parts:
        import dataclasses

        parts = self.build_models(cfg, device="meta")
        parts.train_dataset = SimPhysicsDataset(dataclasses.replace(cfg.data, split="train"))
        return parts

    @staticmethod
    def trainable_aliases(cfg: PhysicsRunConfig) -> dict[str, str]:
        return {"heads": "motion_head,depth_head", "lora": "*lora_*",
                "dit": "patch_embedding,text_embedding,time_embedding,time_projection,blocks,head", "auto": "heads"}

    # ------------------------------------------------------------------ training

    def encode(self, parts: Parts, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        device = parts.model.patch_embedding.weight.device
        latents = parts.frozen["vae"].encode(video_to_unit_range(batch["video"].to(device))).float()
        text = parts.frozen["text_encoder"].encode(list(batch["prompt"]))
        return latents, pad_text([t.to(device) for t in text], parts.extras["text_len"])

    def forward(self, parts: Parts, batch: dict[str, Any], sigma: torch.Tensor | None = None, drop_text: bool = True):
        """(x0, noise, PhysicsOutput) at `sigma` (default: drawn as in training)."""
        cfg = parts.cfg.model
        x0, text = self.encode(parts, batch)
        if drop_text:
            text, _ = drop_conditions(text, self._null(parts, text), cfg.cfg_prob)
        if sigma is None:
            sigma = cfg.timestep.sample(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        noisy = ti2v_noisy_latents(x0, noise, sigma)
        timesteps = ti2v_token_timesteps(to_timestep(sigma), x0.shape, parts.extras["patch"])
        return x0, noise, parts.model(noisy, timesteps, text)

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = parts.cfg.loss
        video_on = self.video_loss_on(parts)
        batch_size = batch["video"].shape[0]
        sigma = parts.cfg.model.timestep.sample(batch_size, device=batch["video"].device)
        if not video_on:  # only the heads learn: draw the noise they learn from
            sigma = sigma * cfg.heads_max_sigma
        x0, noise, out = self.forward(parts, batch, sigma=sigma)
        if not parts.cfg.model.full_res_heads:
            batch = at_latent_grid(batch, tuple(out.motion.shape[-2:]))
        motion, log_depth = self.heads_at_targets(parts, out, batch)
        seen = sigma <= cfg.heads_max_sigma  # [B]: the samples the head losses count
        if not bool(seen.all()):
            batch = {**batch, "motion_valid": batch["motion_valid"] & seen[:, None],
                     "depth_valid": batch["depth_valid"] & seen.view(-1, 1, 1, 1, 1)}
        terms = {
            "motion_loss": motion_loss(motion, batch["motion"], batch["motion_valid"], cfg.motion_loss,
                                       cfg.motion_balanced),
            "depth_loss": depth_loss(log_depth, batch["depth"], batch["depth_valid"], cfg.depth_loss, cfg.silog_lambda),
            "warp_loss": warp_loss(log_depth, batch["depth"], batch["depth_valid"], batch["motion"]),
        }
        total = (cfg.motion_loss_weight * terms["motion_loss"] + cfg.depth_loss_weight * terms["depth_loss"]
                 + cfg.warp_loss_weight * terms["warp_loss"])
        mse = flow_matching_loss(out.sample, x0, noise, mask=ti2v_loss_mask(x0.shape, device=x0.device))
        if video_on:
            total = total + cfg.video_loss_weight * mse
        metrics = {k: v.detach() for k, v in terms.items()}
        metrics["motion_epe"] = end_point_error(motion.detach(), batch["motion"], batch["motion_valid"])
        return {"loss": total, "mse_loss": mse.detach(), **metrics}

    @staticmethod
    def video_loss_on(parts: Parts) -> bool:
        setting = parts.cfg.loss.video_loss
        if setting != "auto":
            return setting == "on"
        return any(p.requires_grad for n, p in parts.model.named_parameters() if not n.startswith(HEADS))

    @staticmethod
    def heads_at_targets(parts: Parts, out, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' motion and log depth at the targets' frames and size (`full_res_heads`; else
        the batch's targets were pooled to the latent grid by `at_latent_grid`)."""
        target = batch["motion"]
        if out.motion.shape[2] != target.shape[2]:
            raise ValueError(f"the heads give {out.motion.shape[2]} latent frames, the data {target.shape[2]} targets: "
                             "data.num_frames and data.target_stride must match the VAE")
        size = tuple(target.shape[-2:])
        return upsample(out.motion, size), upsample(out.log_depth, size)

    @staticmethod
    def _null(parts: Parts, like: torch.Tensor) -> torch.Tensor:
        return pad_text([parts.extras["null_text"].to(like.device)], like.shape[1])[0]

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def sample(self, parts: Parts, batch: dict[str, Any]) -> dict[str, Any]:
        """The heads at `model.eval_timestep` against the targets and the baselines (zero motion, each
        clip's median depth), and their pictures: true | predicted (flow colours | depth)."""
        from worldtune.systems.physics.visualise import physics_panels

        sigma = torch.full((batch["video"].shape[0],), parts.cfg.model.eval_timestep / 1000.0,
                           device=batch["video"].device)
        _, _, out = self.forward(parts, batch, sigma=sigma, drop_text=False)
        if not parts.cfg.model.full_res_heads:
            batch = at_latent_grid(batch, tuple(out.motion.shape[-2:]))
        motion, log_depth = self.heads_at_targets(parts, out, batch)
        metrics = head_metrics(motion, log_depth, batch)
        return {"video": physics_panels(motion, log_depth.exp()), "target": physics_panels(batch["motion"], batch["depth"]),
                **metrics}

    # ------------------------------------------------------------------ export

    def export_payload(self, weights: dict[str, torch.Tensor], cfg: PhysicsRunConfig) -> dict[str, Any]:
        from worldtune.config import to_yaml

        return {"state_dict": weights, "config_yaml": to_yaml(cfg)}

    def export_weights(self, weights: dict[str, torch.Tensor], cfg: PhysicsRunConfig) -> dict[str, torch.Tensor]:
        """physics.safetensors: the heads and the LoRA adapters (or what else trained)."""
        keep = [k for k in weights if k.startswith(HEADS) or ".lora_" in k]
        return {k: weights[k] for k in keep}

    def export_binaries(self, weights: dict[str, torch.Tensor], cfg: PhysicsRunConfig) -> dict[str, dict]:
        """The original's files, under `final/`: `motion_head.pth`, `depth_head.pth`, `lora_weights.pth`."""
        from worldtune.models.wan.physics import to_original_motion_head

        patch = dit_config(cfg.model).patch_size
        motion = {k[len("motion_head."):]: v for k, v in weights.items() if k.startswith("motion_head.")}
        files = {"final/motion_head.pth": to_original_motion_head(motion, patch),
                 "final/depth_head.pth": {k[len("depth_head."):]: v for k, v in weights.items() if k.startswith("depth_head.")}}
        lora = {k: v for k, v in weights.items() if ".lora_" in k}
        if lora:
            files["final/lora_weights.pth"] = lora
        return files


def original_pt_dir(cfg: PhysicsRunConfig, weights):
    """`model.pt_dir` naming the original's `final/` folder (motion_head.pth, depth_head.pth,
    lora_weights.pth): read as our weights, applied as the DiT's `pt_dir` would be (under `weights`)."""
    import dataclasses
    from pathlib import Path

    pt_dir = cfg.model.pt_dir
    if not pt_dir or not (Path(pt_dir) / "motion_head.pth").is_file():
        return cfg.model, weights
    from worldtune.models.wan.physics import read_original_files

    original = read_original_files(pt_dir, dit_config(cfg.model).patch_size)
    merged = {**original, **(weights if isinstance(weights, dict) else {})}
    if weights is not None and not isinstance(weights, dict):
        raise ConfigError("model.pt_dir is the original's folder: pass further weights as a state dict")
    return dataclasses.replace(cfg.model, pt_dir=None), merged


def at_latent_grid(batch: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """The targets pooled to the heads' grid: motion averaged per cell (still in frame pixels),
    depth the geometric mean of each cell's valid pixels (valid where any is)."""
    import torch.nn.functional as F

    def pool(x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape[:3]
        return F.adaptive_avg_pool2d(x.flatten(0, 2), size).view(b, c, t, *size)

    valid = batch["depth_valid"].float()
    log_sum = pool(torch.where(batch["depth_valid"], batch["depth"].clamp(min=1e-6).log(), torch.zeros_like(valid)))
    share = pool(valid)
    depth = torch.where(share > 0, (log_sum / share.clamp(min=1e-6)).exp(), torch.zeros_like(share))
    return {**batch, "motion": pool(batch["motion"]), "depth": depth, "depth_valid": share > 0}


def head_metrics(motion: torch.Tensor, log_depth: torch.Tensor, batch: dict[str, Any]) -> dict[str, float]:
    """Motion EPE over all pixels, and (as flow benchmarks split it) over the moving and the still
    ones, each beside predicting no motion (whose EPE on still pixels is 0); depth beside each
    clip's median. A split with no pixel in the batch is left out."""
    valid, target = batch["motion_valid"], batch["motion"]
    moving = moving_pixels(target)
    out = {}
    for suffix, pixels in (("", None), ("_moving", moving), ("_still", ~moving)):
        if pixels is not None and not bool((pixels & valid[:, None, :, None, None]).any()):
            continue
        out[f"motion/epe{suffix}"] = float(end_point_error(motion, target, valid, pixels))
        if suffix != "_still":
            out[f"motion/zero_epe{suffix}"] = float(end_point_error(torch.zeros_like(motion), target, valid, pixels))
    out.update({f"depth/{k}": v for k, v in depth_metrics(log_depth, batch["depth"], batch["depth_valid"]).items()})
    return out


RECIPE = PhysicsRecipe()
