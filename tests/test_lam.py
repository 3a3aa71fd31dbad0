"""The latent action model end to end: H5 latents in the seed layout -> manifest -> overfit / train
with resume -> label -> eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import REPO, step_metric, subprocess_env
from worldtune.cli import main
from worldtune.systems import load_config, train_run

# A CPU-sized model: 16 channels like the seed's latents, 16x16 latents instead of 64x64.
SMALL = ["model.latent_size=16", "model.adapter_patch=4", "model.patch_dim=32", "model.embed_dim=64",
         "model.num_heads=4", "model.encoder_depth=2", "model.decoder_depth=2", "model.codebook_dim=16"]
MOTIONS = [(0, 1), (1, 0), (0, -1), (-1, 0)]  # one blob moving right, down, left or up


def write_motion_file(path: Path, motion: tuple[int, int], chunks: int = 4, seed: int = 0) -> None:
    """[chunks, 16, 2, 16, 16]: a Gaussian blob, with a per-channel colour, moving one pixel per frame."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(0.5, 1.0, size=(16, 1, 1)).astype(np.float32)
    y0, x0 = rng.integers(5, 11, size=2)
    yy, xx = np.mgrid[0:16, 0:16]
    frames = []
    for t in range(chunks * 2):
        cy, cx = y0 + motion[0] * t * 0.5, x0 + motion[1] * t * 0.5
        frames.append(colour * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)[None].astype(np.float32))
    latents = np.stack(frames, axis=1).reshape(16, chunks, 2, 16, 16).transpose(1, 0, 2, 3, 4)
    with h5py.File(path, "w") as f:
        f.create_dataset("latents", data=latents)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lam_data")
    for i in range(10):
        write_motion_file(root / f"clip_{i:02d}.h5", MOTIONS[i % 4], seed=i)
    assert main(["prepare", "lam-manifest", str(root), "--train_ratio", "0.6", "--val_ratio", "0.2",
                 "--test_ratio", "0.2", "--seed", "42"]) == 0
    return root


def overrides(data_dir: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.data_dir={data_dir}", f"data.manifest_path={data_dir / 'manifest.json'}",
            f"output_dir={run}", "data.sequence_length=4", "log.tensorboard=false", *SMALL, *extra]


def test_overfit_reaches_the_seed_criteria(data_dir, tmp_path, capsys):
    run = tmp_path / "overfit"
    argv = ["train", str(REPO / "configs/lam/overfit.yaml"),
            *overrides(data_dir, run, "train.num_epochs=300", "log.progress_bar=false")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "test_mode PASS" in out
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["test_mode/mse_loss"] < 0.01 and final["test_mode/mae_loss"] < 0.05


def test_train_kill_resume_label_eval(data_dir, tmp_path):
    config = REPO / "configs/lam/train.yaml"
    common = ["train.num_epochs=6", "train.batch_size=4", "train.learning_rate=1e-3", "train.warmup_steps=2",
              "checkpoint.every_steps=3", "train.num_workers=0", "log.wandb_project=null",
              "model.rollout_horizon=2", "model.dead_code_threshold=5"]
    reference = tmp_path / "reference"
    train_run(load_config(config, overrides(data_dir, reference, *common)))
    losses = step_metric(reference)
    assert set(step_metric(reference, "val/mse_loss")) == {4 * e for e in range(1, 7)}  # every epoch (4 steps)
    assert "train/rollout_loss" in json.loads((reference / "metrics.jsonl").read_text().splitlines()[0])

    run = tmp_path / "killed"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(config), *overrides(data_dir, run, *common)]
    proc = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and max(step_metric(run) or [0]) >= 10:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == losses

    actions = tmp_path / "actions.jsonl"
    assert main(["lam", "label", str(run), str(data_dir), "--out", str(actions)]) == 0
    lines = [json.loads(line) for line in actions.read_text().splitlines()]
    assert len(lines) == 10 * 7  # 10 files x 8 latent frames -> 7 transitions each
    assert all(0 <= line["action_id"] < 12**3 and len(line["codes"]) == 3 for line in lines)
    assert len({line["action_id"] for line in lines}) > 1  # several motions, several actions

    from worldtune.systems.lam.evaluate import evaluate

    report = evaluate(run, split="test")
    assert report["sequences"] > 0 and report["mse_loss"] > 0
    written = tmp_path / "lam_eval.json"
    assert main(["eval", "lam", str(run), "--split", "test", "--json", str(written)]) == 0
    assert json.loads(written.read_text()) == report
    assert main(["label", "lam", str(run), str(data_dir), "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == actions.read_text()
    assert report["codebook_usage"] > 1 / 12  # more than one code in use
    assert 1.0 < report["perplexity"] <= 12.0


def test_dead_code_restart_agrees_across_ranks(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tests" / "lam_restart_worker.py"), str(tmp_path)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Usage is global: codes 0 and 1 (one per rank) stay, the other 4 restart on both ranks.
    assert ranks[0]["restarted"] == ranks[1]["restarted"] == 4
    assert torch.equal(ranks[0]["steps_since_used"], ranks[1]["steps_since_used"])
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    codebook = ranks[0]["codebook"]
    assert torch.equal(codebook[:2], torch.tensor([[0.0] * 3, [1.0] * 3]))
    assert torch.equal(codebook[2:], torch.full((4, 3), 100.0))  # rank 0's candidates, broadcast


def test_dead_codes_restart_under_torchrun_with_fsdp(data_dir, tmp_path):
    run = tmp_path / "two_ranks"
    settings = ["train.num_epochs=2", "train.batch_size=2", "train.learning_rate=1e-3", "train.num_workers=0",
                "log.wandb_project=null", "log.progress_bar=false", "checkpoint.every_steps=0",
                "model.dead_code_threshold=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "worldtune.cli", "train", str(REPO / "configs/lam/train.yaml"),
               *overrides(data_dir, run, *settings)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    restarted = step_metric(run, "train/restarted_codes")
    assert sorted(restarted) == sorted(step_metric(run)) and sum(restarted.values()) > 0  # every step
    from worldtune.train import checkpoint as ckpt
    from worldtune.train.export import load_weights

    weights = load_weights(ckpt.latest_checkpoint(run))
    assert weights["quantizer.codebook"].shape == (12, 16) and torch.isfinite(weights["quantizer.codebook"]).all()


def test_inspect_reports_the_data(data_dir, tmp_path, capsys):
    assert main(["inspect", str(REPO / "configs/lam/train.yaml"), *overrides(data_dir, tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "sequences" in out and "clip_" not in out.split("# data")[0]


def test_bad_h5_is_named(data_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    write_motion_file(bad / "good.h5", (0, 1))
    with h5py.File(bad / "wrong.h5", "w") as f:
        f.create_dataset("latents", data=np.zeros((4, 8, 2, 16, 16), dtype=np.float32))  # 8 channels
    (bad / "manifest.json").write_text(json.dumps({"version": 1, "seed": 0, "ratios": {},
                                                   "train": ["good.h5", "wrong.h5"], "val": [], "test": []}))
    with pytest.raises(ValueError, match="wrong.h5"):
        train_run(load_config(REPO / "configs/lam/train.yaml",
                            [f"data.data_dir={bad}", f"output_dir={tmp_path / 'run'}",
                             "data.sequence_length=4", *SMALL]))


def test_a_bad_val_file_stops_the_run_an_empty_val_split_does_not(tmp_path):
    from worldtune.systems.lam.recipe import RECIPE

    folder = tmp_path / "data"
    folder.mkdir()
    write_motion_file(folder / "good.h5", (0, 1))
    (folder / "broken.h5").write_bytes(b"not an HDF5 file" * 8)

    def build(val: list[str]):
        (folder / "manifest.json").write_text(json.dumps({"version": 1, "seed": 0, "ratios": {},
                                                          "train": ["good.h5"], "val": val, "test": []}))
        return RECIPE.build(load_config(REPO / "configs/lam/train.yaml", [
            f"data.data_dir={folder}", f"data.manifest_path={folder / 'manifest.json'}",
            f"output_dir={tmp_path / 'run'}", "data.sequence_length=4", *SMALL]))

    assert build([]).val_dataset is None
    with pytest.raises(ValueError, match=r"broken\.h5: not a readable HDF5 file"):  # not "no val split"
        build(["broken.h5"])


def test_prepare_vae_latents_cli_feeds_the_loader(tmp_path):
    import torch

    from worldtune.data.video_write import write_video
    from worldtune.systems.lam.latent_h5 import LatentH5Config, LatentSequenceDataset

    videos = tmp_path / "videos"
    frames = (torch.rand(3, 17, 40, 48) * 2 - 1).clamp(-1, 1)
    write_video(videos / "demo.mp4", frames, fps=8)
    out = tmp_path / "latents"
    assert main(["prepare", "vae-latents", str(videos), str(out), "--vae", "tiny", "--size", "32"]) == 0
    dataset = LatentSequenceDataset(LatentH5Config(data_dir=str(out), split="all", sequence_length=4))
    assert len(dataset) == 1 and dataset[0]["latents"].shape == (16, 4, 4, 4)  # 17 // 8 = 2 chunks
