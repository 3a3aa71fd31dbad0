"""`worldtune` command line: train | export | convert | inspect (generate, prepare, eval, demo: later issues)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from worldtune.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
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
    export.add_argument("--name", default="model", help="file stem (default: model)")
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

    inspect = commands.add_parser("inspect", help="print the resolved config, parameter counts, data sizes")
    inspect.add_argument("config")
    inspect.add_argument("overrides", nargs="*")
    inspect.set_defaults(handler=_inspect)
    return parser


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
