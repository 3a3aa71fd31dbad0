"""Vidar's commands: `prepare manifest`, `prepare cache`, `generate vidar`."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command


def _manifest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", help="folder holding episodes/<ep>/{video.mp4, actions.npy, instruction.txt}")
    parser.add_argument("--val_ratio", type=float, default=0.05, help="share of episodes in the val split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split")


def _manifest(args: argparse.Namespace) -> int:
    from worldtune.data.formats.episodes import write_manifest

    print(write_manifest(args.data_dir, val_ratio=args.val_ratio, seed=args.seed))
    return 0


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a vidar or vidarc config, e.g. configs/vidar/vidar_finetune.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.cache_dir=data/cache")


def _cache(args: argparse.Namespace) -> int:
    from worldtune.config import ConfigError
    from worldtune.systems import load_config

    cfg = load_config(args.config, list(args.overrides))
    if cfg.recipe not in ("vidar", "vidarc"):
        raise ConfigError(f"prepare cache: recipe {cfg.recipe!r} has no latent cache (vidar and vidarc have)")
    from worldtune.systems.vidar.cache import prepare_cache

    stats = prepare_cache(cfg)
    print(f"worldtune: cache {cfg.data.cache_dir}: {stats.total} clips ({stats.computed} encoded, "
          f"{stats.reused} reused)")
    return 0


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="a vidar run directory (config and newest checkpoint)")
    source.add_argument("--config", help="a vidar config file")
    parser.add_argument("--base", help="base model folder (Wan2.2-TI2V-5B), overrides model.ckpt_dir")
    parser.add_argument("--weights", help="fine-tuned DiT weights, e.g. vidar.pt (loaded with strict=False)")
    parser.add_argument("--prompt", required=True, help="the instruction")
    parser.add_argument("--image", required=True, help="first frame (png / jpg)")
    parser.add_argument("--frames", type=int, default=81, help="4k+1 frames")
    parser.add_argument("--steps", type=int, help="default: model.sampling.num_inference_steps (50)")
    parser.add_argument("--guidance", type=float, help="default: model.sampling.guidance_scale (5.0)")
    parser.add_argument("--shift", type=float, help="default: model.sampling.shift (5.0)")
    parser.add_argument("--scheduler", choices=("unipc", "euler"), help="default: model.sampling.scheduler")
    parser.add_argument("--height", type=int, help="default: data.height")
    parser.add_argument("--width", type=int, help="default: data.width")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")


def _generate(args: argparse.Namespace) -> int:
    from worldtune.systems.vidar.generate import generate, generation_config

    cfg, weights = generation_config(args)
    print(generate(cfg, prompt=args.prompt, image=args.image, out=args.out, num_frames=args.frames,
                   weights=weights, seed=args.seed))
    return 0


COMMANDS = (
    Command("prepare", "manifest", "scan DATA_DIR/episodes and write DATA_DIR/manifest.json (Vidar episodes)",
            _manifest_arguments, _manifest),
    Command("prepare", "cache", "encode every clip's latents and prompt embeddings once (Vidar, Vidarc: also the IDM's mask)",
            _cache_arguments, _cache),
    Command("generate", "vidar", "first frame + instruction -> video (Wan2.2-TI2V)", _generate_arguments, _generate),
)
