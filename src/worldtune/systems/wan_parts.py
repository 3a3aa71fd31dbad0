"""What the Wan-based recipes (Vidar, Vidarc, VACE-E, Sim-Physics) share: config sections and the
building of the DiT and its frozen encoders from a base-model folder, or tiny ones for tests.

A base folder is what Wan releases ship (`Wan2.2-TI2V-5B/`: DiT shards + config.json, T5, VAE) or
its diffusers counterpart (`transformer/`, `text_encoder/`, `tokenizer/`, `vae/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from worldtune.diffusion.flow_matching import TimestepSampler
from worldtune.models.lora import LoraSettings, add_lora
from worldtune.models.wan.checkpoints import load_into
from worldtune.models.wan.factory import build_wan, load_wan
from worldtune.models.wan.sizes import WanConfig, wan_config
from worldtune.train.distributed import DTYPES
from worldtune.utils.logging import get_logger

log = get_logger()

TINY = "tiny"  # encoder spec for in-process tiny encoders (tests, demo)


@dataclass
class SamplingConfig:
    """Generation settings (validation and `worldtune generate`); Wan2.2-TI2V defaults."""

    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    shift: float = 5.0
    # unipc | euler
    scheduler: str = "unipc"
    negative_prompt: str = ""


@dataclass
class WanModelConfig:
    """The DiT and its frozen encoders."""

    # Base model folder (DiT + T5 + VAE), e.g. checkpoints/Wan2.2-TI2V-5B; null: random init of `size`.
    ckpt_dir: str | None = None
    # Fine-tuned weights applied on top with strict=False (the seeds' `pt_dir`, e.g. vidar.pt).
    pt_dir: str | None = None
    # Named size (wan2.2-ti2v-5b, tiny-ti2v, ...); the base folder's config.json wins when present.
    size: str = "wan2.2-ti2v-5b"
    # VAE / text encoder: a folder or file, "tiny" (in-process tiny models), or null (from ckpt_dir).
    vae: str | None = None
    text_encoder: str | None = None
    # dtype of the frozen encoders (bf16 | fp32); the DiT's is the trainer's (dist.mixed_precision).
    encoder_dtype: str = "bf16"
    # LoRA rank; 0 trains the full DiT.
    lora_rank: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)
    timestep: TimestepSampler = field(default_factory=lambda: TimestepSampler(shift=5.0))
    # Probability of replacing the prompt by the empty prompt (classifier-free guidance).
    cfg_prob: float = 0.1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def build_dit(cfg: WanModelConfig, device: str | None = None) -> nn.Module:
    """The DiT: base weights from ckpt_dir (or a random `size`), then pt_dir on top, then LoRA."""
    if cfg.ckpt_dir:
        model, report = load_wan(cfg.ckpt_dir, config=_config_or_none(cfg), strict=False)
        _require_full(report, cfg.ckpt_dir)
    else:
        log.warning("model.ckpt_dir is not set: the DiT (%s) starts from random weights", cfg.size)
        model = build_wan(wan_config(cfg.size), device=device)
    if cfg.pt_dir:
        report = load_into(model, cfg.pt_dir, strict=False)
        log.info("model.pt_dir %s: %s", cfg.pt_dir, report.summary())
    if cfg.lora_rank > 0:
        settings = LoraSettings(**{**cfg.lora.__dict__, "rank": cfg.lora_rank})
        add_lora(model, settings)
    return model


def dit_config(cfg: WanModelConfig) -> WanConfig:
    if cfg.ckpt_dir:
        from worldtune.models.wan.factory import resolve_config

        return resolve_config(cfg.ckpt_dir, _config_or_none(cfg))
    return wan_config(cfg.size)


def _config_or_none(cfg: WanModelConfig) -> WanConfig | None:
    """The named size when the base folder has no config.json of its own."""
    folder = Path(cfg.ckpt_dir)
    has_config = (folder / "config.json").is_file() or (folder / "transformer" / "config.json").is_file()
    return None if has_config else wan_config(cfg.size)


def _require_full(report, where: str) -> None:
    if report.missing:
        raise ValueError(f"model.ckpt_dir {where}: base checkpoint lacks {len(report.missing)} DiT weights, "
                         f"e.g. {report.missing[:3]}")


def build_vae(cfg: WanModelConfig, dit: WanConfig):
    from worldtune.models.encoders import WanVAE, tiny_wan_vae

    spec = cfg.vae or cfg.ckpt_dir
    if spec == TINY:
        return tiny_wan_vae("2.2" if dit.out_dim == 48 else "2.1")
    if spec is None:
        raise ValueError("model.vae: set a VAE folder / file, 'tiny', or model.ckpt_dir")
    return WanVAE.from_pretrained(spec, dtype=DTYPES[cfg.encoder_dtype])


def build_text_encoder(cfg: WanModelConfig, dit: WanConfig):
    from worldtune.models.encoders import WanTextEncoder, tiny_text_encoder

    spec = cfg.text_encoder or cfg.ckpt_dir
    if spec == TINY:
        return tiny_text_encoder()
    if spec is None:
        raise ValueError("model.text_encoder: set a T5 folder, 'tiny', or model.ckpt_dir")
    return WanTextEncoder.from_pretrained(spec, dtype=DTYPES[cfg.encoder_dtype])


def pad_text(embeds: list[torch.Tensor], length: int) -> torch.Tensor:
    """Variable-length prompt embeddings zero-padded to [B, length, dim] (the DiT pads so too)."""
    from worldtune.models.encoders import pad_to

    return pad_to(embeds, length)
