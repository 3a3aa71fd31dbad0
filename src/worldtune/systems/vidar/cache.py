"""`worldtune prepare cache`: every clip's VAE latents and prompt embeddings, encoded once (and,
for Vidarc with `loss.embodiment_aware`, the IDM's mask on the latent grid, so the IDM runs once
per clip rather than at every step)."""

from __future__ import annotations

import torch

from worldtune.config import ConfigError
from worldtune.data.cache import CacheStats, build_cache
from worldtune.systems.vidar.config import VidarConfig
from worldtune.systems.vidar.recipe import cache_settings
from worldtune.systems.wan_parts import dit_config
from worldtune.train.distributed import DTYPES
from worldtune.utils.device import default_device


def prepare_cache(cfg: VidarConfig, progress: bool = True) -> CacheStats:
    """Encode every clip of both splits once: VAE latents + prompt embeddings, resumable."""
    if not cfg.data.cache_dir:
        raise ConfigError("data.cache_dir: set the directory the cache is written to")
    if cfg.data.clip_sampling != "fixed":
        raise ConfigError("data.clip_sampling: only fixed clips can be cached (random starts differ every epoch)")
    from worldtune.systems import get_recipe

    recipe = get_recipe(cfg.recipe)  # vidar, or vidarc (whose build also loads the IDM)
    parts = recipe.build_models(cfg)
    device = default_device()
    vae, text = parts.frozen["vae"].to(device), parts.frozen["text_encoder"].to(device)
    idm = parts.frozen["idm"].to(device).eval() if "idm" in parts.frozen else None
    datasets = [d for d in (recipe.dataset(cfg, "train"), recipe.dataset(cfg, "val", required=False)) if d]
    where = [(d, i) for d in datasets for i in range(len(d))]
    keys = [d.clip_key(i) for d, i in where]

    def compute(indices: list[int]) -> list[dict[str, torch.Tensor]]:
        items = [where[i][0][where[i][1]] for i in indices]
        video = torch.stack([item["video"] for item in items]).to(device, DTYPES[cfg.model.encoder_dtype])
        latents = vae.encode(video).float().cpu()
        embeds = text.encode([item["prompt"] for item in items])
        out = [{"latents": latents[j], "text_emb": embeds[j].float().cpu()} for j in range(len(items))]
        if idm is not None:
            from worldtune.models.idm import latent_mask

            masks = latent_mask(idm, video.float(), tuple(latents.shape[2:]), vae.temporal_stride,
                                parts.extras["idm_image_size"]).cpu()
            for j, entry in enumerate(out):
                entry["idm_mask"] = masks[j]
        return out

    shared = {"null_text": parts.extras["null_text"].float().cpu()}
    return build_cache(cfg.data.cache_dir, keys, compute, cache_settings(cfg, dit_config(cfg.model)),
                       batch_size=cfg.data.cache_batch_size, shared=shared, progress=progress,
                       item_settings=datasets[0].clip_settings())  # a miss then names the setting that changed
