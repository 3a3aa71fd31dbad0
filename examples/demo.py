"""Train the example recipe end to end: `PYTHONPATH=examples python examples/demo.py`.

Trains examples/custom_recipe.py through two stages (head only, then everything) with
checkpoints, validation videos and EMA, exports the weights, and prints where everything went.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from worldtune.cli import main as worldtune


def main() -> int:
    run_dir = Path("runs/custom_recipe")
    config = "examples/custom_recipe.yaml"
    if worldtune(["train", config, f"output_dir={run_dir}", "checkpoint.resume=none"]) != 0:
        return 1
    if worldtune(["export", str(run_dir), "--ema"]) != 0:
        return 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    val = [r["val/loss"] for r in records if "val/loss" in r]
    print("\nworldtune demo (example recipe)")
    print(f"  train loss  first {losses[0]:.4f} -> last {losses[-1]:.4f} over {len(losses)} steps")
    if val:
        print(f"  val loss    {val[0]:.4f} -> {val[-1]:.4f}")
    print(f"  run dir     {run_dir}/ (config.yaml, metrics.jsonl, loss_curve.png, samples/, checkpoints/)")
    print(f"  weights     {run_dir}/export/model.safetensors, model.pt (EMA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
