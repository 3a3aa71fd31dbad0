"""Vidar stage 1: fine-tune Wan2.2-TI2V on robot episodes with the flow-matching loss.

Seed `2-vidar-vidarc.md`: the DiT trains, T5 and the VAE stay frozen; the episode's first frame is
the TI2V image condition (its latent stays clean, gets timestep 0 and is left out of the loss);
the prompt is replaced by the empty prompt 10% of the time for classifier-free guidance. Training
reads precomputed latents when `data.cache_dir` is set (`worldtune prepare cache CONFIG`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from worldtune.config import ConfigError
from worldtune.data.formats.episodes import EpisodeClipDataset, collate_episodes
from worldtune.diffusion.flow_matching import (
    drop_conditions,
    flow_matching_loss,
    ti2v_loss_mask,
    ti2v_noisy_latents,
    ti2v_token_timesteps,
    to_timestep,
)
from worldtune.systems.vidar.config import VidarConfig
from worldtune.systems.wan_parts import (
    build_dit,
    build_text_encoder,
    build_vae,
    dit_config,
    dit_export_files,
    dit_loader,
    pad_text,
)
from worldtune.train.recipe import Parts, Recipe


class VidarRecipe(Recipe):
    name = "vidar"
    config_class = VidarConfig
    export_name = "vidar"
    model_classes: tuple[str, ...] = ("WanModel",)  # the seed's model.model_class values this recipe trains

    # ------------------------------------------------------------------ build

    def build(self, cfg: VidarConfig) -> Parts:
        cache = open_cache(cfg) if cfg.data.cache_dir else None
        parts = self.build_models(cfg, with_text_encoder=cache is None)
        if cache is not None:
            parts.extras["null_text"] = cache.shared()["null_text"]
        parts.train_dataset = self.dataset(cfg, "train", cache)
        parts.val_dataset = self.dataset(cfg, "val", cache, required=False)
        return parts

    def build_models(self, cfg: VidarConfig, with_text_encoder: bool = True, dit_weights=None) -> Parts:
        """DiT, VAE and (optionally) T5, without data: what training and generation share.
        `dit_weights` (a path or state dict) go over the configured ones (`generate --weights`)."""
        wan = dit_config(cfg.model)
        unfreezable = sorted(set(cfg.train.freeze) - {"t5", "text_encoder", "vae"})
        if unfreezable:
            raise ConfigError(f"train.freeze: {unfreezable} are not frozen modules of recipe {self.name} (t5, vae); "
                              "choose what trains with train.trainable_models")
        if cfg.model.model_class not in self.model_classes:
            raise ConfigError(f"model.model_class {cfg.model.model_class!r}: recipe vidar trains WanModel "
                              "(WanModelCausal is stage 2: recipe vidarc)")
        if wan.model_type != "ti2v":
            raise ConfigError(f"model.size: Vidar fine-tunes a TI2V model, got model_type {wan.model_type!r}")
        vae = build_vae(cfg.model, wan)
        self._check_geometry(cfg, wan, vae)
        frozen = {"vae": vae}
        extras = {"text_len": wan.text_len, "patch": wan.patch_size}
        if with_text_encoder:
            frozen["text_encoder"] = text = build_text_encoder(cfg.model, wan)
            extras["null_text"] = text.encode([cfg.model.sampling.negative_prompt])[0]
        return Parts(
            model=build_dit(cfg.model, weights=dit_weights),
            load_after_shard=dit_loader(cfg),
            train_dataset=None,
            collate_fn=collate_episodes,
            frozen=frozen,
            trainable_aliases=self.trainable_aliases(cfg),
            cfg=cfg,
            extras=extras,
        )

    @staticmethod
    def trainable_aliases(cfg: VidarConfig) -> dict[str, str]:
        # Aliases expand once: "auto" names the glob itself, not the "lora" alias.
        lora = "*lora_*"
        return {"lora": lora, "dit": "all", "auto": lora if cfg.model.lora_rank else "all"}

    def build_for_inspect(self, cfg: VidarConfig) -> Parts:
        """`worldtune inspect`: the DiT on meta (its parameter counts) and the datasets; no encoder."""
        cache = open_cache(cfg) if cfg.data.cache_dir else None
        return Parts(model=build_dit(cfg.model, device="meta"), train_dataset=self.dataset(cfg, "train", cache),
                     val_dataset=self.dataset(cfg, "val", cache, required=False),
                     trainable_aliases=self.trainable_aliases(cfg), cfg=cfg)

    @staticmethod
    def _check_geometry(cfg: VidarConfig, wan, vae) -> None:
        multiple = vae.spatial_stride * wan.patch_size[1]
        if cfg.data.height % multiple or cfg.data.width % multiple:
            raise ConfigError(f"data.height / data.width: {cfg.data.height}x{cfg.data.width} must be multiples of "
                              f"{multiple} (VAE stride {vae.spatial_stride} x patch {wan.patch_size[1]})")

    def dataset(self, cfg: VidarConfig, split: str, cache=None, required: bool = True):
        try:  # the data section is an EpisodeDataConfig (plus the cache's settings)
            episodes = EpisodeClipDataset(dataclasses.replace(cfg.data, split=split))
        except ValueError:
            if required:
                raise
            return None
        if len(episodes) == 0:
            return None if not required else episodes
        if cache is None:
            return episodes
        from worldtune.data.cache import CachedDataset

        return CachedDataset(episodes, cache)

    # ------------------------------------------------------------------ training

    def encode(self, parts: Parts, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean latents [B, C, T', h, w], prompt embeddings [B, text_len, dim]) from cache or encoders."""
        device = parts.model.patch_embedding.weight.device
        if "latents" in batch:
            latents, text = batch["latents"].float(), list(batch["text_emb"])
        else:
            latents = parts.frozen["vae"].encode(batch["video"]).float()
            text = parts.frozen["text_encoder"].encode(list(batch["prompt"]))
        return latents.to(device), pad_text([t.to(device) for t in text], parts.extras["text_len"])

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model_cfg = parts.cfg.model
        x0, text = self.encode(parts, batch)
        text, _ = drop_conditions(text, self._null(parts, text), model_cfg.cfg_prob)
        sigma = model_cfg.timestep.sample(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        noisy = ti2v_noisy_latents(x0, noise, sigma)  # latent frame 0 stays the clean image latent
        timesteps = ti2v_token_timesteps(to_timestep(sigma), x0.shape, parts.extras["patch"])
        velocity = parts.model(noisy, timesteps, text)
        mse = flow_matching_loss(velocity, x0, noise, mask=ti2v_loss_mask(x0.shape, device=x0.device))
        return {"loss": mse, "mse_loss": mse.detach()}

    @staticmethod
    def _null(parts: Parts, like: torch.Tensor) -> torch.Tensor:
        return pad_text([parts.extras["null_text"].to(like.device)], like.shape[1])[0]

    def export_weights(self, weights: dict[str, torch.Tensor], cfg: VidarConfig) -> dict[str, torch.Tensor]:
        """vidar.pt: the DiT state dict in original Wan names (LoRA merged into the base weights)."""
        from worldtune.models.lora import merge_lora_weights

        if cfg.model.lora_rank:
            return merge_lora_weights(weights, cfg.model.lora.alpha / cfg.model.lora_rank)
        return weights

    def export_files(self, cfg: VidarConfig) -> dict[str, str]:
        """config.json of the DiT beside vidar.pt, so that `worldtune convert` and `load_wan` read it."""
        return dit_export_files(cfg.model)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, parts: Parts, batch: dict[str, Any]) -> dict[str, Any]:
        """Generate each item's clip from its first frame and prompt; ground truth beside it."""
        x0, text = self.encode(parts, batch)
        video = generate_latents(parts, text, x0[:, :, :1], x0.shape)
        vae = parts.frozen["vae"]
        target = batch["video"] if "video" in batch else vae.decode(x0)
        return {"video": vae.decode(video), "target": target}


def generate_latents(parts: Parts, text: torch.Tensor, first_frame_latent: torch.Tensor,
                     shape: tuple[int, ...], generator: torch.Generator | None = None,
                     progress: bool = False) -> torch.Tensor:
    """TI2V sampling with classifier-free guidance from the configured scheduler."""
    from worldtune.diffusion.samplers import make_scheduler, sample_flow

    sampling = parts.cfg.model.sampling
    device = text.device
    noise = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
    uncond = VidarRecipe._null(parts, text).expand_as(text) if sampling.guidance_scale != 1.0 else None
    return sample_flow(
        lambda x, t, c: parts.model(x, t, c),
        noise,
        scheduler=make_scheduler(sampling.scheduler, sampling.shift),
        num_steps=sampling.num_inference_steps,
        cond=text,
        uncond=uncond,
        guidance_scale=sampling.guidance_scale,
        first_frame_latent=first_frame_latent,
        patch_size=parts.extras["patch"],
        progress=progress,
    )


def cache_settings(cfg: VidarConfig, wan) -> dict[str, Any]:
    """What the cached tensors depend on besides the clip itself (checked when the cache opens)."""
    settings = {"vae": cfg.model.vae or cfg.model.ckpt_dir, "text_encoder": cfg.model.text_encoder or cfg.model.ckpt_dir,
                "encoder_dtype": cfg.model.encoder_dtype, "text_len": wan.text_len,
                "negative_prompt": cfg.model.sampling.negative_prompt}
    if cfg.loss.embodiment_aware:  # Vidarc's Eq. 7: the IDM's mask is cached beside the latents
        settings["idm_mask"] = str(cfg.loss.idm_path)
    return settings


def open_cache(cfg: VidarConfig):
    from worldtune.data.cache import LatentCache

    return LatentCache(cfg.data.cache_dir, settings=cache_settings(cfg, dit_config(cfg.model)))


RECIPE = VidarRecipe()
