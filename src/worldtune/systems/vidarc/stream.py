"""Vidarc's streaming generation: one latent block at a time through the KV cache, open or closed loop.

    session = CausalSession(model, vae, text_kv, null_text_kv, sampling, first_latent, kv_cache_length=64)
    block = session.step()                               # the next latent block, predicted
    block = session.step(observed=observed_latent)       # closed loop: the last block was really this

Each block is sampled from noise with the configured scheduler (UniPC or Euler, with classifier-free
guidance: the unconditional pass shares the cache, which holds the conditional context's keys, as
Vidarc's server does), then written into the cache at t = 0. In the closed loop the predicted block
is dropped from the cache and the observed one prefilled in its place before the next block.
Latency per block is kept (`session.latencies`) and logged.
"""

from __future__ import annotations

import time

import torch

from worldtune.diffusion.samplers import make_scheduler, sample_flow
from worldtune.models.wan.causal import CausalWanModel, TextKV
from worldtune.utils.logging import get_logger

log = get_logger()


class CausalSession:
    def __init__(self, model: CausalWanModel, text_kv: TextKV | torch.Tensor, null_text_kv: TextKV | torch.Tensor | None,
                 sampling,
                 first_latent: torch.Tensor, *, kv_cache_length: int, sink_size: int = 0,
                 generator: torch.Generator | None = None) -> None:
        """`first_latent` `[1, C, 1, h, w]`: the first frame's latent (prefilled now); `sampling` has
        `num_inference_steps`, `guidance_scale`, `shift`, `scheduler` (the model section's). The
        prompts are `model.text_kv(...)` (computed once), or the padded text embeddings themselves
        (each call projects them: what a model sharded with FSDP needs, whose blocks gather their
        weights only inside their own forward)."""
        self.model, self.sampling, self.generator = model, sampling, generator
        self.text_kv, self.null_text_kv = text_kv, null_text_kv
        _, _, _, h, w = first_latent.shape
        self.shape = first_latent.shape
        dtype = model.patch_embedding.weight.dtype
        self.cache = model.new_cache(1, h, w, kv_cache_length, sink_size, dtype=dtype, device=first_latent.device)
        self.block_frames = model.num_frame_per_block
        self.latencies: list[float] = []
        self.blocks: list[torch.Tensor] = [first_latent]
        self._prefill(first_latent, 0)

    @property
    def next_frame(self) -> int:
        return self.cache.end_frame

    @torch.no_grad()
    def _prefill(self, latents: torch.Tensor, start: int) -> None:
        self._velocity(latents.to(self.model.patch_embedding.weight.dtype),
                       torch.zeros(latents.shape[0], device=latents.device), start, self.text_kv)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, start: int, text) -> torch.Tensor:
        kv = {"text_kv": text} if isinstance(text, list) else {"context": text}
        return self.model.forward_cached(x, t, self.cache, start, **kv)

    @torch.no_grad()
    def step(self, observed: torch.Tensor | None = None) -> torch.Tensor:
        """The next block's latents `[1, C, n, h, w]`. `observed`: what the last block really was
        (closed loop; the same shape as that block), replacing the prediction in the cache."""
        if observed is not None:
            self.observe(observed)
        started = time.perf_counter()
        start = self.next_frame
        n = self.block_frames  # frame 0, a block of its own, was prefilled
        b, c, _, h, w = self.shape
        noise = torch.randn((b, c, n, h, w), generator=self.generator,
                            device=self.generator.device if self.generator else self.blocks[0].device)
        noise = noise.to(self.blocks[0].device)
        s = self.sampling
        block = sample_flow(lambda x, t, text: self._velocity(x, t, start, text),
                            noise, scheduler=make_scheduler(s.scheduler, s.shift), num_steps=s.num_inference_steps,
                            cond=self.text_kv, uncond=self.null_text_kv, guidance_scale=s.guidance_scale,
                            batch_cfg=False, generator=self.generator)
        self._prefill(block, start)  # the clean keys replace the denoising passes'
        self.blocks.append(block)
        self.latencies.append(time.perf_counter() - started)
        log.info("vidarc: block %d (latent frames %d-%d) in %.3f s", len(self.blocks) - 1, start, start + n - 1,
                 self.latencies[-1])
        return block

    @torch.no_grad()
    def observe(self, observed: torch.Tensor) -> None:
        """Replace the last generated block by what was observed (drop it from the cache, prefill this)."""
        last = self.blocks[-1]
        if len(self.blocks) < 2:
            raise ValueError("nothing generated yet: the first frame is the observation")
        if observed.shape != last.shape:
            raise ValueError(f"the observed latents have shape {tuple(observed.shape)}, the predicted block "
                             f"{tuple(last.shape)} (another frame size?)")
        n = last.shape[2]
        start = self.next_frame - n
        self.cache.drop_last(n)
        self._prefill(observed.to(last.device), start)
        self.blocks[-1] = observed.to(last.device, last.dtype)

    def latents(self) -> torch.Tensor:
        """Every latent frame so far `[1, C, T', h, w]` (observed blocks where there were some)."""
        return torch.cat(self.blocks, dim=2)
