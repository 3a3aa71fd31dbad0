"""`worldtune` command line: the generic verbs (train, export, inspect, convert) and every command the
registered systems declare (`worldtune <verb> <system>`), built from `worldtune.systems.REGISTRY`.

This module names no system: a system's package lists its commands (`systems/<x>/commands.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from worldtune.config import ConfigError, seed_flag_overrides
from worldtune.data.errors import StaleCacheError
from worldtune.systems import Command, all_systems
from worldtune.utils.threads import prefer_passive_openmp

# Verbs systems add to; anything else a system declares becomes a verb of its own.
VERB_HELP = {
    "prepare": "prepare data (manifests, conversion, caches)",
    "generate": "generate with a trained model",
    "eval": "evaluate a trained model (prints a table, writes JSON)",
    "label": "label data with a trained model",
}


def main(argv: Sequence[str] | None = None) -> int:
    prefer_passive_openmp()  # before any command imports torch: idle OpenMP threads sleep, not spin
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = with_seed_flags(argv)
    except ConfigError as err:
        print(f"worldtune: config error: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        (getattr(args, "verb_parser", None) or parser).print_help()
        return 2
    return _guarded(lambda: args.handler(args))


def with_seed_flags(argv: list[str]) -> list[str]:
    """`worldtune train` / `inspect` with the seeds' flags (`--config X --output_dir Y --learning_rate
    1e-4 --debug`) rewritten as the config path and dotted overrides they mean (`config.SEED_FLAGS`)."""
    if not argv or argv[0] not in ("train", "inspect"):
        return argv
    if not any(a.startswith("--") and a != "--help" for a in argv[1:]):
        return argv
    config, rest = seed_flag_overrides(argv[1:])
    paths, dotted = [a for a in rest if "=" not in a], [a for a in rest if "=" in a]
    return [argv[0], *([config] if config else []), *paths, *dotted]


def _guarded(run) -> int:
    """Run a command; user errors print one line naming the problem instead of a traceback.

    Exit codes: 2 for a config error, 1 for any other user error, 130 for Ctrl-C (128 + SIGINT).
    """
    try:
        return int(run() or 0)
    except ConfigError as err:
        print(f"worldtune: config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # the trainer's message says where it stopped and how to resume
        print(f"worldtune: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError, StaleCacheError) as err:
        print(f"worldtune: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. diffusers / transformers: a model folder that is not there
        print(f"worldtune: error: {str(err).splitlines()[0] if str(err) else repr(err)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    systems = all_systems()
    parser = argparse.ArgumentParser(prog="worldtune", description="Fine-tune video generators into robot world models.")
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(verbs, systems)
    _add_export(verbs)
    _add_inspect(verbs)
    _add_convert(verbs)
    _add_system_commands(verbs, [c for s in systems for c in s.commands])
    return parser


def _add_system_commands(verbs, commands: list[Command]) -> None:
    grouped: dict[str, list[Command]] = {}
    for command in commands:
        grouped.setdefault(command.verb, []).append(command)
    for verb, group in grouped.items():
        if len(group) == 1 and not group[0].name:  # a verb of its own (`worldtune demo`)
            _add_command(verbs, verb, group[0])
            continue
        names = " | ".join(c.name for c in group)
        sub = verbs.add_parser(verb, help=f"{VERB_HELP.get(verb, verb)}: {names}",
                               description=VERB_HELP.get(verb, verb))
        sub.set_defaults(verb_parser=sub)
        jobs = sub.add_subparsers(title="what", metavar="WHAT")
        for command in group:
            _add_command(jobs, command.name, command)


def _add_command(subparsers, name: str, command: Command) -> None:
    parser = subparsers.add_parser(name, help=command.help, description=command.description or command.help)
    command.add_arguments(parser)
    parser.set_defaults(handler=command.run)


def _add_train(verbs, systems) -> None:
    listing = "\n".join(f"  {s.name:<12} {s.summary} ({s.configs})" for s in systems)
    train = verbs.add_parser(
        "train", help="train a system from a YAML config", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the recipe a config names (`recipe: NAME`); under torchrun, on every rank.",
        epilog=f"recipes (recipe: NAME in the config):\n{listing}\n  or recipe: package.module:ATTRIBUTE",
    )
    train.add_argument("config", help="YAML config, e.g. configs/<system>/<name>.yaml (or --config PATH)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4; the seeds' "
                       "flags work too: --learning_rate 1e-4 --output_dir DIR --debug (config.SEED_FLAGS)")
    train.set_defaults(handler=_train)


def _add_export(verbs) -> None:
    export = verbs.add_parser("export", help="write a run's trainable weights as safetensors and .pt")
    export.add_argument("run_dir", help="run directory (or one checkpoint directory)")
    export.add_argument("--checkpoint", help="checkpoint directory (default: the newest complete one)")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument("--out", help="output directory (default RUN_DIR/export)")
    export.add_argument("--name", help="file stem (default: the recipe's own artefact name, else model)")
    export.add_argument("--all", action="store_true", help="all weights, not only the trainable ones")
    export.set_defaults(handler=_export)


def _add_inspect(verbs) -> None:
    inspect = verbs.add_parser("inspect", help="print the resolved config, parameter counts, data sizes")
    inspect.add_argument("config", help="YAML config")
    inspect.add_argument("overrides", nargs="*", help="dotted overrides")
    inspect.set_defaults(handler=_inspect)


def _add_convert(verbs) -> None:
    convert = verbs.add_parser("convert", help="rewrite a Wan DiT checkpoint in original or diffusers layout")
    convert.add_argument("source", help="checkpoint folder or file (original, diffusers, .safetensors, .pt)")
    convert.add_argument("out_dir", help="output folder")
    convert.add_argument("--to", required=True, choices=("original", "diffusers"), help="target layout")
    convert.add_argument("--size", help="named size when the source has no config.json, e.g. wan2.2-ti2v-5b")
    convert.add_argument("--dtype", choices=("keep", "bf16", "fp16", "fp32"), default="keep", help="stored dtype")
    convert.add_argument("--shard-size", default="5GB", help="largest shard of a diffusers folder")
    convert.set_defaults(handler=_convert)


def _train(args: argparse.Namespace) -> int:
    from worldtune.systems import load_config, train_run

    cfg = load_config(args.config, list(args.overrides))  # fails before any model is built
    result = train_run(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"worldtune: trained to step {result.step}; last checkpoint {result.last_checkpoint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from worldtune.systems import recipe_of_run
    from worldtune.train.export import export_run, find_checkpoint

    try:
        recipe = recipe_of_run(find_checkpoint(args.run_dir, args.checkpoint))
    except ConfigError:
        recipe = None  # a recipe that no longer imports: the generic export of the trainable weights
    written = export_run(args.run_dir, recipe, checkpoint=args.checkpoint, ema=args.ema, out_dir=args.out,
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
    from worldtune.systems import get_recipe, load_config
    from worldtune.train.inspect import inspect_run

    cfg = load_config(args.config, list(args.overrides))
    print(inspect_run(cfg, get_recipe(cfg.recipe)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
