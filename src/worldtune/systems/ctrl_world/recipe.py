"""Ctrl-World (seed `5-ctrl-world-flexiv.md`): an action-conditioned, multi-view, history-conditioned
world model on Stable Video Diffusion's UNet.

Data come from `worldtune prepare ctrl-world` (the seed's `flexiv_data/` layout, or upstream's
DROID layout): latents of every view stacked along height, per-frame 7-D actions normalised with
`stat.json`'s 1st / 99th percentiles. The UNet and the action encoder train; the VAE and CLIP stay
frozen. `worldtune export` writes `checkpoint-<N>.pt` (keys `unet.*`, `action_encoder.*`, as upstream).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from worldtune.config import ConfigError
from worldtune.data import keys
from worldtune.models.svd_world import SVD_LATENT_SCALE, CtrlWorldModel
from worldtune.systems.ctrl_world import world_edm
from worldtune.systems.ctrl_world.config import CtrlWorldModelConfig, CtrlWorldRunConfig
from worldtune.systems.ctrl_world.dataset import CtrlWorldDataConfig, CtrlWorldDataset, meta_info_path
from worldtune.systems.ctrl_world.view_scales import view_scales
from worldtune.train.recipe import Parts, Recipe
from worldtune.utils.logging import get_logger

log = get_logger()


def build_world_model(m: CtrlWorldModelConfig, views: int = 1) -> CtrlWorldModel:
    """The world model the `model` section describes (the section is the model's config), for `views`
    cameras stacked along height."""
    text_dim = 512 if m.text_cond else None
    common = {"action_dim": m.action_dim, "text_dim": text_dim, "views": views,
              "latent_scale": SVD_LATENT_SCALE if m.latent_space == "svd" else 1.0}
    if m.size == "tiny":
        unet = {"block_out_channels": tuple(m.tiny_block_out_channels),
                "cross_attention_dim": m.tiny_cross_attention_dim, "num_attention_heads": m.tiny_num_attention_heads}
        return CtrlWorldModel.tiny(m, m.latent_channels, action_widths=tuple(m.tiny_action_widths),
                                   unet_kwargs=unet, **common)
    if m.size != "svd":
        raise ConfigError(f"model.size: expected svd or tiny, got {m.size!r}")
    if m.svd_path:
        _require_folder(Path(m.svd_path) / "unet", "model.svd_path", "an SVD folder with unet/config.json")
        return CtrlWorldModel.from_svd(m.svd_path, m, subfolder="unet", **common)
    log.warning("model.svd_path is not set: the SVD UNet starts from random weights")
    return CtrlWorldModel.svd(m, **common)


def _require_folder(folder: Path, key: str, what: str) -> None:
    """A local model folder a key points at, checked before diffusers / transformers look at the hub."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json ({key} must be {what}; nothing is downloaded)")


def load_pretrained(model: torch.nn.Module, path: str) -> None:
    """A Ctrl-World checkpoint (`checkpoint-N.pt`: a state dict of the whole upstream module, whose
    `unet.*` and `action_encoder.*` keys are ours) loaded with strict=False and reported."""
    from worldtune.utils.weights import load_partial

    log.info("model.ckpt_path %s: %s", path, load_partial(model, path).summary())


class CtrlWorldRecipe(Recipe):
    name = "ctrl_world"
    config_class = CtrlWorldRunConfig
    export_name = "checkpoint-{step}"

    def build(self, cfg: CtrlWorldRunConfig) -> Parts:
        parts = self.build_models(cfg)
        parts.train_dataset = CtrlWorldDataset(dataclasses.replace(cfg.data, split="train"))
        parts.val_dataset = _optional(cfg.data, "val")
        return parts

    def build_model(self, cfg: CtrlWorldRunConfig) -> CtrlWorldModel:
        return build_world_model(cfg.model, len(cfg.data.views))

    def build_models(self, cfg: CtrlWorldRunConfig) -> Parts:
        model = build_world_model(cfg.model, len(cfg.data.views))
        if cfg.model.zero_init_output:
            torch.nn.init.zeros_(model.unet.conv_out.weight)
            torch.nn.init.zeros_(model.unet.conv_out.bias)
        if cfg.model.ckpt_path:
            load_pretrained(model, cfg.model.ckpt_path)
        scales = view_scales(cfg)
        if scales is not None:
            model.view_scales.copy_(torch.tensor(scales))
            log.info("view scales (changes magnified per view, %s): %s",
                     "model.view_scales" if cfg.model.view_scales else "normalise_views",
                     ", ".join(f"{s:.3g}" for s in scales))
        frozen = {}
        if cfg.model.text_cond:
            frozen["text_encoder"] = ClipText.load(cfg.model.clip_path)
        return Parts(model=model, train_dataset=None, frozen=frozen, cfg=cfg)

    @staticmethod
    def text_embedding(parts: Parts, texts: list[str]) -> torch.Tensor | None:
        encoder = parts.frozen.get("text_encoder")
        return None if encoder is None else encoder(texts)

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = parts.cfg
        text = self.text_embedding(parts, list(batch[keys.PROMPT]))
        out = world_edm.training_loss(parts.model, cfg.model, cfg.data.num_history, batch[keys.LATENTS].float(),
                                      batch[keys.ACTIONS].float(), text)
        return {"loss": out["loss"], "mse": out["mse"].mean().detach()}

    @torch.no_grad()
    def sample(self, parts: Parts, batch: dict[str, Any]) -> dict[str, Any]:
        """Predict each validation item's future frames from its history, current frame and actions."""
        cfg = parts.cfg
        latents = batch[keys.LATENTS].float()
        history = latents[:, : cfg.data.num_history + 1]
        text = self.text_embedding(parts, list(batch[keys.PROMPT]))
        future = world_edm.sample(parts.model, cfg.model, cfg.data.num_history, history, batch[keys.ACTIONS].float(), text)
        prediction = torch.cat([history, future[:, 1:]], dim=1)
        space = latent_space(cfg)
        return {"video": decode_video(space, prediction), "target": decode_video(space, latents)}

    def export_weights(self, weights: dict[str, torch.Tensor], cfg: CtrlWorldRunConfig) -> dict[str, torch.Tensor]:
        return weights  # already upstream's key layout: unet.*, action_encoder.*


def latent_space(cfg: CtrlWorldRunConfig):
    from worldtune.models.encoders.latent_spaces import build_latent_space

    return build_latent_space(cfg.model.latent_space, svd_path=cfg.model.svd_path,
                              factor=cfg.model.space_to_depth_factor)


def decode_video(space, latents: torch.Tensor) -> torch.Tensor:
    """[B, T, C, h, w] latents -> [B, 3, T, H, W] video in [-1, 1] on the CPU (views stay stacked along
    height)."""
    from worldtune.models.encoders.latent_spaces import decode_frames

    return torch.stack([decode_frames(space, clip) for clip in latents]).permute(0, 2, 1, 3, 4)


class ClipText(torch.nn.Module):
    """The instruction's CLIP text embedding (`text_embeds`, 512-d for clip-vit-base-patch32), cached."""

    def __init__(self, model, tokenizer) -> None:
        super().__init__()
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path: str | None) -> ClipText:
        if not path:
            raise ConfigError("model.clip_path: text_cond needs a local CLIP text model (clip-vit-base-patch32)")
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        _require_folder(Path(path), "model.clip_path", "a local CLIP text model folder (clip-vit-base-patch32)")
        return cls(CLIPTextModelWithProjection.from_pretrained(path, local_files_only=True),
                   AutoTokenizer.from_pretrained(path, local_files_only=True))

    def train(self, mode: bool = True) -> ClipText:
        return super().train(False)  # frozen: stays in eval mode whatever the trainer asks

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            device = next(self.model.parameters()).device
            tokens = self.tokenizer(missing, padding="max_length", truncation=True, return_tensors="pt").to(device)
            for text, embed in zip(missing, self.model(**tokens).text_embeds, strict=True):
                self._cache[text] = embed.float()
        return torch.stack([self._cache[t] for t in texts])


def _optional(data: CtrlWorldDataConfig, split: str) -> CtrlWorldDataset | None:
    """The split's dataset, or None when it has no sample list or an empty one; a malformed list or a
    bad file in it stops the run (it is not quietly dropped)."""
    samples = meta_info_path(data) / f"{split}_sample.json"
    if not samples.is_file() or samples.read_text().strip() in ("", "[]"):
        log.info("no %s split: %s is missing or empty", split, samples)
        return None
    return CtrlWorldDataset(dataclasses.replace(data, split=split))


RECIPE = CtrlWorldRecipe()
