"""`worldtune generate vidarc`: first frame + instruction -> video, generated block by block through
the KV cache; with `--observe`, the closed loop (after each block the observed frames replace the
prediction in the cache, as a robot's camera would)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldtune.data.video import load_image, probe_video, read_frames
from worldtune.data.video_write import write_video
from worldtune.systems.vidarc.config import VidarcConfig
from worldtune.systems.vidarc.recipe import RECIPE
from worldtune.systems.vidarc.stream import CausalSession
from worldtune.systems.wan_parts import pad_text
from worldtune.utils.device import default_device
from worldtune.utils.weight_files import Source


@torch.no_grad()
def generate(cfg: VidarcConfig, *, prompt: str, image: str | Path, out: str | Path, num_frames: int,
             weights: Source | None = None, seed: int = 0, observe: str | Path | None = None) -> Path:
    """Writes `out` (the predictions: in the closed loop each block predicted from the observed past)."""
    from worldtune.data.video import valid_num_frames

    if not valid_num_frames(num_frames):
        raise ValueError(f"--frames {num_frames}: Wan needs 4k+1 frames (e.g. 81)")
    parts = RECIPE.build_models(cfg, dit_weights=weights)
    device = default_device()
    model = parts.model.to(device).eval()
    vae, text_encoder = parts.frozen["vae"].to(device), parts.frozen["text_encoder"].to(device)
    first = load_image(image, cfg.data.height, cfg.data.width).unsqueeze(0).to(device)
    latent_frames = (num_frames - 1) // vae.temporal_stride + 1
    observed = None
    if observe is not None:
        video = read_observed(observe, cfg.data.height, cfg.data.width, num_frames).to(device)
        observed = vae.encode(video).float()  # a causal VAE: each latent frame sees only earlier frames
        first = video[:, :, :1]
    dtype = model.patch_embedding.weight.dtype
    text = pad_text([text_encoder.encode([prompt])[0].to(device)], parts.extras["text_len"]).to(dtype)
    sampling = cfg.model.sampling
    null = RECIPE._null(parts, text).to(dtype)[None] if sampling.guidance_scale != 1.0 else None
    session = CausalSession(model, model.text_kv(text), model.text_kv(null) if null is not None else None, sampling,
                            vae.encode(first).float(), kv_cache_length=cfg.self_forcing.kv_cache_length,
                            sink_size=cfg.self_forcing.sink_size, generator=torch.Generator(device).manual_seed(seed))
    predictions = [session.blocks[0]]
    while session.next_frame < latent_frames:
        last = predictions[-1]
        seen = None
        if observed is not None and len(predictions) > 1:
            start = session.next_frame - last.shape[2]
            seen = observed[:, :, start : start + last.shape[2]]
        predictions.append(session.step(observed=seen))
    video = vae.decode(torch.cat(predictions, dim=2).float())[0]
    return write_video(out, video.cpu(), fps=cfg.data.fps)


def read_observed(source: str | Path, height: int, width: int, num_frames: int) -> torch.Tensor:
    """The observed frames `[1, 3, T, H, W]` in [-1, 1] from an mp4 or a folder of images; they must
    have the generated size (what the robot's camera gives, after the training's tiling)."""
    source = Path(source)
    if source.is_dir():
        from PIL import Image

        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        frames = np.stack([np.array(Image.open(p).convert("RGB")) for p in files]) if files else np.zeros((0, 1, 1, 3))
    else:
        info = probe_video(source)
        frames = read_frames(source, range(info.num_frames))
    if len(frames) < num_frames:
        raise ValueError(f"{source}: {len(frames)} observed frames, the rollout needs {num_frames}")
    if frames.shape[1:3] != (height, width):
        raise ValueError(f"{source}: observed frames are {frames.shape[1]}x{frames.shape[2]}, the model generates "
                         f"{height}x{width}")
    video = torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).permute(3, 0, 1, 2).float() / 127.5 - 1
    return video[None]


def generation_config(args) -> tuple[VidarcConfig, Source | None]:
    """The config and DiT weights `worldtune generate vidarc` runs with (as `generate vidar`'s)."""
    from worldtune.systems.vidar.generate import generation_config as vidar_generation_config

    return vidar_generation_config(args, RECIPE)
