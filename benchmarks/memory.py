"""Peak-memory probes shared by the benchmarks (each side runs in a fresh process)."""

from __future__ import annotations

import contextlib
import resource


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes: VmHWM (resettable), else getrusage's ru_maxrss."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_step(step, device, steps: int) -> dict:
    """Median seconds of `steps` calls of `step()` (after one warm-up call, so optimizer state
    exists) and the peak memory above what the process held before them: CUDA allocations, or the
    growth of the peak RSS on a CPU."""
    import statistics

    import torch

    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()
        base = peak_rss()
    times = [step() for _ in range(steps)]
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()) - base
    return {"step_s": statistics.median(times), "peak_bytes": max(peak, 1)}


def run_variants(script: str, argv: list[str], variants: tuple[str, ...], rounds: int) -> dict[str, dict]:
    """Run `script argv --variant V` for each variant in a fresh process (peak memory is per
    process), the order alternating round by round; the medians of the JSON each prints last."""
    import json
    import os
    import statistics
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed buffers leave the RSS
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(rounds):
        for variant in variants if round_index % 2 == 0 else tuple(reversed(variants)):
            command = [sys.executable, script, *argv, "--variant", variant]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if proc.returncode:
                raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
