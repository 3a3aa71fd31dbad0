"""Vidarc's command: `generate vidarc` (open or closed loop)."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    from worldtune.systems.vidar.commands import _generate_arguments as vidar_arguments

    vidar_arguments(parser)
    parser.add_argument("--observe", metavar="FRAMES", help="closed loop: an mp4 or a folder of images of the "
                        "observed frames (the generated size; its first frame replaces --image); after each "
                        "block the observed frames replace the prediction in the cache")


def _generate(args: argparse.Namespace) -> int:
    from worldtune.systems.vidarc.generate import generate, generation_config

    cfg, weights = generation_config(args)
    print(generate(cfg, prompt=args.prompt, image=args.image, out=args.out, num_frames=args.frames,
                   weights=weights, seed=args.seed, observe=args.observe))
    return 0


COMMANDS = (
    Command("generate", "vidarc", "first frame + instruction -> video, block by block through the KV cache "
            "(Vidarc; --observe: closed loop)", _generate_arguments, _generate),
)
