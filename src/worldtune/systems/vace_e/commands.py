"""VACE-E's commands: `generate vace-e` (the seed's inference snippet) and `eval vace-e` (its
`validate_E.py`)."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="vace_e.pt from `worldtune export` (carries the run's config)")
    parser.add_argument("--config", help="a vace_e config file (the weights it names)")
    parser.add_argument("--base", help="the Wan2.1-VACE-1.3B folder (model.ckpt_dir)")
    parser.add_argument("--clip", help="the CLIP of Wan2.1-I2V-14B-480P (model.clip)")
    parser.add_argument("--steps", type=int, help="default: model.sampling.num_inference_steps")
    parser.add_argument("--guidance", type=float, help="default: model.sampling.guidance_scale")
    parser.add_argument("--frames", type=int, help="clip frames, 4k+1 (default: data.num_frames)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override")


def _overrides(args: argparse.Namespace) -> list[str]:
    flags = {"model.ckpt_dir": args.base, "model.clip": args.clip, "model.sampling.num_inference_steps": args.steps,
             "model.sampling.guidance_scale": args.guidance, "data.num_frames": args.frames}
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.set)


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="a vace_e run directory (its config and newest checkpoint)")
    _model_arguments(parser)
    parser.add_argument("--episode", help="an episode folder in the seed layout (episode_<k>/...)")
    parser.add_argument("--hand_motion", help="hand trajectories HDF5 (replaces the episode's)")
    parser.add_argument("--objects", help="object trajectories HDF5 (replaces the episode's)")
    parser.add_argument("--embodiment_image", help="end-effector image (replaces the episode's)")
    parser.add_argument("--control", help="VACE control video, hands masked (replaces the episode's)")
    parser.add_argument("--mask", help="VACE mask video, white where the hands are (replaces the episode's)")
    parser.add_argument("--prompt", help="the task prompt (default: the episode's, from the task metadata)")
    parser.add_argument("--out", required=True, help="output .mp4")


def _generate(args: argparse.Namespace) -> int:
    from worldtune.systems.vace_e.generate import explicit_episode, generate, open_vace_e

    opened = open_vace_e(run=args.run, checkpoint=args.checkpoint, config=args.config, overrides=_overrides(args))
    print(generate(opened, explicit_episode(args, opened.cfg), args.out, seed=args.seed))
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="?", help="a vace_e run directory (or give --checkpoint vace_e.pt)")
    _model_arguments(parser)
    parser.add_argument("--test_data", required=True, help="episodes in the seed layout (<task>/episode_<k>/)")
    parser.add_argument("--output_dir", required=True, help="videos (target | generated | control) and metrics.json")
    parser.add_argument("--num_samples", type=int, help="at most this many episodes (default: all)")
    parser.add_argument("--no_videos", action="store_true", help="numbers only")


def _eval(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write
    from worldtune.systems.vace_e.evaluate import evaluate, table
    from worldtune.systems.vace_e.generate import open_vace_e

    opened = open_vace_e(run=args.run, checkpoint=args.checkpoint, config=args.config, overrides=_overrides(args))
    report = evaluate(opened, args.test_data, args.output_dir, num_samples=args.num_samples,
                      save_videos=not args.no_videos)
    print_and_write(report, table(report), f"{args.output_dir}/metrics.json", args.output_dir, "metrics")
    return 0


COMMANDS = (
    Command("generate", "vace-e", "a demonstration (episode folder or its files) -> video (Wan2.1-VACE + VACE-E)",
            _generate_arguments, _generate),
    Command("eval", "vace-e", "video_quality, motion_accuracy and task_alignment on a test folder (validate_E.py)",
            _eval_arguments, _eval),
)
