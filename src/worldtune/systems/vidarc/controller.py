"""`VidarcController`: Vidarc for a robot loop, in pixels.

    controller = VidarcController.from_config(cfg, prompt="pick up the cube", first_frame=frame)
    frames = controller.step()                        # [3, 4, H, W]: the next block's video frames
    frames = controller.step(observed_frames=seen)    # closed loop: what the camera showed instead

Latents stay inside: observed frames are encoded with the whole observed past (a causal VAE: the
same latents as encoding the frames as they came), predictions decoded likewise. Both re-run the
VAE over the history, which is cheap beside the DiT at Vidarc's lengths; the DiT itself only ever
sees one new block, through the cache. Per-block latency: `controller.session.latencies`.
"""

from __future__ import annotations

import torch

from worldtune.systems.vidarc.config import VidarcConfig
from worldtune.systems.vidarc.stream import CausalSession


class VidarcController:
    def __init__(self, session: CausalSession, vae, first_frame: torch.Tensor) -> None:
        self.session, self.vae = session, vae
        self.frames = [first_frame[:, None]]  # [3, n, H, W] pieces: the first frame, then each block's frames

    @classmethod
    @torch.no_grad()
    def from_config(cls, cfg: VidarcConfig, *, prompt: str, first_frame: torch.Tensor, weights=None,
                    device: torch.device | str | None = None, seed: int = 0) -> VidarcController:
        """Build the model (as `generate vidarc` does) for `first_frame` `[3, H, W]` in [-1, 1]."""
        from worldtune.systems.vidarc.recipe import RECIPE
        from worldtune.systems.wan_parts import pad_text
        from worldtune.utils.device import default_device

        device = torch.device(device) if device is not None else default_device()
        parts = RECIPE.build_models(cfg, dit_weights=weights)
        model = parts.model.to(device).eval()
        vae, text_encoder = parts.frozen["vae"].to(device), parts.frozen["text_encoder"].to(device)
        dtype = model.patch_embedding.weight.dtype
        text = pad_text([text_encoder.encode([prompt])[0].to(device)], parts.extras["text_len"]).to(dtype)
        null = RECIPE._null(parts, text).to(dtype)[None] if cfg.model.sampling.guidance_scale != 1.0 else None
        first = first_frame.to(device)
        session = CausalSession(model, model.text_kv(text), model.text_kv(null) if null is not None else None,
                                cfg.model.sampling, vae.encode(first[None, :, None]).float(),
                                kv_cache_length=cfg.self_forcing.kv_cache_length, sink_size=cfg.self_forcing.sink_size,
                                generator=torch.Generator(device).manual_seed(seed))
        return cls(session, vae, first)

    @torch.no_grad()
    def step(self, observed_frames: torch.Tensor | None = None) -> torch.Tensor:
        """The next block's frames `[3, n, H, W]` in [-1, 1]. `observed_frames`: what the camera
        showed for the frames last returned (same shape), replacing them in the model's past."""
        observed = None
        if observed_frames is not None:
            last = self.frames[-1]
            if len(self.frames) < 2 or observed_frames.shape != last.shape:
                raise ValueError(f"observed frames {tuple(observed_frames.shape)} do not match the last frames "
                                 f"returned {tuple(last.shape) if len(self.frames) > 1 else '(none yet)'}")
            self.frames[-1] = observed_frames.to(last.device, last.dtype)
            latents = self.vae.encode(torch.cat(self.frames, dim=1)[None]).float()
            observed = latents[:, :, -self.session.blocks[-1].shape[2]:]
        self.session.step(observed=observed)
        video = self.vae.decode(self.session.latents().float())[0]
        done = sum(piece.shape[1] for piece in self.frames)
        self.frames.append(video[:, done:])
        return self.frames[-1]
