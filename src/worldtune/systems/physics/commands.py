"""Sim-Physics' commands: `prepare sim-physics-metadata`, `eval physics`, `generate physics`."""

from __future__ import annotations

import argparse

from worldtune.systems.system import Command


def _metadata_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="the scenes' root (<root>/<scene>/env_0/0/0/{rgb,motion_vectors,distance_to_camera})")
    parser.add_argument("--out", required=True, help="the CSV to write (video, prompt), e.g. data/sim_physics_metadata.csv")
    parser.add_argument("--rgb_dir", default="rgb", help="the RGB folder's name in a scene (magic_physics: rgb_capture)")


def _metadata(args: argparse.Namespace) -> int:
    from worldtune.data.formats.sim_physics_files import write_metadata

    path, count = write_metadata(args.root, args.out, args.rgb_dir)
    print(f"worldtune: {path}: {count} scenes")
    return 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a physics run directory")
    parser.add_argument("--split", default="val", choices=("train", "val", "all"), help="which scenes (data.val_scenes / val_ratio)")
    parser.add_argument("--videos", help="write true | predicted flow and depth per scene here")
    parser.add_argument("--json", help="also write the numbers here (default RUN_DIR/eval/physics_<split>.json)")


def _eval(args: argparse.Namespace) -> int:
    from worldtune.eval.report import print_and_write
    from worldtune.systems.physics.evaluate import evaluate, table

    report = evaluate(args.run_dir, split=args.split, videos=args.videos)
    print_and_write(report, table(report), args.json, args.run_dir, f"physics_{args.split}")
    return 0


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a physics run directory (its config and newest checkpoint)")
    parser.add_argument("--image", required=True, help="first frame (png / jpg)")
    parser.add_argument("--prompt", required=True, help='e.g. "A physics simulation of ball collide"')
    parser.add_argument("--frames", type=int, help="4k+1 frames (default: data.num_frames)")
    parser.add_argument("--steps", type=int, help="default: model.sampling.num_inference_steps")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--out", required=True, help="output .mp4; motion / depth go beside it")


def _generate(args: argparse.Namespace) -> int:
    from worldtune.systems.physics.generate import generate

    for path in generate(args.run, image=args.image, prompt=args.prompt, out=args.out, num_frames=args.frames,
                         steps=args.steps, seed=args.seed):
        print(path)
    return 0


COMMANDS = (
    Command("prepare", "sim-physics-metadata", "scan Sim-Physics scenes and write the metadata CSV (video, prompt)",
            _metadata_arguments, _metadata),
    Command("eval", "physics", "flow EPE, depth AbsRel / delta<1.25 against baselines, video loss vs the base",
            _eval_arguments, _eval),
    Command("generate", "physics", "first frame + prompt -> video, and the heads' motion and depth for it",
            _generate_arguments, _generate),
)
