"""`worldtune` command line: train | export | convert | inspect | prepare | generate | lam | eval."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from worldtune.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["prepare", "ctrl-world"]:  # the converter owns its flags (the seed's command line)
        return _guarded(lambda: _prepare_ctrl_world(argv[2:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    return _guarded(lambda: args.handler(args))


def _guarded(run) -> int:
    """Run a command; user errors print one line naming the problem instead of a traceback."""
    try:
        return int(run() or 0)
    except ConfigError as err:
        print(f"worldtune: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"worldtune: error: {err}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldtune",
        description="Fine-tune video generators into robot world models.",
    )
    commands = parser.add_subparsers(title="commands")

    train = commands.add_parser("train", help="train a recipe from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/lam/train.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4")
    train.set_defaults(handler=_train)

    export = commands.add_parser("export", help="write a run's trainable weights as safetensors and .pt")
    export.add_argument("run_dir", help="run directory (or one checkpoint directory)")
    export.add_argument("--checkpoint", help="checkpoint directory (default: the newest complete one)")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument("--out", help="output directory (default RUN_DIR/export)")
    export.add_argument("--name", help="file stem (default: the recipe's artefact, e.g. vidar, else model)")
    export.add_argument("--all", action="store_true", help="all weights, not only the trainable ones")
    export.set_defaults(handler=_export)

    convert = commands.add_parser("convert", help="rewrite a Wan DiT checkpoint in original or diffusers layout")
    convert.add_argument("source", help="checkpoint folder or file (original, diffusers, .safetensors, .pt)")
    convert.add_argument("out_dir")
    convert.add_argument("--to", required=True, choices=("original", "diffusers"))
    convert.add_argument("--size", help="named size when the source has no config.json, e.g. wan2.2-ti2v-5b")
    convert.add_argument("--dtype", choices=("keep", "bf16", "fp16", "fp32"), default="keep")
    convert.add_argument("--shard-size", default="5GB")
    convert.set_defaults(handler=_convert)

    _add_prepare(commands)
    _add_generate(commands)
    _add_lam(commands)
    _add_eval(commands)
    demo = commands.add_parser("demo", help="simulate a robot, convert, train a tiny Ctrl-World, evaluate (CPU)")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--episodes", type=int, default=None, help="simulated episodes (default 48)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 900)")
    demo.set_defaults(handler=_demo)

    inspect = commands.add_parser("inspect", help="print the resolved config, parameter counts, data sizes")
    inspect.add_argument("config")
    inspect.add_argument("overrides", nargs="*")
    inspect.set_defaults(handler=_inspect)
    return parser


def _add_prepare(commands) -> None:
    prepare = commands.add_parser("prepare", help="prepare data: manifest | cache")
    jobs = prepare.add_subparsers(title="jobs")
    manifest = jobs.add_parser("manifest", help="scan DATA_DIR/episodes and write DATA_DIR/manifest.json")
    manifest.add_argument("data_dir")
    manifest.add_argument("--val_ratio", type=float, default=0.05)
    manifest.add_argument("--seed", type=int, default=42)
    manifest.set_defaults(handler=_prepare_manifest)
    lam_manifest = jobs.add_parser("lam-manifest", help="split DATA_DIR/*.h5 into train / val / test")
    lam_manifest.add_argument("data_dir")
    lam_manifest.add_argument("--train_ratio", type=float, default=0.8)
    lam_manifest.add_argument("--val_ratio", type=float, default=0.1)
    lam_manifest.add_argument("--test_ratio", type=float, default=0.1)
    lam_manifest.add_argument("--seed", type=int, default=42)
    lam_manifest.set_defaults(handler=_prepare_lam_manifest)
    latents = jobs.add_parser("vae-latents", help="encode videos into LAM H5 latents with the Wan2.1 VAE")
    latents.add_argument("video_dir")
    latents.add_argument("out_dir")
    latents.add_argument("--vae", required=True, help="Wan2.1 VAE folder or Wan2.1_VAE.pth ('tiny' for tests)")
    latents.add_argument("--chunk_frames", type=int, default=8)
    latents.add_argument("--size", type=int, default=512)
    latents.add_argument("--normalise", action="store_true", help="store normalised latents (default: raw)")
    latents.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    latents.set_defaults(handler=_prepare_vae_latents)
    jobs.add_parser("ctrl-world", help="convert ALOHA-style HDF5 recordings into Ctrl-World's layout "
                    "(--input_dir RAW --output_dir OUT/flexiv_data --vae_path SVD_DIR --dataset_name NAME)")
    cache = jobs.add_parser("cache", help="encode every clip's latents and prompt embeddings once")
    cache.add_argument("config")
    cache.add_argument("overrides", nargs="*")
    cache.set_defaults(handler=_prepare_cache)


def _add_lam(commands) -> None:
    lam = commands.add_parser("lam", help="latent action model tools: label")
    jobs = lam.add_subparsers(title="jobs")
    label = jobs.add_parser("label", help="write the action codes of every transition as JSON lines")
    label.add_argument("run_dir")
    label.add_argument("data_dir")
    label.add_argument("--out", required=True)
    label.add_argument("--split", default="all", help="all | train | val | test (needs a manifest)")
    label.set_defaults(handler=_lam_label)


def _add_eval(commands) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a trained model: lam")
    systems = evaluate.add_subparsers(title="systems")
    lam = systems.add_parser("lam", help="test-split MSE / MAE / codebook usage / perplexity")
    lam.add_argument("run_dir")
    lam.add_argument("--split", default="test")
    lam.add_argument("--data_dir", help="default: the run's data.data_dir")
    lam.set_defaults(handler=_eval_lam)
    world = systems.add_parser("ctrl-world", help="rollout PSNR / SSIM per view against ground truth")
    world.add_argument("run_dir")
    world.add_argument("--split", default="val")
    world.add_argument("--chunks", type=int, default=2)
    world.add_argument("--episodes", type=int, help="at most this many episodes")
    world.add_argument("--starts", type=int, default=1,
                       help="rollouts per episode, from frames spread over it (1: the first full history)")
    world.add_argument("--no_baselines", action="store_true", help="skip the repeat-last-frame / other-actions baselines")
    world.set_defaults(handler=_eval_ctrl_world)


def _add_generate(commands) -> None:
    generate = commands.add_parser("generate", help="generate with a trained model: vidar")
    systems = generate.add_subparsers(title="systems")
    vidar = systems.add_parser("vidar", help="first frame + instruction -> video (Wan2.2-TI2V)")
    source = vidar.add_mutually_exclusive_group()
    source.add_argument("--run", help="a vidar run directory (config and newest checkpoint)")
    source.add_argument("--config", help="a vidar config file")
    vidar.add_argument("--base", help="base model folder (Wan2.2-TI2V-5B), overrides model.ckpt_dir")
    vidar.add_argument("--weights", help="fine-tuned DiT weights, e.g. vidar.pt (loaded with strict=False)")
    vidar.add_argument("--prompt", required=True)
    vidar.add_argument("--image", required=True, help="first frame (png / jpg)")
    vidar.add_argument("--frames", type=int, default=81, help="4k+1 frames")
    vidar.add_argument("--steps", type=int, help="default: model.sampling.num_inference_steps (50)")
    vidar.add_argument("--guidance", type=float, help="default: model.sampling.guidance_scale (5.0)")
    vidar.add_argument("--shift", type=float)
    vidar.add_argument("--scheduler", choices=("unipc", "euler"))
    vidar.add_argument("--height", type=int)
    vidar.add_argument("--width", type=int)
    vidar.add_argument("--seed", type=int, default=0)
    vidar.add_argument("--out", required=True)
    vidar.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")
    vidar.set_defaults(handler=_generate_vidar)
    world = systems.add_parser("ctrl-world", help="roll a trained Ctrl-World out on an episode, all views")
    world.add_argument("--run", required=True, help="a ctrl_world run directory")
    world.add_argument("--episode", required=True, help="a converted episode folder, e.g. flexiv_data/3")
    world.add_argument("--actions", help="raw actions .npy [T, action_dim] to drive it (default: the episode's)")
    world.add_argument("--chunks", type=int, default=2)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--upscale", type=int, default=1, help="repeat every pixel N times each way in the video")
    world.add_argument("--out", required=True)
    world.set_defaults(handler=_generate_ctrl_world)


def _prepare_manifest(args: argparse.Namespace) -> int:
    from worldtune.data.formats.episodes import write_manifest

    print(write_manifest(args.data_dir, val_ratio=args.val_ratio, seed=args.seed))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worldtune.demo import run_demo, summary

    given = {"episodes": args.episodes, "steps": args.steps}
    metrics = run_demo(args.out, **{k: v for k, v in given.items() if v is not None})
    print(summary(metrics, Path(args.out)))
    return 0


def _generate_ctrl_world(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from worldtune.data.formats.ctrl_world import load_episode
    from worldtune.recipes import ctrl_world_tools as tools

    cfg, model = tools.load_run(args.run)
    cfg = dataclasses.replace(cfg, data=tools.data_config_for_episode(cfg, args.episode))
    episode = load_episode(cfg.data.dataset_root, Path(args.episode).name, cfg.data.views, cfg.data.layout)
    actions = tools.episode_actions(cfg, episode, np.load(args.actions)) if args.actions else None
    run = tools.rollout(model, cfg, episode, args.chunks, actions=actions, seed=args.seed)
    print(tools.write_rollout_video(args.out, cfg, run, fps=cfg.validation.fps, upscale=args.upscale))
    return 0


def _eval_ctrl_world(args: argparse.Namespace) -> int:
    import json

    from worldtune.recipes.ctrl_world_tools import evaluate

    report = evaluate(args.run_dir, split=args.split, chunks=args.chunks, max_episodes=args.episodes,
                      baselines=not args.no_baselines, starts=args.starts)
    print(json.dumps(report, indent=1))
    return 0


def _prepare_ctrl_world(argv: list[str]) -> int:
    from worldtune.data.ctrl_world_convert import main as convert

    stats = convert(argv)
    print(f"worldtune: {stats.converted} episodes converted, {stats.already_done} already done, "
          f"{len(stats.skipped_files)} skipped -> {len(stats.train_episodes)} train / "
          f"{len(stats.val_episodes)} val episodes")
    return 0


def _prepare_lam_manifest(args: argparse.Namespace) -> int:
    from worldtune.data.formats.latent_h5 import write_lam_manifest

    print(write_lam_manifest(args.data_dir, train_ratio=args.train_ratio, val_ratio=args.val_ratio,
                             test_ratio=args.test_ratio, seed=args.seed))
    return 0


def _prepare_vae_latents(args: argparse.Namespace) -> int:
    from worldtune.data.vae_latents import encode_videos_to_h5
    from worldtune.models.encoders import WanVAE, tiny_wan_vae

    vae = tiny_wan_vae("2.1") if args.vae == "tiny" else WanVAE.from_pretrained(args.vae)
    written = encode_videos_to_h5(args.video_dir, args.out_dir, vae, chunk_frames=args.chunk_frames,
                                  size=args.size, normalise=args.normalise, dtype=args.dtype)
    for path in written:
        print(path)
    return 0


def _lam_label(args: argparse.Namespace) -> int:
    from worldtune.recipes.lam_tools import label

    count = label(args.run_dir, args.data_dir, args.out, split=args.split)
    print(f"worldtune: {count} transitions labelled -> {args.out}")
    return 0


def _eval_lam(args: argparse.Namespace) -> int:
    import json

    from worldtune.recipes.lam_tools import evaluate

    print(json.dumps(evaluate(args.run_dir, split=args.split, data_dir=args.data_dir), indent=1))
    return 0


def _prepare_cache(args: argparse.Namespace) -> int:
    from worldtune.config import load_config
    from worldtune.recipes import get_recipe

    cfg = load_config(args.config, list(args.overrides))
    recipe = get_recipe(cfg.recipe)
    if recipe.name != "vidar":
        raise ValueError(f"prepare cache: recipe {cfg.recipe!r} has no latent cache")
    from worldtune.recipes.vidar_tools import prepare_cache

    stats = prepare_cache(cfg)
    print(f"worldtune: cache {cfg.data.cache_dir}: {stats.total} clips ({stats.computed} encoded, {stats.reused} reused)")
    return 0


def _generate_vidar(args: argparse.Namespace) -> int:
    from worldtune.recipes.vidar_tools import generate, generation_config

    cfg, weights = generation_config(args)
    path = generate(cfg, prompt=args.prompt, image=args.image, out=args.out, num_frames=args.frames,
                    weights=weights, seed=args.seed)
    print(path)
    return 0


def _train(args: argparse.Namespace) -> int:
    from worldtune.config import load_config
    from worldtune.train.loop import Trainer

    cfg = load_config(args.config, list(args.overrides))  # fails before any model is built
    result = Trainer(cfg).fit()
    if os.environ.get("RANK", "0") == "0":
        print(f"worldtune: trained to step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from worldtune.train.export import export_run

    written = export_run(args.run_dir, checkpoint=args.checkpoint, ema=args.ema, out_dir=args.out,
                         name=args.name, trainable_only=not args.all)
    for path in written:
        print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from worldtune.models.wan.factory import convert_checkpoint
    from worldtune.train.distributed import DTYPES

    dtype = None if args.dtype == "keep" else DTYPES[args.dtype]
    written = convert_checkpoint(args.source, args.out_dir, to=args.to, config=args.size, dtype=dtype,
                                 shard_size=args.shard_size)
    for path in written:
        print(path)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from worldtune.config import load_config
    from worldtune.inspect import inspect_run

    print(inspect_run(load_config(args.config, list(args.overrides))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
