"""Vidarc (seed 2, stage 2): the Vidar DiT made causal, trained block by block on robot episodes.

The model is Vidar's (`model.ckpt_dir` base + `model.pt_dir` = vidar.pt), turned into a
`CausalWanModel` (same parameters). Each training item gives a window of `self_forcing.chunk_size`
latent frames; its first frame is the clean condition (TI2V: timestep 0, not in the loss). Losses
(the seed's Eq. 6, and Eq. 7 with `loss.embodiment_aware`):
- `teacher`: every later block noised to its own level (diffusion forcing) and denoised in one
  sequence beside the clean frames, each noisy block seeing the clean blocks before it;
- `self`: the window rolled out block by block through the KV cache, the context being the
  model's own samples (no gradient); each block is denoised from noise along
  `self_forcing.denoising_steps` up to an exit step drawn once per training step (the same on
  every rank), where one forward runs with gradient. Its target is the velocity that takes the
  block's own noisy sample to the ground-truth block, `(x_t - x_1) / sigma` (flow matching's
  `noise - x_1` at sigma 1). The block's estimate is then cached, re-noised to `context_noise`.
The element weights are `1 + eta * U(x_1)` with the IDM's mask on the latent grid. Metrics:
`mse_loss`, and `block_loss/<i>` per block index of the window.
"""

from __future__ import annotations

from typing import Any

import torch

from worldtune.config import ConfigError
from worldtune.diffusion.flow_matching import drop_conditions, shift_sigmas, to_timestep
from worldtune.models.wan.causal import CausalWanModel, make_causal
from worldtune.systems.vidar.recipe import VidarRecipe
from worldtune.systems.vidarc.config import VidarcConfig
from worldtune.train.recipe import Parts


class VidarcRecipe(VidarRecipe):
    name = "vidarc"
    config_class = VidarcConfig
    export_name = "vidarc"
    model_classes = ("WanModelCausal", "WanModel")

    def build_models(self, cfg: VidarcConfig, with_text_encoder: bool = True, dit_weights=None) -> Parts:
        parts = super().build_models(cfg, with_text_encoder, dit_weights)
        sf = cfg.self_forcing
        parts.model = make_causal(parts.model, sf.num_frame_per_block, independent_first_frame=sf.num_frame_per_block > 1)
        vae = parts.frozen["vae"]
        latent_frames = (cfg.data.num_frames - 1) // vae.temporal_stride + 1
        if sf.chunk_size > latent_frames:
            raise ConfigError(f"self_forcing.chunk_size {sf.chunk_size} is more than the {latent_frames} latent frames "
                              f"of a clip (data.num_frames {cfg.data.num_frames})")
        if sf.mode == "self" and sf.chunk_size > sf.kv_cache_length:
            raise ConfigError(f"self_forcing.chunk_size {sf.chunk_size} must fit the cache (kv_cache_length "
                              f"{sf.kv_cache_length}) in self mode")
        parts.extras["latent_frames"] = latent_frames
        if cfg.loss.embodiment_aware:
            from worldtune.systems.idm.inference import open_idm

            idm = open_idm(cfg.loss.idm_path)
            parts.frozen["idm"] = idm.model
            parts.extras["idm_image_size"] = idm.image_size
        return parts

    def build_for_inspect(self, cfg: VidarcConfig) -> Parts:
        parts = super().build_for_inspect(cfg)
        parts.model = make_causal(parts.model, cfg.self_forcing.num_frame_per_block)
        return parts

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def sample(self, parts: Parts, batch: dict[str, Any]) -> dict[str, Any]:
        """Each item's clip generated block by block from its first frame (the cached rollout of
        `generate vidarc`), ground truth beside it."""
        from worldtune.systems.vidarc.stream import CausalSession

        cfg: VidarcConfig = parts.cfg
        x1, text = self.encode(parts, batch)
        model, sf = parts.model, cfg.self_forcing
        null = self._null(parts, text)[None] if cfg.model.sampling.guidance_scale != 1.0 else None
        videos = []
        for i in range(x1.shape[0]):
            session = CausalSession(model, text[i : i + 1], null, cfg.model.sampling, x1[i : i + 1, :, :1],
                                    kv_cache_length=sf.kv_cache_length, sink_size=sf.sink_size)
            while session.next_frame < x1.shape[2]:
                session.step()
            videos.append(session.latents())
        vae = parts.frozen["vae"]
        target = batch["video"] if "video" in batch else vae.decode(x1)
        return {"video": vae.decode(torch.cat(videos).float()), "target": target}

    # ------------------------------------------------------------------ training

    def loss(self, parts: Parts, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg: VidarcConfig = parts.cfg
        x1, text = self.encode(parts, batch)
        text, _ = drop_conditions(text, self._null(parts, text), cfg.model.cfg_prob)
        start = self._window_start(x1.shape[2], cfg.self_forcing.chunk_size)
        x1 = x1[:, :, start : start + cfg.self_forcing.chunk_size]
        weight = self.element_weights(parts, batch, x1, start)
        if cfg.self_forcing.mode == "teacher":
            errors = self.teacher_errors(parts, x1, text)
        else:
            errors = self.self_forcing_errors(parts, x1, text)
        return self.reduce(errors, weight)

    @staticmethod
    def _window_start(latent_frames: int, chunk: int) -> int:
        """Where the window of `chunk` latent frames starts (global RNG; every rank's window has the
        same length, so the ranks run the same forward passes)."""
        return int(torch.randint(0, latent_frames - chunk + 1, ()).item())

    def element_weights(self, parts: Parts, batch: dict[str, Any], x1: torch.Tensor, start: int) -> torch.Tensor | None:
        """Eq. 7's `1 + eta * U(x_1)` on the window's latent grid (None without embodiment_aware)."""
        cfg: VidarcConfig = parts.cfg
        if not cfg.loss.embodiment_aware:
            return None
        if "idm_mask" in batch:  # from the latent cache (`worldtune prepare cache`)
            mask = batch["idm_mask"].to(x1.device)
        else:
            from worldtune.models.idm import latent_mask

            vae = parts.frozen["vae"]
            latents_all = (batch["video"].shape[2] - 1) // vae.temporal_stride + 1
            mask = latent_mask(parts.frozen["idm"], batch["video"].to(x1.device), (latents_all, *x1.shape[3:]),
                               vae.temporal_stride, parts.extras["idm_image_size"])
        return 1 + cfg.loss.eta * mask[:, :, start : start + x1.shape[2]].to(x1.dtype)

    def teacher_errors(self, parts: Parts, x1: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Squared velocity errors `[B, C, K, h, w]` of teacher forcing (frame 0 is the condition)."""
        cfg: VidarcConfig = parts.cfg
        b, _, k = x1.shape[:3]
        sigma = self.block_sigmas(parts, b, k, x1.device)
        noise = torch.randn_like(x1)
        s = sigma[:, None, :, None, None]
        noisy = (1 - s) * x1 + s * noise
        noisy[:, :, 0] = x1[:, :, 0]
        t_noisy = to_timestep(sigma)
        t_noisy[:, 0] = 0
        sigma_c = torch.rand(b, k, device=x1.device) * cfg.self_forcing.context_noise
        sc = sigma_c[:, None, :, None, None]
        clean = (1 - sc) * x1 + sc * torch.randn_like(x1)
        velocity = parts.model(noisy, t_noisy, text, clean=clean, t_clean=to_timestep(sigma_c))
        return (velocity.float() - (noise - x1)) ** 2

    def block_sigmas(self, parts: Parts, batch: int, frames: int, device: torch.device) -> torch.Tensor:
        """One noise level per block (diffusion forcing), shared by the frames of a block: `[B, K]`."""
        model: CausalWanModel = parts.model
        blocks = torch.tensor([model.block_of(p) for p in range(frames)], device=device)
        per_block = parts.cfg.model.timestep.sample(batch * (int(blocks.max()) + 1), device=device)
        return per_block.view(batch, -1)[:, blocks].float()

    def self_forcing_errors(self, parts: Parts, x1: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Squared errors of the exit step of each block of a cached rollout on the model's own context."""
        cfg: VidarcConfig = parts.cfg
        sf, model = cfg.self_forcing, parts.model
        b, _, k, h, w = x1.shape
        sigmas = self.rollout_sigmas(cfg, x1.device)
        exit_step = _same_on_every_rank(int(torch.randint(0, len(sigmas), ()).item()), x1.device)
        cache = model.new_cache(b, h, w, sf.kv_cache_length, sf.sink_size)
        with torch.no_grad():
            model(x1[:, :, :1], torch.zeros(b, device=x1.device), text, cache=cache, start_frame=0)
        errors = [torch.zeros_like(x1[:, :, :1])]
        frame = 1
        while frame < k:
            n = min(sf.num_frame_per_block, k - frame)
            target = x1[:, :, frame : frame + n]
            x = torch.randn_like(target)
            for step, sigma in enumerate(sigmas[: exit_step + 1]):
                t = torch.full((b,), float(to_timestep(sigma)), device=x.device)
                if step < exit_step:
                    with torch.no_grad():
                        v = model(x, t, text, cache=cache, start_frame=frame).float()
                    x = _renoise(x - sigma * v, sigmas[step + 1])
                    continue
                v = model(x, t, text, cache=cache, start_frame=frame).float()
                errors.append((v - (x - target) / sigma) ** 2)
                estimate = x - sigma * v.detach()
            with torch.no_grad():  # the block's keys as the model's own sample, for the next blocks
                context = _renoise(estimate, sf.context_noise)
                t_ctx = torch.full((b,), float(to_timestep(sf.context_noise)), device=x.device)
                model(context, t_ctx, text, cache=cache, start_frame=frame)
            frame += n
        return torch.cat(errors, dim=2)

    @staticmethod
    def rollout_sigmas(cfg: VidarcConfig, device: torch.device) -> torch.Tensor:
        """The few-step schedule as sigmas, warped by the sampling shift (Self-Forcing's warp)."""
        steps = torch.tensor(cfg.self_forcing.denoising_steps, dtype=torch.float64, device=device) / 1000.0
        return shift_sigmas(steps, cfg.model.sampling.shift).float()

    @staticmethod
    def reduce(errors: torch.Tensor, weight: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Mean over the window's frames after the first (the condition), with the per-block losses."""
        if weight is not None:
            errors = errors * weight
        per_frame = errors[:, :, 1:].mean(dim=(0, 1, 3, 4))
        loss = per_frame.mean()
        metrics = {f"block_loss/{i + 1:02d}": v.detach() for i, v in enumerate(per_frame)}
        return {"loss": loss, "mse_loss": loss.detach(), **metrics}


def _renoise(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    return x if float(sigma) == 0 else (1 - sigma) * x + sigma * torch.randn_like(x)


def _same_on_every_rank(value: int, device: torch.device) -> int:
    """Rank 0's draw everywhere (Self-Forcing broadcasts its exit step): every rank must run the same
    number of forward passes, or FSDP's collectives would wait for each other forever."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


RECIPE = VidarcRecipe()
