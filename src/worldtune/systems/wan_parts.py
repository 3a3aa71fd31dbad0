"""What the Wan-based recipes (Vidar, Vidarc, VACE-E, Sim-Physics) share: config sections and the
building of the DiT and its frozen encoders from a base-model folder, or tiny ones for tests.

A base folder is what Wan releases ship (`Wan2.2-TI2V-5B/`: DiT shards + config.json, T5, VAE) or
its diffusers counterpart (`transformer/`, `text_encoder/`, `tokenizer/`, `vae/`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from worldtune.diffusion.flow_matching import TimestepSampler
from worldtune.models.lora import LoraSettings, add_lora
from worldtune.models.wan.checkpoints import load_into
from worldtune.models.wan.dit import name_seed
from worldtune.models.wan.factory import MakeModel, build_wan, load_wan
from worldtune.models.wan.sizes import WanConfig, wan_config
from worldtune.train.distributed import DTYPES, DistEnv, shard_device
from worldtune.utils.logging import get_logger
from worldtune.utils.weight_files import Source
from worldtune.utils.weights import initialise, to_empty_keeping_buffers

log = get_logger()

TINY = "tiny"  # encoder spec for in-process tiny encoders (tests, demo)
PIXELS = "pixels:"  # VAE spec: the identity latent space (`pixels:2` folds 2x2 pixels into channels)


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
    # The seed's `model_class`: WanModel (recipe vidar) or WanModelCausal (recipe vidarc).
    model_class: str = "WanModel"
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


def build_dit(cfg: WanModelConfig, device: str | None = None, weights: Source | None = None,
              make: MakeModel | None = None) -> nn.Module:
    """The DiT: base weights from ckpt_dir (or a random `size`), then pt_dir, then LoRA, then
    `weights` (a path or state dict: `generate --weights`, a run's weights, adapters included).

    `make` builds a recipe's DiT subclass for the config (VACE-E); `device="meta"` builds it on meta
    and loads nothing (`worldtune inspect`). Under torchrun (a
    process group of several ranks) it is built on meta too, and `dit_loader` fills it once the
    trainer has sharded it, each rank reading only its own shards.
    """
    if device == "meta" or (device is None and _sharded_run() and _lora_init_on_meta(cfg)):
        return _meta_dit(cfg, make)
    if cfg.ckpt_dir:
        model, report = load_wan(cfg.ckpt_dir, config=_config_or_none(cfg), strict=False, make=make)
        _require_full(report, cfg.ckpt_dir, model=model)
        log.info("model.ckpt_dir %s", report.summary())
    elif cfg.pt_dir is not None or weights is not None:  # weights for the whole DiT, probably
        model = build_wan(wan_config(cfg.size), device="meta", make=make)  # what they lack is initialised
    else:
        log.warning("model.ckpt_dir is not set: the DiT (%s) starts from random weights", cfg.size)
        model = build_wan(wan_config(cfg.size), device=device, make=make)
    if cfg.pt_dir is not None:  # before LoRA, whose initialisation may read the base weights (pissa)
        _load_delta(model, cfg.pt_dir, cfg, fill_missing=_on_meta(model))
    if cfg.lora_rank > 0:
        _add_lora(model, cfg)
    if weights is not None:
        _load_delta(model, weights, cfg, fill_missing=_on_meta(model))
    return model


def _on_meta(model: nn.Module) -> bool:
    return model.patch_embedding.weight.is_meta


def _load_delta(model: nn.Module, source: Source, cfg: WanModelConfig, fill_missing: bool) -> None:
    """Weights over the model; with `fill_missing` (a model without a base: on meta, or sharded
    and empty) what they lack starts as a fresh model's."""
    report = load_into(model, source, init_missing=_initial_values(model, cfg) if fill_missing else None)
    log.info("DiT weights %s", report.summary())
    random = [name for name in report.initialised if ".lora_" not in name]
    if random:
        log.warning("model.ckpt_dir is not set: %d DiT tensors not in %s start from random weights (%s)",
                    len(random), report.source, cfg.size)


def _add_lora(model: nn.Module, cfg: WanModelConfig) -> None:
    if _on_meta(model) and cfg.lora.init not in _META_LORA_INITS:
        initialise(model, _initial_values(model, cfg))  # this initialisation reads the base weights
    add_lora(model, lora_settings(cfg))
    if not _on_meta(model):
        init_lora_(model, cfg)


def lora_settings(cfg: WanModelConfig) -> LoraSettings:
    return LoraSettings(**{**cfg.lora.__dict__, "rank": cfg.lora_rank})


# ----------------------------------------------------------------------------- sharded loading

def _sharded_run() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# LoRA initialisations that need no base weights, so that adapters can start on meta.
_META_LORA_INITS = ("default", "random", "gaussian")


def _lora_init_on_meta(cfg: WanModelConfig) -> bool:
    if cfg.lora_rank <= 0 or cfg.lora.init in _META_LORA_INITS:
        return True
    log.warning("model.lora.init %r needs the base weights: the DiT is built whole on every rank", cfg.lora.init)
    return False


def _meta_dit(cfg: WanModelConfig, make: MakeModel | None = None) -> nn.Module:
    model = build_wan(dit_config(cfg), device="meta", make=make)
    if cfg.lora_rank > 0:
        add_lora(model, lora_settings(cfg))
    return model


def dit_loader(cfg) -> Callable[[nn.Module, DistEnv], None]:
    """`Parts.load_after_shard` for a DiT that `build_dit` left on meta (cfg: the run config, with
    `model` and `dist` sections); a no-op for one built with its weights."""

    def load_after_shard(model: nn.Module, env: DistEnv) -> None:
        if any(p.is_meta for p in model.parameters()):
            log.info("the DiT was built on meta and sharded over %d ranks: each loads its own shards",
                     env.world_size)
            load_sharded_dit(model, cfg.model, shard_device(cfg.dist, env))

    return load_after_shard


def load_sharded_dit(model: nn.Module, cfg: WanModelConfig, device: torch.device | str) -> None:
    """Materialise a (sharded) meta DiT on `device` and fill it as `build_dit` would have: ckpt_dir,
    then pt_dir, the rest (LoRA, or everything without a base) initialised as a fresh model's."""
    to_empty_keeping_buffers(model, device)
    init = _initial_values(model, cfg)
    sources = [source for source in (cfg.ckpt_dir, cfg.pt_dir) if source]
    if not sources:
        log.warning("model.ckpt_dir is not set: the DiT (%s) starts from random weights", cfg.size)
        initialise(model, init)
        return
    if not cfg.ckpt_dir:
        _load_delta(model, cfg.pt_dir, cfg, fill_missing=True)
        return
    report = load_into(model, cfg.ckpt_dir, init_missing=init)
    _require_full(report, cfg.ckpt_dir, ignore_lora=True, model=model)
    log.info("model.ckpt_dir %s", report.summary())
    if cfg.pt_dir:
        log.info("model.pt_dir %s", load_into(model, cfg.pt_dir).summary())


def _initial_values(model: nn.Module, cfg: WanModelConfig) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """init_missing for a DiT: LoRA adapters as `init_lora_` sets them, the rest as a fresh DiT."""
    settings = lora_settings(cfg) if cfg.lora_rank > 0 else None

    def initial_value(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if settings is not None and ".lora_" in name:
            return lora_initial_value(name, tuple(tensor.shape), settings, model.init_seed)
        return model.initial_value(name)

    return initial_value


def lora_initial_value(name: str, shape: tuple[int, ...], settings: LoraSettings, seed: int) -> torch.Tensor:
    """peft's initialisation of one adapter matrix (`init`: default = Kaiming A / zero B, random =
    both Kaiming, gaussian = normal(1/rank) A / zero B), drawn from a generator seeded by name."""
    value = torch.empty(shape, dtype=torch.float32)
    generator = torch.Generator().manual_seed(name_seed(seed, name))
    if ".lora_B." in name and settings.init != "random":
        return value.zero_()
    if settings.init == "gaussian":
        return value.normal_(std=1 / settings.rank, generator=generator)
    return nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=generator)


def init_lora_(model: nn.Module, cfg: WanModelConfig) -> None:
    """Give the adapters `lora_initial_value`s, so that a DiT built whole and one built on meta and
    filled shard by shard start from the same adapters (peft draws them from the global RNG)."""
    if cfg.lora.init not in _META_LORA_INITS:
        return
    settings = lora_settings(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(lora_initial_value(name, tuple(param.shape), settings, model.init_seed))


def dit_config(cfg: WanModelConfig) -> WanConfig:
    if cfg.ckpt_dir:
        from worldtune.models.wan.factory import resolve_config

        return resolve_config(cfg.ckpt_dir, _config_or_none(cfg))
    return wan_config(cfg.size)


def dit_export_files(cfg: WanModelConfig) -> dict[str, str]:
    """config.json for an exported DiT (original keys, as a release folder has it)."""
    wan = dit_config(cfg)
    config = {"_class_name": "VaceWanModel" if wan.model_type == "vace" else "WanModel", **wan.to_dict()}
    return {"config.json": json.dumps(config, indent=2, sort_keys=True) + "\n"}


def _config_or_none(cfg: WanModelConfig) -> WanConfig | None:
    """The named size when the base folder has no config.json of its own."""
    folder = Path(cfg.ckpt_dir)
    has_config = (folder / "config.json").is_file() or (folder / "transformer" / "config.json").is_file()
    return None if has_config else wan_config(cfg.size)


def _require_full(report, where: str, ignore_lora: bool = False, model: nn.Module | None = None) -> None:
    """A base checkpoint must hold every DiT weight, except the modules a recipe adds to the DiT
    (the model's `added_modules` prefixes, e.g. VACE-E's `vace_e.`), which start fresh."""
    added = tuple(getattr(model, "added_modules", ()))
    missing = [n for n in report.missing if not (ignore_lora and ".lora_" in n) and not (added and n.startswith(added))]
    if missing:
        raise ValueError(f"model.ckpt_dir {where}: base checkpoint lacks {len(missing)} DiT weights, "
                         f"e.g. {missing[:3]}")


def build_vae(cfg: WanModelConfig, dit: WanConfig):
    from worldtune.models.encoders import WanVAE, tiny_wan_vae

    spec = cfg.vae or cfg.ckpt_dir
    if spec == TINY:
        return tiny_wan_vae("2.2" if dit.out_dim == 48 else "2.1")
    if spec is not None and str(spec).startswith(PIXELS):
        return pixel_latents(str(spec), dit)
    if spec is None:
        raise ValueError("model.vae: set a VAE folder / file, 'tiny', 'pixels:<patch>' or model.ckpt_dir")
    return WanVAE.from_pretrained(spec, dtype=DTYPES[cfg.encoder_dtype])


def pixel_latents(spec: str, dit: WanConfig):
    """`pixels:<patch>[x<frames>]`: raw pixels as latents (space-to-depth by `patch`; with `x4`, also
    4 frames per latent frame after frame 0 alone, as Wan's VAE), for CPU experiments that must
    measure what a model learned without a trained VAE in between."""
    from worldtune.models.encoders import PixelLatents

    try:
        patch, _, time_patch = spec[len(PIXELS):].partition("x")
        latents = PixelLatents(patch=int(patch or 1), time_patch=int(time_patch or 1))
    except ValueError:
        raise ValueError(f"model.vae {spec!r}: expected pixels:<patch> or pixels:<patch>x<frames>, "
                         "e.g. pixels:2 or pixels:2x4") from None
    if latents.z_dim != dit.out_dim:
        raise ValueError(f"model.vae {spec!r} gives {latents.z_dim} channels; the DiT ({dit.model_type}) has {dit.out_dim}")
    return latents


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
