"""Ctrl-World end to end on simulated recordings: convert, train, kill and resume, roll out, evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, step_metric, subprocess_env
from test_eval_metrics import _MeanFeatures, lpips_files
from worldtune.cli import main
from worldtune.data.toyenv import generate_dataset
from worldtune.data.video import probe_video
from worldtune.systems import load_config, train_run

TINY = REPO / "configs" / "ctrl_world" / "tiny.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ctrl_world")
    generate_dataset(root / "raw", 6, seed=0, image_size=16, num_steps=16, cameras=["cam_high", "cam_left_wrist"])
    argv = ["prepare", "ctrl-world", "--input_dir", str(root / "raw"), "--output_dir", str(root / "sim_data"),
            "--latent_space", "space_to_depth", "--factor", "4", "--height", "16", "--width", "16",
            "--cameras", "cam_high", "cam_left_wrist", "--dataset_name", "sim", "--num_history", "2",
            "--num_frames", "3", "--val_ratio", "0.34", "--no_progress"]
    assert main(argv) == 0
    assert main(argv) == 0  # a rerun converts nothing twice
    return root / "sim_data"


def overrides(data: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.dataset_root={data}", f"output_dir={run}", "train.batch_size=2", "train.max_steps=6",
            "checkpoint.every_steps=2", "model.num_inference_steps=2", *extra]


def test_layout_and_stats(dataset):
    episode = dataset / "0"
    assert sorted(p.relative_to(episode).as_posix() for p in episode.rglob("*") if p.is_file()) == [
        "annotation/0.json", "annotation/1.json", "latent_videos/0/0.pt", "latent_videos/1/0.pt"]
    meta = dataset.parent / "sim_data_meta_info" / "sim"
    assert sorted(p.name for p in meta.iterdir()) == ["stat.json", "train_sample.json", "val_sample.json"]
    stats = json.loads((meta / "stat.json").read_text())
    assert len(stats["state_01"]) == len(stats["state_99"]) == 7
    latents = torch.load(episode / "latent_videos" / "0" / "0.pt", weights_only=True)
    assert latents.shape == (16, 48, 4, 4)  # 16 frames, space-to-depth x4 of 16x16 RGB


def test_train_kill_resume_rollout_and_evaluate(dataset, tmp_path):
    reference = tmp_path / "reference"
    train_run(load_config(TINY, overrides(dataset, reference, "validation.every_steps=6")))
    assert sorted(p.name for p in (reference / "samples").glob("*.mp4")) == ["train_steps_6_0.mp4"]

    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY),
               *overrides(dataset, run, "validation.every_steps=6")]
    proc = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and max(step_metric(run) or [0]) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(reference)

    assert main(["export", str(run)]) == 0
    exported = torch.load(run / "export" / "checkpoint-6.pt", weights_only=True)
    assert any(k.startswith("unet.") for k in exported) and any(k.startswith("action_encoder.") for k in exported)

    out = tmp_path / "rollout.mp4"
    assert main(["generate", "ctrl-world", "--run", str(run), "--episode", str(dataset / "0"), "--chunks", "2",
                 "--upscale", "2", "--out", str(out)]) == 0
    info = probe_video(out)
    # 2 chunks x 2 frames; a 92 px label column + truth | prediction | difference cells of 16x2 px (+2 gap),
    # two camera rows between a 14 px header and a 14 px caption
    assert (info.num_frames, info.width, info.height) == (4, 92 + 3 * 34, 14 + 2 * 34 + 14)

    from worldtune.systems.ctrl_world.evaluate import evaluate

    report = evaluate(run, split="val", chunks=2, starts=3)
    assert report["episodes"] >= 1 and len(report["model"]["per_view"]) == 2
    assert report["rollouts"] == 3 * report["episodes"]  # 16-frame episodes: starts 2, 6 or 7, 11
    for name in ("model", "repeat_last_frame", "other_actions"):
        assert 0 < report[name]["psnr"] < 100 and -1 <= report[name]["ssim"] <= 1
    assert main(["eval", "ctrl-world", str(run), "--starts", "3"]) == 0  # prints a table, writes the JSON
    assert json.loads((run / "eval" / "ctrl_world_val.json").read_text())["model"] == report["model"]

    # LPIPS and FVD from weight files the user supplies (random ones here, in the published names)
    backbone, linear = lpips_files(tmp_path)
    torch.jit.script(_MeanFeatures()).save(str(tmp_path / "features.pt"))
    assert main(["eval", "ctrl-world", str(run), "--starts", "3", "--json", str(tmp_path / "p.json"),
                 "--lpips_backbone", str(backbone), "--lpips_linear", str(linear),
                 "--fvd_network", str(tmp_path / "features.pt")]) == 0
    perceptual = json.loads((tmp_path / "p.json").read_text())
    for name in ("model", "repeat_last_frame", "other_actions"):
        assert perceptual[name]["psnr"] == report[name]["psnr"]  # the same rollouts
        assert perceptual[name]["lpips"] > 0 and perceptual[name]["fvd"] >= 0
        assert all("lpips" in view and "fvd" in view for view in perceptual[name]["per_view"])


def test_rollout_starts_spread_over_the_episode(dataset):
    from worldtune.systems.ctrl_world.rollout import rollout_starts

    cfg = load_config(TINY, [f"data.dataset_root={dataset}"])  # 2 history frames, 3 frames a chunk
    assert rollout_starts(cfg, 20, chunks=2, count=1) == [2]
    assert rollout_starts(cfg, 20, chunks=2, count=4) == [2, 6, 11, 15]  # the last leaves 2 x 2 frames
    assert rollout_starts(cfg, 6, chunks=2, count=4) == []


def test_rollouts_use_the_ema_weights_of_a_run_that_kept_them(dataset, tmp_path):
    from worldtune.systems import load_run
    from worldtune.train.export import find_checkpoint, load_weights

    run = tmp_path / "run"
    train_run(load_config(TINY, overrides(dataset, run, "train.max_steps=2", "train.ema_decay=0.5")))
    path = find_checkpoint(run)
    key = "unet.conv_in.weight"
    ema, trained = load_weights(path, "ema")[key], load_weights(path)[key]
    assert not torch.equal(ema, trained)
    assert torch.equal(load_run(run).model().state_dict()[key], ema)
    assert torch.equal(load_run(run).model(ema=False).state_dict()[key], trained)


def test_pretrained_checkpoint_loads_with_a_report(dataset, tmp_path):
    first = tmp_path / "first"
    train_run(load_config(TINY, overrides(dataset, first, "train.max_steps=2")))
    assert main(["export", str(first)]) == 0
    second = tmp_path / "second"
    cfg = load_config(TINY, overrides(dataset, second, "train.max_steps=1",
                                      f"model.ckpt_path={first / 'export' / 'checkpoint-2.pt'}"))
    from worldtune.systems.ctrl_world.recipe import RECIPE

    parts = RECIPE.build_models(cfg)
    exported = torch.load(first / "export" / "checkpoint-2.pt", weights_only=True)
    assert torch.equal(parts.model.state_dict()["unet.conv_in.weight"], exported["unet.conv_in.weight"])


def test_partial_loading_reports_and_fails_loudly(tmp_path):
    from worldtune.utils.weights import load_partial

    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    torch.save({"state_dict": {"0.weight": torch.ones(3, 2), "extra": torch.zeros(1)}}, tmp_path / "a.pt")
    report = load_partial(model, tmp_path / "a.pt")
    assert report.loaded == ["0.weight"] and "1.weight" in report.missing and report.unexpected == ["extra"]
    assert torch.equal(model[0].weight, torch.ones(3, 2))
    torch.save({"0.weight": torch.ones(5, 5)}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"b\.pt: shapes differ"):
        load_partial(model, tmp_path / "b.pt")
    torch.save({"nothing": torch.ones(1)}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"c\.pt: none of its 1 keys"):
        load_partial(model, tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"d\.pt: not a readable checkpoint"):
        load_partial(model, tmp_path / "d.pt")


def test_config_reaches_the_model(tmp_path):
    """The EDM and noise fields of `model:` and the tiny head count are the built model's, not its defaults."""
    from worldtune.systems.ctrl_world.recipe import build_world_model

    edm = {"p_mean": -1.2, "p_std": 1.2, "sigma_min": 0.01, "sigma_max": 80.0, "sigma_data": 0.2,
           "history_noise": 0.0, "cond_noise_max": 0.05, "residual": True, "relative_action_scale": 8.0}
    cfg = load_config(TINY, [f"data.dataset_root={tmp_path}", "model.tiny_num_attention_heads=2",
                             "model.relative_action_dims=[0,1,2]", *(f"model.{k}={v}" for k, v in edm.items())])
    model = build_world_model(cfg.model)
    assert {k: getattr(model.config, k) for k in edm} == edm
    assert model.config is cfg.model and list(model.config.relative_action_dims) == [0, 1, 2]
    heads = {m.heads for m in model.unet.modules() if type(m).__name__ == "Attention"}
    assert heads == {2}


def test_val_split_absent_or_empty_is_optional_a_malformed_one_is_an_error(dataset, tmp_path):
    import shutil

    from worldtune.systems.ctrl_world.recipe import RECIPE

    data = tmp_path / "sim_data"
    shutil.copytree(dataset, data)
    shutil.copytree(dataset.parent / "sim_data_meta_info", tmp_path / "sim_data_meta_info")
    val = tmp_path / "sim_data_meta_info" / "sim" / "val_sample.json"

    def build():
        return RECIPE.build(load_config(TINY, overrides(data, tmp_path / "run")))

    assert build().val_dataset is not None
    val.write_text("[]")
    assert build().val_dataset is None
    val.unlink()
    assert build().val_dataset is None
    val.write_text('{"episode_id": 0}')
    with pytest.raises(ValueError, match=r"val_sample\.json: expected a list"):
        build()


def test_demo_recipe_keeps_a_still_scene_still(tmp_path):
    """The demo's recipe (frame changes, per-view normalisation, an output that starts at "no change")
    rolls a recording in which nothing moves out at more than 40 dB after a short training."""
    from worldtune.config import build_config
    from worldtune.models.encoders.pixel import PixelLatents
    from worldtune.systems.ctrl_world.config import CtrlWorldRunConfig
    from worldtune.systems.ctrl_world.convert import convert_recordings
    from worldtune.systems.ctrl_world.demo import demo_config
    from worldtune.systems.ctrl_world.evaluate import evaluate
    from worldtune.systems.ctrl_world.recipe import RECIPE
    from worldtune.train.loop import Trainer

    generate_dataset(tmp_path / "raw", 4, seed=0, image_size=16, num_steps=30, cameras=["cam_high", "cam_left_wrist"],
                     table="gradient", rotation=0.0, show_progress=False)
    convert_recordings(tmp_path / "raw", tmp_path / "sim_data", PixelLatents(patch=2), dataset_name="sim",
                       cameras=["cam_high", "cam_left_wrist"], height=16, width=16, num_history=0, num_frames=3,
                       val_ratio=0.25, seed=0, fps_downsample=3, progress=False)
    settings = demo_config(tmp_path, 30, batch_size=4, factor=2)
    settings["log"]["progress_bar"] = False
    Trainer(build_config(CtrlWorldRunConfig, settings, source="test"), RECIPE).fit()
    report = evaluate(tmp_path / "run", chunks=4, max_episodes=1, baselines=False)
    assert report["still_scene"]["psnr"] > 40 and min(v["psnr"] for v in report["still_scene"]["per_view"]) > 40
    assert report["model"]["psnr"] < report["still_scene"]["psnr"]  # moving scenes are the hard part
