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
    assert set(metrics["phases"]) == {"simulation_s", "conversion_s", "training_s", "evaluation_s",
                                       "policies_s"}
    assert metrics["train_steps"] == 2 and metrics["episodes_simulated"] == 5
    assert metrics["episodes_evaluated"] == 1 and metrics["rollouts"] == 6  # 1 held-out episode, 6 starts
    assert metrics["chunks"] == 2
    assert metrics["rollout_s_per_chunk"] > 0
    for name in ("model", "repeat_last_frame", "other_actions"):
        assert len(metrics[name]["per_view"]) == 2 and 0 < metrics[name]["psnr"] < 100
    assert "policies, success rate in imagination vs in the simulator" in printed
    ranked = metrics["policies"]
    assert set(ranked["success"]) == {"reach_block", "reach_nearby", "reach_random"}
    for rates in ranked["success"].values():  # fractions of the held-out starts
        assert set(rates) == {"imagined", "real", "real_state"} and all(0 <= r <= 1 for r in rates.values())
    assert list((out / "policies").glob("*.mp4"))
    info = probe_video(out / "rollout.mp4")
    # 4 chunks x 2 frames; a 92 px label column + truth | prediction | difference cells of 64x2 px (+2 gap),
    # two camera rows between a 14 px header and a 14 px caption
    assert (info.num_frames, info.width, info.height) == (8, 92 + 3 * 130, 14 + 2 * 130 + 14)
    assert (out / "loss_curve.png").stat().st_size > 0
