"""Vidarc end to end on tiny random models: stage 1 -> vidar.pt -> stage 2 (teacher and self
forcing, the IDM's mask in the loss) -> kill and resume -> vidarc.pt -> generate, open and closed loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, step_metric, subprocess_env, train_then_kill
from episode_fixtures import write_dataset
from worldtune.cli import main
from worldtune.config import ConfigError
from worldtune.data.video import probe_video
from worldtune.models.wan.factory import build_wan
from worldtune.systems import load_config, train_run

STAGE1 = REPO / "configs" / "vidar" / "tiny.yaml"
TINY = REPO / "configs" / "vidar" / "vidarc_tiny.yaml"
SHORT = ["train.max_steps=6", "checkpoint.every_steps=2", "validation.every_steps=6"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vidarc_data")
    write_dataset(root, n_episodes=4, num_frames=30, fps=10, size=(64, 64))
    assert main(["prepare", "manifest", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def vidar_pt(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vidar_stage1") / "run"
    train_run(load_config(STAGE1, [f"data.data_dir={data_dir}", f"output_dir={run}", "train.max_steps=2",
                                   "checkpoint.every_steps=2", "validation.every_steps=0"]))
    assert main(["export", str(run)]) == 0
    return run / "export" / "vidar.pt"


def stage2(data_dir: Path, vidar_pt: Path, run: Path, *extra: str) -> list[str]:
    return [f"data.data_dir={data_dir}", f"model.pt_dir={vidar_pt}", f"output_dir={run}", *SHORT, *extra]


@pytest.fixture(scope="module")
def reference(data_dir, vidar_pt, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vidarc_ref") / "run"
    train_run(load_config(TINY, stage2(data_dir, vidar_pt, run)))
    return run


def test_kill_resume_export_and_generate(data_dir, vidar_pt, reference, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY), *stage2(data_dir, vidar_pt, run)]
    train_then_kill(command, run, 3)
    assert max(step_metric(run)) < 6
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(reference)
    names = set().union(*[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()])
    assert {"train/mse_loss", "train/block_loss/01", "train/block_loss/02"} <= names
    assert sorted(p.name for p in (run / "samples").glob("*.mp4")) == ["train_steps_6_0.mp4"]

    # vidarc.pt: the DiT in original Wan names, loadable over the base with strict=False as the seed does.
    assert main(["export", str(run)]) == 0
    state = torch.load(run / "export" / "vidarc.pt", weights_only=True)
    report = build_wan("tiny-ti2v").load_state_dict(state, strict=False)
    assert not report.missing_keys and not report.unexpected_keys

    image = tmp_path / "first.png"
    _write_png(image)
    out = tmp_path / "open.mp4"
    generate = ["generate", "vidarc", "--run", str(run), "--prompt", "pick up the cube", "--image", str(image),
                "--frames", "13", "--steps", "2"]
    assert main([*generate, "--out", str(out)]) == 0
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height) == (13, 64, 64)
    closed = tmp_path / "closed.mp4"
    observed = data_dir / "episodes" / "ep_0000" / "video.mp4"
    assert main([*generate, "--out", str(closed), "--observe", str(observed)]) == 0
    assert probe_video(closed).num_frames == 13
    from worldtune.data.video_write import write_video
    from worldtune.systems.vidarc.generate import read_observed

    small = write_video(tmp_path / "small.mp4", np.zeros((13, 32, 32, 3), np.uint8), fps=10)
    with pytest.raises(ValueError, match="small.mp4: observed frames are 32x32, the model generates 64x64"):
        read_observed(small, 64, 64, 13)


@pytest.fixture(scope="module")
def idm_pt(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("idm") / "run"
    train_run(load_config(REPO / "configs" / "idm" / "tiny.yaml", [
        f"data.data_dir={data_dir}", f"output_dir={run}", "data.action_dim=14", "model.output_dim=14",
        "train.max_steps=2", "checkpoint.every_steps=2", "validation.every_steps=0"]))
    assert main(["export", str(run)]) == 0
    return run / "export" / "idm.pt"


def test_self_forcing_with_the_idm_mask(data_dir, vidar_pt, idm_pt, tmp_path):
    run = tmp_path / "self"
    train_run(load_config(TINY, stage2(data_dir, vidar_pt, run, "self_forcing.mode=self", "train.max_steps=3",
                                       "loss.embodiment_aware=true", f"loss.idm_path={idm_pt}",
                                       "validation.every_steps=0")))
    losses = step_metric(run, "train/mse_loss")
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(v) and v > 0 for v in losses.values())
    # Eq. 7's weights 1 + eta * U are >= 1 and above 1 where the mask is on: the same first step
    # without them gives a smaller loss.
    plain = tmp_path / "plain"
    train_run(load_config(TINY, stage2(data_dir, vidar_pt, plain, "self_forcing.mode=self", "train.max_steps=1",
                                       "validation.every_steps=0")))
    assert step_metric(plain, "train/mse_loss")[1] < losses[1]


TINY_SIZES = ["model.ckpt_dir=null", "model.size=tiny-ti2v", "model.vae=tiny", "model.text_encoder=tiny",
              "model.encoder_dtype=fp32", "data.num_frames=9", "data.height=64", "data.width=64",
              "train.batch_size=2", "train.max_steps=1", "dist.mixed_precision=fp32", "validation.every_steps=0"]


def test_the_seeds_own_yaml_files_load_and_train(data_dir, vidar_pt, idm_pt, tmp_path):
    """configs/vidar/seed/: the seed's two files as written (no recipe, its keys); only paths and the
    sizes of a CPU test are given on the command line."""
    seed = REPO / "configs" / "vidar" / "seed"
    stage1 = load_config(seed / "vidar_finetune.yaml", [f"data.data_dir={data_dir}", f"output_dir={tmp_path / 's1'}",
                                                        *TINY_SIZES])
    assert (stage1.recipe, stage1.train.max_steps, stage1.train.learning_rate) == ("vidar", 1, 2e-5)
    assert stage1.train.freeze == ["t5", "vae"] and stage1.output.save_path == "checkpoints/vidar/vidar.pt"
    train_run(stage1)
    stage2_cfg = load_config(seed / "vidarc_causal.yaml", [
        f"data.data_dir={data_dir}", f"output_dir={tmp_path / 's2'}", f"model.pt_dir={vidar_pt}",
        f"loss.idm_path={idm_pt}", "self_forcing.chunk_size=3", *TINY_SIZES])
    assert stage2_cfg.recipe == "vidarc" and stage2_cfg.loss.embodiment_aware and stage2_cfg.loss.eta == 3.0
    assert stage2_cfg.self_forcing.kv_cache_length == 64
    train_run(stage2_cfg)
    assert sorted(step_metric(tmp_path / "s2")) == [1]
    assert load_config(seed / "vidarc_causal.yaml", [f"data.data_dir={data_dir}", f"loss.idm_path={idm_pt}"]
                       ).output_dir == "runs/vidarc"
    with pytest.raises(ConfigError, match="embodiment_aware needs loss.idm_path"):
        load_config(seed / "vidarc_causal.yaml", [f"data.data_dir={data_dir}"])


def test_bad_settings_are_named(data_dir, vidar_pt, tmp_path):
    with pytest.raises(ConfigError, match="chunk_size 5 is more than the 3 latent frames"):
        train_run(load_config(TINY, stage2(data_dir, vidar_pt, tmp_path / "a", "self_forcing.chunk_size=5")))
    with pytest.raises(ConfigError, match="kv_cache_length \\(2\\) must be at least sink_size \\+ 1"):
        load_config(TINY, stage2(data_dir, vidar_pt, tmp_path / "b", "self_forcing.kv_cache_length=2",
                                 "self_forcing.sink_size=2"))
    with pytest.raises(ConfigError, match="embodiment_aware needs loss.idm_path"):
        load_config(TINY, stage2(data_dir, vidar_pt, tmp_path / "c", "loss.embodiment_aware=true"))
    other = tmp_path / "other.pt"  # a Wan2.1 T2V DiT's weights given as vidar.pt
    torch.save(build_wan("tiny").state_dict(), other)
    with pytest.raises(ValueError, match=r"other.pt: shapes differ from the model[\s\S]*patch_embedding.weight"):
        train_run(load_config(TINY, stage2(data_dir, other, tmp_path / "e")))
    with pytest.raises(ConfigError, match="WanModelCausal is stage 2: recipe vidarc"):
        train_run(load_config(STAGE1, [f"data.data_dir={data_dir}", "model.model_class=WanModelCausal",
                                       f"output_dir={tmp_path / 'd'}"]))


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 120, dtype=np.uint8)).save(path)


def test_controller_streams_pixels_and_takes_observations(data_dir, vidar_pt):
    from worldtune.systems.vidarc.controller import VidarcController

    cfg = load_config(TINY, [f"data.data_dir={data_dir}", f"model.pt_dir={vidar_pt}", "output_dir=unused"])
    controller = VidarcController.from_config(cfg, prompt="pick up the cube", first_frame=torch.zeros(3, 64, 64),
                                              device="cpu")
    frames = controller.step()
    assert frames.shape == (3, 4, 64, 64)
    following = controller.step(observed_frames=torch.rand(3, 4, 64, 64) * 2 - 1)
    assert following.shape == (3, 4, 64, 64) and len(controller.session.latencies) == 2
    with pytest.raises(ValueError, match="observed frames \\(3, 4, 32, 32\\) do not match"):
        controller.step(observed_frames=torch.zeros(3, 4, 32, 32))


def test_the_latent_cache_holds_the_idm_mask(data_dir, vidar_pt, idm_pt, tmp_path):
    """`prepare cache` with embodiment_aware stores U(x) beside the latents: training from the cache
    gives the losses training from the videos gives; a cache built without masks is refused."""
    common = [f"loss.idm_path={idm_pt}", "loss.embodiment_aware=true", "train.max_steps=2", "validation.every_steps=0"]
    cache = tmp_path / "cache"
    assert main(["prepare", "cache", str(TINY), f"data.data_dir={data_dir}", f"data.cache_dir={cache}",
                 f"model.pt_dir={vidar_pt}", *common]) == 0
    runs = {}
    for name, extra in (("videos", []), ("cache", [f"data.cache_dir={cache}"])):
        runs[name] = tmp_path / name
        train_run(load_config(TINY, stage2(data_dir, vidar_pt, runs[name], *common, *extra)))
    videos, cached = step_metric(runs["videos"]), step_metric(runs["cache"])
    assert sorted(videos) == sorted(cached) == [1, 2]
    assert all(abs(videos[s] - cached[s]) <= 1e-4 * abs(videos[s]) for s in videos)
    plain = tmp_path / "plain"
    assert main(["prepare", "cache", str(TINY), f"data.data_dir={data_dir}", f"data.cache_dir={plain}",
                 f"model.pt_dir={vidar_pt}"]) == 0
    from worldtune.data.errors import StaleCacheError

    with pytest.raises(StaleCacheError, match="idm_mask"):
        train_run(load_config(TINY, stage2(data_dir, vidar_pt, tmp_path / "stale", *common,
                                           f"data.cache_dir={plain}")))
