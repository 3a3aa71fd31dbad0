"""`worldtune demo` end to end at a few steps: every phase runs and writes its files (quality is measured
by the demo itself at full length; see docs/architecture.md)."""

from __future__ import annotations

import json

from worldtune.cli import main
from worldtune.data.video import probe_video


def test_demo_writes_video_curve_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--episodes", "5", "--steps", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "repeat the last frame" in printed and "other episode" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["phases"]) == {"simulation_s", "conversion_s", "training_s", "evaluation_s"}
    assert metrics["train_steps"] == 2 and metrics["episodes_simulated"] == 5
    assert metrics["episodes_evaluated"] == 1 and metrics["rollouts"] == 6  # 1 held-out episode, 6 starts
    assert metrics["chunks"] == 2
    assert metrics["rollout_s_per_chunk"] > 0
    for name in ("model", "repeat_last_frame", "other_actions"):
        assert len(metrics[name]["per_view"]) == 2 and 0 < metrics[name]["psnr"] < 100
    info = probe_video(out / "rollout.mp4")
    assert (info.num_frames, info.width, info.height) == (8, 256, 256)  # 4 chunks x 2 frames; truth | prediction, x8
    assert (out / "loss_curve.png").stat().st_size > 0
