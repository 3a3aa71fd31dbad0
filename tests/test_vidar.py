"""Vidar stage 1 end to end on a tiny random Wan2.2-TI2V, on episodes in the seed's layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, step_metric, subprocess_env, train_then_kill
from episode_fixtures import write_dataset, write_episode
from worldtune.cli import main
from worldtune.data.video import probe_video, read_frames
from worldtune.models.wan.factory import build_wan
from worldtune.systems import load_config, train_run
from worldtune.train import checkpoint as ckpt
from worldtune.train.export import load_weights

TINY = REPO / "configs" / "vidar" / "tiny.yaml"
SHORT = ["train.max_steps=6", "checkpoint.every_steps=2", "validation.every_steps=6"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vidar_data")
    write_dataset(root, n_episodes=4, num_frames=30, fps=10, size=(64, 64))
    # Prompts of different token lengths in one batch (cached embeddings are [L_i, dim]).
    write_episode(root, "ep_long", num_frames=30, fps=10, size=(64, 64),
                  instruction="pick up the red cube and put it into the blue bowl slowly")
    assert main(["prepare", "manifest", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("vidar_ref") / "run"
    train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={run}", *SHORT]))
    return run


def test_kill_resume_export_and_generate(data_dir, reference, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY), f"data.data_dir={data_dir}",
               f"output_dir={run}", *SHORT]
    train_then_kill(command, run, 3)
    assert max(step_metric(run)) < 6
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(reference)
    assert sorted(p.name for p in (run / "samples").glob("*.mp4")) == ["train_steps_6_0.mp4"]

    # vidar.pt: the DiT state dict in original Wan names, loadable with strict=False.
    assert main(["export", str(run)]) == 0
    state = torch.load(run / "export" / "vidar.pt", weights_only=True)
    fresh = build_wan("tiny-ti2v")
    report = fresh.load_state_dict(state, strict=False)
    assert not report.missing_keys and not report.unexpected_keys
    trained = build_wan("tiny-ti2v")
    trained.load_state_dict(load_weights(ckpt.latest_checkpoint(run)))
    x, t, text = torch.randn(1, 48, 3, 4, 4), torch.tensor([400.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x, t, text), trained(x, t, text))

    image = tmp_path / "first.png"
    _write_png(image)
    out = tmp_path / "generated.mp4"
    assert main(["generate", "vidar", "--run", str(run), "--prompt", "pick up the cube", "--image", str(image),
                 "--frames", "13", "--steps", "2", "--out", str(out)]) == 0
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height, info.fps) == (13, 64, 64, 10.0)
    # The same from the config file and the exported vidar.pt: the same video, frame for frame.
    again = tmp_path / "again.mp4"
    assert main(["generate", "vidar", "--config", str(TINY), "--weights", str(run / "export" / "vidar.pt"),
                 "--prompt", "pick up the cube", "--image", str(image), "--frames", "13", "--steps", "2",
                 "--out", str(again)]) == 0
    assert np.array_equal(read_frames(again, range(13)), read_frames(out, range(13)))


def test_cached_training_reads_no_video_and_matches(data_dir, reference, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert main(["prepare", "cache", str(TINY), f"data.data_dir={data_dir}", f"data.cache_dir={cache}"]) == 0
    import av

    real_open = av.open

    def no_video_reads(file, mode="r", *args, **kwargs):
        if mode == "r":
            raise AssertionError(f"{file} was opened for reading during cached training")
        return real_open(file, mode, *args, **kwargs)  # writing validation videos is fine

    monkeypatch.setattr(av, "open", no_video_reads)
    run = tmp_path / "cached"
    train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={run}", f"data.cache_dir={cache}",
                               *SHORT]))
    assert step_metric(run) == step_metric(reference)


def test_stale_cache_is_detected(data_dir, tmp_path):
    cache = tmp_path / "cache"
    assert main(["prepare", "cache", str(TINY), f"data.data_dir={data_dir}", f"data.cache_dir={cache}",
                 "data.height=32", "data.width=32"]) == 0
    from worldtune.data.cache import StaleCacheError

    with pytest.raises(StaleCacheError, match="prepare cache"):
        train_run(load_config(TINY, [f"data.data_dir={data_dir}", f"output_dir={tmp_path / 'run'}",
                                   f"data.cache_dir={cache}", "train.max_steps=1"]))


def test_bad_episodes_error_or_skip(tmp_path, capsys):
    root = tmp_path / "data"
    write_dataset(root, n_episodes=3, num_frames=30, fps=10, size=(64, 64))
    write_episode(root, "ep_short", num_frames=5, fps=10, size=(64, 64))
    overrides = [f"data.data_dir={root}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2",
                 "validation.every_steps=0"]
    assert main(["train", str(TINY), *overrides]) == 1
    assert "ep_short" in capsys.readouterr().err
    result = train_run(load_config(TINY, [*overrides, "data.on_bad_sample=skip"]))
    assert result.step == 2
    assert "ep_short" in capsys.readouterr().err


def test_finetune_config_builds_the_published_5b_dit():
    cfg = load_config(REPO / "configs" / "vidar" / "vidar_finetune.yaml")
    assert (cfg.train.max_steps, cfg.train.learning_rate, cfg.train.warmup_steps) == (14000, 2e-5, 200)
    assert (cfg.train.betas, cfg.train.eps, cfg.train.weight_decay) == ([0.9, 0.999], 1e-8, 0.1)
    assert (cfg.data.num_frames, cfg.data.fps, cfg.data.width, cfg.data.height) == (81, 10, 736, 640)
    assert cfg.model.cfg_prob == 0.1 and cfg.train.batch_size * cfg.train.gradient_accumulation * 8 == 128
    model = build_wan(cfg.model.size, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 4_999_787_712
    h200 = load_config(REPO / "configs" / "vidar" / "vidar_2xh200.yaml")
    assert h200.train.batch_size * h200.train.gradient_accumulation * 2 == 128
    assert h200.dist.activation_checkpointing and h200.dist.mixed_precision == "bf16"


def _write_png(path: Path) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((48, 80, 3)) * 255).astype("uint8")).save(path)
