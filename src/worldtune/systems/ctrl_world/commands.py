"""Ctrl-World's commands: `prepare ctrl-world`, `generate ctrl-world`, `eval ctrl-world`, `demo`."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command


def _prepare_arguments(parser: argparse.ArgumentParser) -> None:
    from worldtune.systems.ctrl_world.convert_args import add_arguments

    add_arguments(parser)


def _prepare(args: argparse.Namespace) -> int:
    from worldtune.systems.ctrl_world.convert import convert_from_args

    stats = convert_from_args(args)
    print(f"worldtune: {stats.converted} episodes converted, {stats.already_done} already done, "
          f"{len(stats.skipped_files)} skipped -> {len(stats.train_episodes)} train / "
          f"{len(stats.val_episodes)} val episodes")
    return 0


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a ctrl_world run directory")
    parser.add_argument("--episode", required=True, help="a converted episode folder, e.g. flexiv_data/3")
    parser.add_argument("--actions", help="raw actions .npy [T, action_dim] to drive it (default: the episode's)")
    parser.add_argument("--chunks", type=int, default=2, help="autoregressive chunks to roll out")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--upscale", type=int, default=1, help="repeat every pixel N times each way in the video")
    parser.add_argument("--out", required=True,
                        help="output .mp4: a row per camera, truth | prediction | |difference|, chunks marked")


def _generate(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import numpy as np

    from worldtune.systems.ctrl_world.dataset import load_episode
    from worldtune.systems.ctrl_world.recipe import RECIPE
    from worldtune.systems.ctrl_world.rollout import (
        data_config_for_episode,
        episode_actions,
        rollout,
        write_rollout_video,
    )
    from worldtune.train.run import load_run

    run = load_run(args.run, RECIPE)
    cfg = dataclasses.replace(run.cfg, data=data_config_for_episode(run.cfg, args.episode))
    episode = load_episode(cfg.data.dataset_root, Path(args.episode).name, cfg.data.views, cfg.data.layout)
    actions = episode_actions(cfg, episode, np.load(args.actions)) if args.actions else None
    result = rollout(run.model(), cfg, episode, args.chunks, actions=actions, seed=args.seed)
    print(write_rollout_video(args.out, cfg, result, fps=cfg.validation.fps, upscale=args.upscale,
                              view_names=episode.views))
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a ctrl_world run directory")
    parser.add_argument("--split", default="val", help="the split's <split>_sample.json episodes")
    parser.add_argument("--chunks", type=int, default=2, help="autoregressive chunks per rollout")
    parser.add_argument("--episodes", type=int, help="at most this many episodes")
    parser.add_argument("--starts", type=int, default=1,
                        help="rollouts per episode, from frames spread over it (1: the first full history)")
    parser.add_argument("--no_baselines", action="store_true",
                        help="skip the repeat-last-frame / other-actions baselines")
    parser.add_argument("--json", help="also write the numbers here (default RUN_DIR/eval/ctrl_world_<split>.json)")
    parser.add_argument("--lpips_backbone", help="LPIPS: torchvision's AlexNet weights (alexnet-owt-7be5be79.pth)")
    parser.add_argument("--lpips_linear", help="LPIPS: the lpips package's linear weights (weights/v0.1/alex.pth)")
    parser.add_argument("--fvd_network", help="FVD: a TorchScript video feature network (e.g. i3d_torchscript.pt)")
    policy = parser.add_argument_group("policy in imagination (instead of the PSNR / SSIM evaluation)")
    policy.add_argument("--policy", metavar="MODULE:CALLABLE",
                        help="policy(observation) -> rows for the next chunk (a class: one instance per "
                             "episode); e.g. worldtune.systems.ctrl_world.demo_policies:ReachBlock")
    policy.add_argument("--success", metavar="MODULE:CALLABLE",
                        help="success(imagined_episode) -> bool; reports the imagined success rate")
    policy.add_argument("--videos", help="folder for the imagined mp4s (default RUN_DIR/eval/imagined)")
    policy.add_argument("--seed", type=int, default=0, help="the world model's sampling noise seed")


def _eval(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write

    if args.policy:
        return _eval_policy(args)
    if args.success:
        raise ValueError("--success needs --policy (the policy whose imagined episodes it judges)")
    from worldtune.systems.ctrl_world.evaluate import Perceptual, evaluate, report_table

    perceptual = Perceptual.from_files(args.lpips_backbone, args.lpips_linear, args.fvd_network)
    report = evaluate(args.run_dir, split=args.split, chunks=args.chunks, max_episodes=args.episodes,
                      baselines=not args.no_baselines, starts=args.starts, perceptual=perceptual)
    print_and_write(report, report_table(report), args.json, args.run_dir, f"ctrl_world_{args.split}")
    return 0


def _eval_policy(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write
    from worldtune.systems.ctrl_world.policy_eval import evaluate_policy, load_callable, policy_table

    success = load_callable(args.success) if args.success else None
    report = evaluate_policy(args.run_dir, load_callable(args.policy), success=success,
                             episodes=args.episodes or 8, chunks=args.chunks, split=args.split, starts=args.starts,
                             seed=args.seed, video_dir=args.videos, name=args.policy)
    print_and_write(report, policy_table(report), args.json, args.run_dir, f"ctrl_world_policy_{args.split}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--episodes", type=int, default=None, help="simulated episodes (default 48)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1200)")
    parser.add_argument("--world", default="blocks", choices=("blocks", "textured", "clutter", "still"),
                        help="blocks: the robot simulator (with the policy check); textured / clutter / still: "
                             "planar pushing worlds of other image statistics")


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from worldtune.systems.ctrl_world.demo import run_demo, summary

    given = {"episodes": args.episodes, "steps": args.steps}
    metrics = run_demo(args.out, world=args.world, **{k: v for k, v in given.items() if v is not None})
    print(summary(metrics, Path(args.out)))
    return 0


COMMANDS = (
    Command("prepare", "ctrl-world", "convert ALOHA-style HDF5 recordings into Ctrl-World's layout",
            _prepare_arguments, _prepare),
    Command("generate", "ctrl-world", "roll a trained Ctrl-World out on an episode, all views",
            _generate_arguments, _generate),
    Command("eval", "ctrl-world", "rollout PSNR / SSIM per view against ground truth and two baselines; "
            "or a policy in imagination (--policy)",
            _eval_arguments, _eval),
    Command("demo", "", "simulate a robot, convert, train a tiny Ctrl-World, evaluate (CPU, 6-9 minutes on 2 cores)",
            _demo_arguments, _demo),
)
