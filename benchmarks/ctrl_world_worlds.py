"""The Ctrl-World demo recipe, unchanged, on every built-in world: does it beat doing nothing?

For each world (`blocks`: the demo's robot simulator; `textured`, `clutter`: planar pushing worlds
of other image statistics, `data/pushworld`), runs `worldtune demo --world W` (simulate, convert,
train with the demo's defaults, evaluate), then evaluates the same run over 4 chunks too, and prints,
per world and horizon, the model's PSNR margin over repeating the last frame on every view and over
the same model driven by another episode's actions. The targets: every view above 0 dB over
repeating, at least 2 dB overall over other actions; and every world's still scene (a held-out first
frame held, nothing moving) rolled out above 40 dB.

    .venv/bin/python benchmarks/ctrl_world_worlds.py                       # all worlds, demo defaults
    .venv/bin/python benchmarks/ctrl_world_worlds.py --worlds textured --steps 300 --out runs/worlds
    .venv/bin/python benchmarks/ctrl_world_worlds.py --worlds blocks --model cond_noise_max=0.1  # a recipe change

Each world trains a model as long as the demo does; on 2 CPU cores expect the demo's time per world.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from worldtune.systems.ctrl_world.demo import WORLDS, run_demo
from worldtune.systems.ctrl_world.evaluate import evaluate


def margins_line(world: str, chunks: int, report: dict) -> str:
    views = report["views"]
    over_repeat = report["margins"]["repeat_last_frame"]
    over_other = report["margins"]["other_actions"]["psnr"]
    per_view = ", ".join(f"{v} {m:+.2f}" for v, m in zip(views, over_repeat["per_view"], strict=True))
    ok = min(over_repeat["per_view"]) > 0 and over_other >= 2.0
    return (f"{world:<9} {chunks} chunks  PSNR {report['model']['psnr']:6.2f}  over repeat {over_repeat['psnr']:+.2f} "
            f"({per_view})  over other actions {over_other:+.2f}  {'PASS' if ok else 'FAIL'}")


def model_override(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--model {item!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="blocks,textured,clutter", help=f"comma-separated, of {', '.join(WORLDS)}")
    parser.add_argument("--out", default="runs/worlds")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--episodes", type=int, default=None, help="simulated episodes (default: the demo's)")
    parser.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                        help="a `model:` key over the demo's (YAML value), e.g. --model cond_noise_max=0.1; repeatable")
    args = parser.parse_args()
    overrides = dict(model_override(item) for item in args.model)
    lines, results = [], {}
    for world in args.worlds.split(","):
        out = Path(args.out) / world
        given = {"steps": args.steps, "episodes": args.episodes}
        metrics = run_demo(out, world=world, model_overrides=overrides,
                           **{k: v for k, v in given.items() if v is not None})
        results[world] = {"2": metrics}
        four = evaluate(out / "run", split="val", chunks=4, max_episodes=8, starts=6)
        results[world]["4"] = four
        lines += [margins_line(world, 2, metrics), margins_line(world, 4, four)]
        for chunks, report in ((2, metrics), (4, four)):
            still = report["still_scene"]["psnr"]
            lines.append(f"{world:<9} {chunks} chunks  still scene PSNR {still:6.2f}  {'PASS' if still > 40 else 'FAIL'}")
        print("\n".join(lines), flush=True)
    (Path(args.out) / "worlds.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(["", "Ctrl-World demo recipe on every world (held-out episodes, 6 starts each):", *lines]))


if __name__ == "__main__":
    main()
