"""The inverse dynamics model end to end on episodes in the Vidar layout whose action is the position
of a visible marker: train, kill and resume (bitwise), export idm.pt, idm label, eval idm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, step_metric, subprocess_env, train_then_kill
from idm_fixtures import write_marker_dataset
from worldtune.cli import main
from worldtune.config import ConfigError
from worldtune.data.video_write import write_video
from worldtune.models.idm import IDM, latent_mask
from worldtune.systems import load_config, train_run
from worldtune.systems.idm.data import flip_action
from worldtune.systems.idm.inference import open_idm, predict

TINY = REPO / "configs" / "idm" / "tiny.yaml"
STEPS = ["train.max_steps=100", "checkpoint.every_steps=100", "validation.every_steps=100"]
SHORT = ["train.max_steps=24", "checkpoint.every_steps=8", "validation.every_steps=24", "log.log_frequency=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = write_marker_dataset(tmp_path_factory.mktemp("idm_data"), episodes=12, num_frames=32)
    assert main(["prepare", "manifest", str(root), "--val_ratio", "0.25"]) == 0
    return root


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("idm_ref") / "run"
    train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={run}", *STEPS]))
    return run


def test_kill_and_resume_is_bitwise(data_dir, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={uninterrupted}", *SHORT]))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY), f"data.data_dir={data_dir}",
               f"output_dir={run}", *SHORT]
    train_then_kill(command, run, 10)
    assert max(step_metric(run)) < 24
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(uninterrupted)


def test_the_model_learns_and_eval_reports_it(reference, tmp_path):
    out = tmp_path / "eval.json"
    masks = tmp_path / "masks.mp4"
    assert main(["eval", "idm", str(reference), "--split", "val", "--json", str(out), "--masks", str(masks)]) == 0
    report = json.loads(out.read_text())
    model, baseline = report["model"], report["train_mean"]
    assert report["frames"] == 3 * 32
    assert model["r2"] > 0.9 and all(r > 0.9 for r in model["r2_per_dim"])
    assert model["mae"] < 0.2 * baseline["mae"]
    assert baseline["r2"] < 0.1
    assert set(model["action_mae"]) == {"all"}
    assert masks.stat().st_size > 0
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    names = set().union(*metrics)
    for name in ("train/loss", "train/huber_loss", "train/mask_l1", "train/mask_mean", "train/action_mae/all",
                 "val/loss", "val/action_mae/all"):
        assert name in names


def test_export_label_and_the_released_layout(reference, data_dir, tmp_path):
    assert main(["export", str(reference)]) == 0
    exported = reference / "export" / "idm.pt"
    payload = torch.load(exported, weights_only=True)
    assert payload["output_dim"] == 2 and payload["image_size"] == 64
    assert set(payload["model_state_dict"]) == set(IDM.tiny(2).state_dict())
    assert payload["frame"]["height"] == 64

    # The export predicts what the run does, and in joint units (the statistics travel with it).
    episode = data_dir / "episodes" / "ep_0000"
    from_run, from_file = open_idm(reference), open_idm(exported)
    frames = torch.rand(4, 3, 64, 64) * 2 - 1
    assert np.array_equal(predict(from_run, frames), predict(from_file, frames))

    out = tmp_path / "actions.npy"
    assert main(["idm", "label", str(exported), str(episode / "video.mp4"), "--out", str(out)]) == 0
    labelled, truth = np.load(out), np.load(episode / "actions.npy")
    assert labelled.shape == truth.shape and np.abs(labelled - truth).mean() < 0.05

    folder = tmp_path / "labels"
    assert main(["label", "idm", str(reference), str(data_dir), "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"ep_{i:04d}.npy" for i in range(12)]
    assert np.allclose(np.load(folder / "ep_0000.npy"), labelled, atol=1e-5)


def test_label_refuses_a_video_of_another_size(reference, tmp_path):
    video = write_video(tmp_path / "wide.mp4", np.zeros((3, 64, 96, 3), np.uint8), fps=10)
    with pytest.raises(ConfigError, match=r"wide.mp4: frames are 64x96.*trained on 64x64"):
        from worldtune.systems.idm.label import label

        label(reference, video, tmp_path / "a.npy")


def test_bad_actions_and_mismatched_dims_are_named(data_dir, tmp_path):
    bad = write_marker_dataset(tmp_path / "bad", episodes=3, num_frames=16)
    actions = np.load(bad / "episodes" / "ep_0001" / "actions.npy")
    actions[5, 1] = np.nan
    np.save(bad / "episodes" / "ep_0001" / "actions.npy", actions)
    cfg = load_config(TINY, [f"data.data_dir={bad}", f"output_dir={tmp_path / 'run'}", "train.max_steps=1"])
    with pytest.raises(ValueError, match=r"ep_0001: actions.npy holds 1 non-finite values \(first at row 5, dimension 1\)"):
        train_run(cfg)
    with pytest.raises(ConfigError, match="data.action_dim 2 != model.output_dim 14"):
        load_config(TINY, [f"data.data_dir={data_dir}", "model.output_dim=14"])
    with pytest.raises(ValueError, match="actions.npy has action_dim 2, expected 3"):
        train_run(load_config(TINY, [f"data.data_dir={data_dir}", "model.output_dim=3", "data.action_dim=3",
                                     f"output_dir={tmp_path / 'run3'}"]))


def test_another_variant_is_refused(reference, tmp_path):
    nine = tmp_path / "idm9.pt"
    torch.save({"model_state_dict": IDM.tiny(9).state_dict(), "output_dim": 9}, nine)
    from worldtune.models.idm import load_idm_state

    with pytest.raises(ValueError, match=r"idm9.pt: output_dim mismatch: the checkpoint has output_dim 9"):
        load_idm_state(IDM.tiny(2), nine)


def test_a_larger_lambda_keeps_fewer_pixels(data_dir, tmp_path):
    kept = {}
    for lam in (0.0, 3.0):
        run = tmp_path / f"lam{lam}"
        train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={run}", "train.max_steps=20",
                                     "log.log_frequency=1", "checkpoint.every_steps=0", "validation.every_steps=0",
                                     f"model.mask_lambda={lam}"]))
        kept[lam] = np.mean([v for s, v in step_metric(run, "train/mask_mean").items() if s > 10])
    assert kept[3.0] < kept[0.0] - 0.1


def test_flip_swaps_the_arms_and_negates_mirrored_joints():
    action = torch.arange(14, dtype=torch.float32) + 1
    flipped = flip_action(action, True, [0, 4, 5, 7, 11, 12])
    expected = torch.cat([action[7:], action[:7]])
    expected[[0, 4, 5, 7, 11, 12]] *= -1
    assert torch.equal(flipped, expected)
    assert torch.equal(flip_action(flipped, True, [0, 4, 5, 7, 11, 12]), action)  # a flip twice is none
    with pytest.raises(ConfigError, match="even action_dim"):
        load_config(TINY, ["data.flip_prob=0.5", "data.action_dim=3", "model.output_dim=3"])


def test_latent_mask_pools_to_the_vae_grid():
    """U(x) on a Wan-style latent grid: the area share of each cell, frame 0 alone, then groups of 4."""

    class HalfMask(torch.nn.Module):  # the left half of every frame is robot
        def mask(self, images):
            m = torch.zeros(images.shape[0], 1, *images.shape[-2:])
            m[..., : images.shape[-1] // 2] = 1.0
            return m

    video = torch.zeros(1, 3, 9, 32, 48)
    u = latent_mask(HalfMask(), video, (3, 4, 6), image_size=32)
    assert u.shape == (1, 1, 3, 4, 6)
    # Whole cells on either side; the two cells at the edge see the resize's one-pixel blur.
    assert torch.equal(u[..., :2], torch.ones(1, 1, 3, 4, 2)) and torch.equal(u[..., 4:], torch.zeros(1, 1, 3, 4, 2))
    assert (u[..., 2] > 0.95).all() and (u[..., 3] < 0.05).all()
    with pytest.raises(ValueError, match="9 frames gives 3 latent frames"):
        latent_mask(HalfMask(), video, (2, 4, 6), image_size=32)


def test_torchrun_two_ranks_trains_and_exports(data_dir, tmp_path):
    """FSDP2 over the U-Net's levels on two CPU ranks (gloo); the sharded checkpoint exports."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "worldtune.cli", "train", str(TINY), f"data.data_dir={data_dir}", f"output_dir={run}",
               "train.max_steps=4", "checkpoint.every_steps=4", "validation.every_steps=4"]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(step_metric(run)) == [1, 2, 3, 4]
    assert main(["export", str(run)]) == 0
    assert torch.load(run / "export" / "idm.pt", weights_only=True)["output_dim"] == 2
