"""`worldtune generate physics`: first frame + prompt -> a video (the trained DiT, LoRA included),
then the heads read on it: `<out>.mp4`, `<out>_motion.npy` [2, T', H, W] (pixels, since the previous
latent frame), `<out>_depth.npy` [T', H, W] (metres) and `<out>_physics.mp4` (flow | depth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldtune.data.video import load_image, valid_num_frames
from worldtune.data.video_write import write_video
from worldtune.systems.physics.recipe import RECIPE
from worldtune.systems.physics.visualise import physics_panels
from worldtune.systems.wan_parts import pad_text
from worldtune.utils.device import default_device


@torch.no_grad()
def generate(run_dir: str | Path, *, image: str | Path, prompt: str, out: str | Path, num_frames: int | None = None,
             steps: int | None = None, seed: int = 0, progress: bool = True) -> list[Path]:
    from worldtune.diffusion.flow_matching import add_noise, ti2v_replace_first_frame, ti2v_token_timesteps
    from worldtune.diffusion.samplers import make_scheduler, sample_flow
    from worldtune.train.run import load_run

    overrides = [f"model.sampling.num_inference_steps={steps}"] if steps else []
    run = load_run(run_dir, RECIPE, overrides=overrides)
    cfg, device = run.cfg, default_device()
    frames = num_frames or cfg.data.num_frames
    if not valid_num_frames(frames):
        raise ValueError(f"--frames {frames}: Wan needs 4k+1 frames (e.g. 49)")
    parts = RECIPE.build_models(cfg, dit_weights=run.weights())
    model = parts.model.to(device).eval()
    vae, text_encoder = parts.frozen["vae"].to(device), parts.frozen["text_encoder"].to(device)
    first = vae.encode(load_image(image, cfg.data.height, cfg.data.width).unsqueeze(0).to(device)).float()
    shape = (1, first.shape[1], (frames - 1) // vae.temporal_stride + 1, *first.shape[3:])
    text = pad_text([text_encoder.encode([prompt])[0].to(device)], parts.extras["text_len"])
    sampling = cfg.model.sampling
    generator = torch.Generator(device).manual_seed(seed)
    noise = torch.randn(shape, generator=generator, device=device)
    null = RECIPE._null(parts, text).expand_as(text)
    latents = sample_flow(lambda x, t, c: model(x, t, c, heads=False), noise,
                          scheduler=make_scheduler(sampling.scheduler, sampling.shift),
                          num_steps=sampling.num_inference_steps, cond=text, uncond=null,
                          guidance_scale=sampling.guidance_scale, first_frame_latent=first,
                          patch_size=parts.extras["patch"], progress=progress)
    # the heads read the generated clip as they were trained: lightly noised at eval_timestep
    sigma = cfg.model.eval_timestep / 1000.0
    noisy = ti2v_replace_first_frame(add_noise(latents, torch.randn(shape, generator=generator, device=device), sigma), first)
    heads = model(noisy, ti2v_token_timesteps(torch.tensor([sigma * 1000.0], device=device), shape, parts.extras["patch"]), text)
    size = (cfg.data.height, cfg.data.width)
    from worldtune.systems.physics.losses import upsample

    motion, depth = upsample(heads.motion, size), upsample(heads.log_depth, size).exp()
    out = Path(out)
    video = vae.decode(latents)[0].cpu()
    written = [write_video(out, video, fps=cfg.validation.fps)]
    stem = out.with_suffix("")
    np.save(f"{stem}_motion.npy", motion[0].cpu().numpy())
    np.save(f"{stem}_depth.npy", depth[0, 0].cpu().numpy())
    written += [Path(f"{stem}_motion.npy"), Path(f"{stem}_depth.npy")]
    written.append(write_video(Path(f"{stem}_physics.mp4"), physics_panels(motion, depth)[0].cpu(), fps=cfg.validation.fps))
    return written
