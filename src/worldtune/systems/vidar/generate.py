"""`worldtune generate vidar`: first frame + instruction -> video, from a run, a config or weights."""

from __future__ import annotations

from pathlib import Path

import torch

from worldtune.data.video import load_image
from worldtune.data.video_write import write_video
from worldtune.systems.vidar.config import VidarConfig
from worldtune.systems.vidar.recipe import RECIPE, generate_latents
from worldtune.systems.wan_parts import pad_text
from worldtune.utils.device import default_device
from worldtune.utils.weight_files import Source


@torch.no_grad()
def generate(cfg: VidarConfig, *, prompt: str, image: str | Path, out: str | Path, num_frames: int,
             weights: Source | None = None, seed: int = 0, progress: bool = True) -> Path:
    """First frame + instruction -> an mp4 of `num_frames` frames at the configured size and fps.
    `weights` (a file such as vidar.pt, or a run's state dict) go over the configured DiT; what
    they loaded is logged."""
    from worldtune.data.video import valid_num_frames

    if not valid_num_frames(num_frames):
        raise ValueError(f"--frames {num_frames}: Wan needs 4k+1 frames (e.g. 81)")
    parts = RECIPE.build_models(cfg, dit_weights=weights)
    device = default_device()
    model = parts.model.to(device).eval()
    vae, text_encoder = parts.frozen["vae"].to(device), parts.frozen["text_encoder"].to(device)
    first = load_image(image, cfg.data.height, cfg.data.width).unsqueeze(0).to(device)
    first_latent = vae.encode(first).float()
    latent_frames = (num_frames - 1) // vae.temporal_stride + 1
    shape = (1, first_latent.shape[1], latent_frames, *first_latent.shape[3:])
    text = pad_text([text_encoder.encode([prompt])[0].to(device)], parts.extras["text_len"])
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        latents = generate_latents(parts, text.to(model.patch_embedding.weight.dtype), first_latent, shape,
                                   generator=torch.Generator(device).manual_seed(seed), progress=progress)
    video = vae.decode(latents.float())[0]
    return write_video(out, video.cpu(), fps=cfg.data.fps)


def generation_config(args, recipe=RECIPE) -> tuple[VidarConfig, Source | None]:
    """The config and DiT weights `worldtune generate <recipe>` runs with (see its --help): a run's
    config and newest weights, a config file, or the recipe's defaults; then `--weights`."""
    from worldtune.config import ConfigError, build_config, load_config, parse_overrides
    from worldtune.train.run import load_run

    overrides = _flag_overrides(args) + list(args.set)
    weights: Source | None = None
    if args.run:
        run = load_run(args.run, recipe, overrides=overrides)
        cfg, weights = run.cfg, run.weights()
    elif args.config:
        def schema(name: str):
            if name != recipe.name:
                raise ConfigError(f"generate {recipe.name}: the config's recipe is {name!r}, not {recipe.name}")
            return recipe.config_class

        cfg = load_config(args.config, overrides, schema_of=schema)
    else:
        cfg = build_config(recipe.config_class, parse_overrides([f"recipe={recipe.name}", "output_dir=.", *overrides]))
    if args.weights:
        weights = args.weights  # read (and reported) as the DiT is built
    return cfg, weights


def _flag_overrides(args) -> list[str]:
    flags = {"model.ckpt_dir": args.base, "model.sampling.num_inference_steps": args.steps,
             "model.sampling.guidance_scale": args.guidance, "model.sampling.shift": args.shift,
             "model.sampling.scheduler": args.scheduler, "data.height": args.height, "data.width": args.width}
    return [f"{key}={value}" for key, value in flags.items() if value is not None]
