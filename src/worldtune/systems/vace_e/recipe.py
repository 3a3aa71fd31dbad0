"""VACE-E (seed 1): train Wan2.1-VACE's new branch, then optionally the DiT, on demonstrations.

Flow matching on the target video, with VACE's control (the hands-masked video and the hands mask)
and the embodiment image as VACE's reference frame; the VACE-E branch reads the hand motion,
object trajectories, the prompt's T5 features and the embodiment image's CLIP features. Stages
(`training_stages`) choose what trains: `vace_e` (stage 1), then `dit,vace_e` (stage 2; `dit`
is the LoRA adapters when `model.lora_rank` > 0). The VAE, T5, CLIP and the VACE blocks stay frozen.

Classifier-free guidance: with probability `model.cfg_prob` a sample loses its prompt *and* its
VACE-E condition (the branch then reads only its null token), so that guidance at generation
amplifies the demonstration too (the original kept it in the negative pass as well).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from worldtune.config import ConfigError
from worldtune.data.formats.vace_e import VaceEDataset, collate_vace_e
from worldtune.diffusion.flow_matching import add_noise, drop_conditions, flow_matching_loss, to_timestep
from worldtune.systems.vace_e.conditioning import (
    Encoded,
    condition,
    drop_condition,
    swap_trajectories,
    text_features,
    vace_context,
)
from worldtune.systems.vace_e.config import VaceERunConfig
from worldtune.systems.wan_parts import (
    TINY,
    build_dit,
    build_text_encoder,
    build_vae,
    dit_config,
    dit_loader,
    pad_text,
)
from worldtune.train.recipe import Parts, Recipe
from worldtune.utils.logging import get_logger

log = get_logger()

# The DiT proper (what stage 2's "dit" trains without LoRA): not the VACE blocks, not the branch.
DIT_MODULES = "patch_embedding,text_embedding,time_embedding,time_projection,blocks,head"
ENCODERS = ("vae", "text_encoder", "clip")


class VaceERecipe(Recipe):
    name = "vace_e"
    config_class = VaceERunConfig
    export_name = "vace_e"

    # ------------------------------------------------------------------ build

    def build(self, cfg: VaceERunConfig) -> Parts:
        vram = cfg.vram_optimization
        if vram.enabled and vram.offload_optimizer and not _distributed():
            log.warning("vram_optimization.offload_optimizer is FSDP2's CPU offload (dist.cpu_offload), which "
                        "applies under torchrun: this single process keeps the optimizer state on its device")
        parts = self.build_models(cfg)
        parts.train_dataset = VaceEDataset(cfg.data)
        return parts

    def build_models(self, cfg: VaceERunConfig, dit_weights=None, device: str | None = None) -> Parts:
        """DiT (+ branch) and the frozen encoders, without data (training and generation share it)."""
        wan = dit_config(cfg.model)
        if wan.model_type != "vace":
            raise ConfigError(f"model.size: VACE-E extends a VACE model (wan2.1-vace-1.3b), got model_type "
                              f"{wan.model_type!r}")
        encoders = {} if device == "meta" else self.build_encoders(cfg, wan)
        image_dim, stride = branch_inputs(cfg, encoders)
        make = None
        if cfg.model.enable_vace_e:
            from worldtune.models.wan.vace_e import WanVaceEModel

            branch = cfg.model.branch(image_dim, stride)
            make = lambda config: WanVaceEModel(config, branch)  # noqa: E731
        model = build_dit(cfg.model, device=device, weights=dit_weights, make=make)
        offload = cfg.vram_optimization.enabled and cfg.vram_optimization.cpu_offload
        extras: dict[str, Any] = {"text_len": wan.text_len, "offload": offload}
        if "text_encoder" in encoders:
            extras["null_text"] = encoders["text_encoder"].encode([cfg.model.sampling.negative_prompt])[0]
        if offload:  # kept out of `frozen`, which the trainer moves to the device
            extras["encoders"] = encoders
        return Parts(model=model, train_dataset=None, collate_fn=collate_vace_e,
                     frozen={} if offload else encoders, trainable_aliases=self.trainable_aliases(cfg),
                     load_after_shard=dit_loader(cfg), cfg=cfg, extras=extras)

    @staticmethod
    def build_encoders(cfg: VaceERunConfig, wan) -> dict[str, torch.nn.Module]:
        from worldtune.train.distributed import DTYPES

        encoders = {"vae": build_vae(cfg.model, wan), "text_encoder": build_text_encoder(cfg.model, wan)}
        if cfg.model.clip == TINY:
            from worldtune.models.encoders import tiny_clip

            encoders["clip"] = tiny_clip(with_projection=False, patch_size=8)
        elif cfg.model.clip:
            from worldtune.models.encoders import ClipImageEncoder

            encoders["clip"] = ClipImageEncoder.from_pretrained(cfg.model.clip, dtype=DTYPES[cfg.model.encoder_dtype])
        return encoders

    def build_for_inspect(self, cfg: VaceERunConfig) -> Parts:
        parts = self.build_models(cfg, device="meta")
        parts.train_dataset = VaceEDataset(cfg.data)
        return parts

    @staticmethod
    def trainable_aliases(cfg: VaceERunConfig) -> dict[str, str]:
        dit = "*lora_*" if cfg.model.lora_rank else DIT_MODULES
        return {"dit": dit, "lora": "*lora_*", "vace": "vace_blocks,vace_patch_embedding",
                # The original's CLUB estimator (a mutual-information term trained in the wrong
                # direction) is not built; its name in trainable_models selects nothing.
                "club_estimator": "none",
                "auto": "vace_e" if cfg.model.enable_vace_e else dit}

    def describe_data(self, parts: Parts) -> str | None:
        data = parts.train_dataset
        return (f"episodes: {len(data)} ({data.video_only} on video alone, {len(data.skipped)} skipped); "
                f"tasks: {len({e.task for e in data.episodes})}")

    # ------------------------------------------------------------------ encoding

    @contextmanager
    def encoders(self, parts: Parts, device: torch.device):
        """The frozen encoders on `device`; with vram_optimization.cpu_offload they go back after."""
        if not parts.extras["offload"]:
            yield parts.frozen
            return
        encoders = parts.extras["encoders"]
        for module in encoders.values():
            module.to(device)
        try:
            yield encoders
        finally:
            for module in encoders.values():
                module.to("cpu")

    @torch.no_grad()
    def encode(self, parts: Parts, batch: dict[str, Any]) -> Encoded:
        cfg = parts.cfg.model
        device = parts.model.patch_embedding.weight.device
        with self.encoders(parts, device) as enc:
            vae = enc["vae"]
            latents = vae.encode(batch["video"]).float()
            reference = batch["reference"] if cfg.vace_reference else None
            context, ref_latent = vace_context(vae, batch["control"], batch["mask"], reference)
            if ref_latent is not None:
                latents = torch.cat([ref_latent, latents], dim=2)
            embeds = [e.to(device) for e in enc["text_encoder"].encode(list(batch["prompt"]))]
            text, text_mask = text_features(embeds, parts.extras["text_len"])
            embodiment = enc["clip"].encode(batch["reference"][:, :, 0]).float() if "clip" in enc else None
        cond = condition(batch, text, text_mask, embodiment) if cfg.enable_vace_e else None
        return Encoded(latents.to(device), context.to(device), text, cond, 1 if ref_latent is not None else 0)

    @staticmethod
    def forward(parts: Parts, noisy: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                context: torch.Tensor, cond: dict[str, torch.Tensor] | None, reference_frames: int) -> torch.Tensor:
        cfg = parts.cfg.model
        kwargs: dict[str, Any] = {"vace_context": context, "vace_context_scale": cfg.vace_scale}
        if cond is not None:
            kwargs.update(vace_e=cond, vace_e_scale=cfg.vace_e_scale, reference_frames=reference_frames)
        return parts.model(noisy, timestep, text, **kwargs)

    # ------------------------------------------------------------------ training

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        model_cfg = parts.cfg.model
        enc = self.encode(parts, batch)
        x0 = enc.latents
        text, dropped = drop_conditions(enc.text, self._null(parts, enc.text), model_cfg.cfg_prob)
        cond = drop_condition(enc.condition, dropped) if enc.condition is not None else None
        sigma = model_cfg.timestep.sample(x0.shape[0], device=x0.device)
        noise = torch.randn_like(x0)
        velocity = self.forward(parts, add_noise(x0, noise, sigma), to_timestep(sigma), text, enc.vace_context, cond,
                                enc.reference_frames)
        mse = flow_matching_loss(velocity, x0, noise)
        return {"loss": mse, "mse_loss": mse.detach()}

    @staticmethod
    def _null(parts: Parts, like: torch.Tensor) -> torch.Tensor:
        return pad_text([parts.extras["null_text"].to(like.device)], like.shape[1])[0]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(self, parts: Parts, enc: Encoded, cond: dict[str, torch.Tensor] | None,
                 seed: int = 0, progress: bool = False) -> torch.Tensor:
        """Latents of the videos (the reference frame dropped), with guidance on prompt + branch."""
        from worldtune.diffusion.samplers import make_scheduler, sample_flow

        sampling = parts.cfg.model.sampling
        device = enc.latents.device
        generator = torch.Generator(device).manual_seed(seed)
        noise = torch.randn(enc.latents.shape, generator=generator, device=device)
        # Dicts of equal-shaped tensors: sample_flow batches the two halves of guidance in one call.
        full = {"text": enc.text, "vace": enc.vace_context, **_prefixed(cond)}
        uncond = None
        if sampling.guidance_scale != 1.0:
            dropped = torch.ones(noise.shape[0], dtype=torch.bool, device=device)
            null = drop_condition(cond, dropped) if cond is not None else None
            uncond = {"text": self._null(parts, enc.text).expand_as(enc.text), "vace": enc.vace_context,
                      **_prefixed(null)}

        def denoise(x, t, c):
            branch = {k[2:]: v for k, v in c.items() if k.startswith("e.")} or None
            return self.forward(parts, x, t, c["text"], c["vace"], branch, enc.reference_frames)

        latents = sample_flow(denoise, noise, scheduler=make_scheduler(sampling.scheduler, sampling.shift),
                              num_steps=sampling.num_inference_steps, cond=full, uncond=uncond,
                              guidance_scale=sampling.guidance_scale, progress=progress)
        return latents[:, :, enc.reference_frames:]

    @torch.no_grad()
    def sample(self, parts: Parts, batch: dict[str, Any]) -> dict[str, Any]:
        """Generated videos beside their targets and controls, and the seed's three metrics."""
        from worldtune.systems.vace_e.metrics import sample_metrics

        enc = self.encode(parts, batch)
        device = enc.latents.device
        with self.encoders(parts, device) as enc_modules:
            decode = enc_modules["vae"].decode
            video = decode(self.generate(parts, enc, enc.condition))
            swapped = None
            if enc.condition is not None and video.shape[0] > 1:  # task_alignment: another episode's trajectories
                donor = {k: v.roll(1, dims=0) for k, v in enc.condition.items()}
                swapped = decode(self.generate(parts, enc, swap_trajectories(enc.condition, donor)))
        target, mask = batch["video"].to(video.device), batch["mask"].to(video.device)
        return {"video": video, "target": target, "control": batch["control"],
                **sample_metrics(video, target, mask, swapped)}

    # ------------------------------------------------------------------ export

    def export_weights(self, weights: dict[str, torch.Tensor], cfg: VaceERunConfig) -> dict[str, torch.Tensor]:
        """vace_e.safetensors: the branch (`vace_e.*`) and, when a stage trained the DiT, the DiT
        (LoRA merged), under the model's names: `generate --weights` loads it over the base."""
        from worldtune.models.lora import merge_lora_weights

        if cfg.model.lora_rank:
            weights = merge_lora_weights(weights, cfg.model.lora.alpha / cfg.model.lora_rank)
        if dit_trained(cfg):
            return weights
        return {k: v for k, v in weights.items() if k.startswith("vace_e.")}

    def export_payload(self, weights: dict[str, torch.Tensor], cfg: VaceERunConfig) -> dict[str, Any]:
        """vace_e.pt: `vace_e_state_dict` (the branch's, as `model.vace_e` loads it), `dit_state_dict`
        when the DiT trained, and the run's config so that generation rebuilds the same model."""
        from worldtune.config import to_yaml

        payload: dict[str, Any] = {
            "vace_e_state_dict": {k[len("vace_e."):]: v for k, v in weights.items() if k.startswith("vace_e.")},
            "vace_e_layers": list(cfg.model.layers()),
            "config_yaml": to_yaml(cfg),
        }
        dit = {k: v for k, v in weights.items() if not k.startswith("vace_e.")}
        if dit:
            payload["dit_state_dict"] = dit
        return payload


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def branch_inputs(cfg: VaceERunConfig, encoders: dict[str, torch.nn.Module]) -> tuple[int, int]:
    """(CLIP token width, VAE frames per latent frame) the branch is sized for, from the encoders or,
    when they are not built (`inspect` on meta), from their specs."""
    if "vae" in encoders:
        stride = encoders["vae"].temporal_stride
    else:
        stride = 1 if str(cfg.model.vae).startswith("pixels:") else 4
    if "clip" in encoders:
        return encoders["clip"].dim, stride
    if cfg.model.clip == TINY:
        from worldtune.models.encoders import tiny_clip_config

        return tiny_clip_config().hidden_size, stride
    return 1280, stride  # ViT-H/14's penultimate tokens (Wan2.1-I2V's CLIP)


def _prefixed(cond: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    return {f"e.{k}": v for k, v in cond.items()} if cond is not None else {}


def dit_trained(cfg: VaceERunConfig) -> bool:
    """Whether any stage trains something besides the branch (then the export carries the DiT)."""
    specs = [s.trainable_models for s in cfg.train.training_stages.values()] or [cfg.train.trainable_models]
    branch_only = {"vace_e", "club_estimator", "none", ""}
    if not cfg.model.enable_vace_e:
        branch_only = {"club_estimator", "none", ""}
    for spec in specs:
        tokens = {t.strip() for t in spec.split(",")}
        if tokens == {"auto"} and cfg.model.enable_vace_e:
            continue
        if tokens - branch_only:
            return True
    return False


RECIPE = VaceERecipe()
