"""`worldtune demo`'s wall time alone and beside a second CPU-heavy process.

On a shared or small machine a second job's OpenMP threads compete with the demo's; idle OpenMP
threads that spin (the default wait policy) make it far worse than sharing the cores. This runs the
demo (in a subprocess, as a user would) once alone and once beside a "hog" (another Python process
multiplying matrices with torch's default threads), alternating `--rounds` times, and prints the
median wall times and `slowdown beside a hog (with / alone)`.

    .venv/bin/python benchmarks/demo_contention.py --steps 300
    .venv/bin/python benchmarks/demo_contention.py --steps 300 --pythonpath /tmp/old_checkout/src

`--pythonpath` runs another checkout's code with this environment (e.g. the code before a change);
`--demo-env KEY=VALUE` sets a variable for the demo only (the hog keeps the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "import torch\na = torch.randn(768, 768)\nwhile True:\n    a = (a @ a).tanh_()\n"


def run_demo(out: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[float, dict]:
    """Wall time of one demo run and its metrics.json."""
    command = [sys.executable, "-m", "worldtune.cli", "demo", "--out", str(out), "--steps", str(args.steps),
               "--episodes", str(args.episodes)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def beside_hog(out: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[float, dict]:
    hog_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    hog = subprocess.Popen([sys.executable, "-c", HOG], env=hog_env)
    try:
        time.sleep(2.0)  # let it start its thread pool
        return run_demo(out, args, env)
    finally:
        hog.kill()
        hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="demo training steps (the demo's default: 1200)")
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=1, help="alternating (alone, beside hog) pairs")
    parser.add_argument("--pythonpath", help="run the worldtune package found here instead of the installed one")
    parser.add_argument("--demo-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the demo only (not the hog), e.g. GOMP_SPINCOUNT=10000")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    for item in args.demo_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--demo-env {item!r}: expected KEY=VALUE")
        env[key] = value
    alone, shared = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            seconds, metrics = run_demo(Path(tmp) / f"alone_{r}", args, env)
            alone.append(seconds)
            print(f"round {r}: alone {seconds:.1f} s (phases {metrics['phases']})", flush=True)
            seconds, metrics = beside_hog(Path(tmp) / f"hog_{r}", args, env)
            shared.append(seconds)
            print(f"round {r}: beside hog {seconds:.1f} s (phases {metrics['phases']})", flush=True)
    a, s = statistics.median(alone), statistics.median(shared)
    print(f"demo --steps {args.steps}: alone {a:.1f} s, beside a hog {s:.1f} s")
    print(f"slowdown beside a hog (with / alone): {s / a:.2f}")


if __name__ == "__main__":
    main()
