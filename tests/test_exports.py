"""What a user hands on after training: exported and converted files (their mode, the Wan config.json
beside them), `worldtune convert` of an export, and `generate --weights` saying what it loaded."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import torch

from conftest import REPO
from episode_fixtures import write_dataset
from wan_helpers import run_forward
from worldtune.cli import main
from worldtune.models.wan.factory import build_wan, load_wan
from worldtune.models.wan.saving import save_diffusers, save_original
from worldtune.systems import load_config, train_run
from worldtune.utils.weight_files import save_safetensors

TINY = REPO / "configs" / "vidar" / "tiny.yaml"


@pytest.fixture
def umask():
    """Set a umask for the test (returned), restored afterwards."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_safetensors_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    assert _mode(save_safetensors({"a": torch.zeros(2)}, tmp_path / "a.safetensors")) == expected
    state = build_wan("tiny").state_dict()
    written = save_original(state, tmp_path / "orig", shard_size="20KB", config={"model_type": "t2v"})
    written += save_diffusers(state, tmp_path / "diff", {"model_type": "t2v", "dim": 24, "num_heads": 2,
                                                        "ffn_dim": 32, "num_layers": 2, "text_dim": 32})
    assert len(written) > 4 and {p.name for p in written} >= {"diffusion_pytorch_model.safetensors.index.json"}
    assert {path.name: _mode(path) for path in written} == {path.name: expected for path in written}


@pytest.fixture(scope="module")
def vidar_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vidar_export")
    data = write_dataset(root / "data", n_episodes=3, num_frames=12, fps=10, size=(64, 64))
    run = root / "run"
    train_run(load_config(TINY, [f"data.data_dir={data}", f"output_dir={run}", "train.max_steps=1", "train.batch_size=1",
                                 "checkpoint.every_steps=0", "validation.every_steps=0"]))
    return run


def test_vidar_export_has_config_and_converts(vidar_run, tmp_path, umask, capsys):
    assert main(["export", str(vidar_run)]) == 0
    export = vidar_run / "export"
    files = {p.name: _mode(p) for p in export.iterdir()}
    assert files == {"vidar.safetensors": 0o644, "vidar.pt": 0o644, "config.json": 0o644}
    # The export is a model folder: it loads (config.json gives the size) and converts as it is.
    model, report = load_wan(export)
    assert not report.missing and model.config.in_dim == 48
    run_forward(model)
    capsys.readouterr()
    assert main(["convert", str(export), str(tmp_path / "diffusers"), "--to", "diffusers"]) == 0
    converted, _ = load_wan(tmp_path / "diffusers", config=model.config)  # (diffusers configs have no text_len)
    assert torch.equal(run_forward(converted), run_forward(model))
    assert {_mode(p) for p in (tmp_path / "diffusers").iterdir()} == {0o644}


def test_convert_without_a_config_names_the_flag(tmp_path, capsys):
    torch.save(build_wan("tiny").state_dict(), tmp_path / "bare.pt")
    assert main(["convert", str(tmp_path / "bare.pt"), str(tmp_path / "out"), "--to", "diffusers"]) != 0
    err = capsys.readouterr().err
    assert "--size wan2.2-ti2v-5b" in err and "size='" not in err
    assert main(["convert", str(tmp_path / "bare.pt"), str(tmp_path / "out"), "--to", "diffusers",
                 "--size", "tiny"]) == 0


def _generate(weights: Path, image: Path, out: Path) -> int:
    return main(["generate", "vidar", "--config", str(TINY), "--weights", str(weights), "--prompt", "pick it up",
                 "--image", str(image), "--frames", "5", "--steps", "1", "--out", str(out)])


def test_generate_with_weights_reports_what_it_loaded(vidar_run, tmp_path, caplog):
    from PIL import Image

    assert main(["export", str(vidar_run)]) == 0
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    weights = vidar_run / "export" / "vidar.pt"
    total = len(torch.load(weights, weights_only=True))
    with caplog.at_level(logging.INFO, logger="worldtune"):
        assert _generate(weights, image, tmp_path / "a.mp4") == 0
    assert f"vidar.pt: loaded {total} of {total} model tensors" in caplog.text
    assert "random weights" not in caplog.text

    # Weights for part of the DiT: the rest is named as random, in a warning.
    partial = {k: v for k, v in torch.load(weights, weights_only=True).items() if k.startswith("blocks.")}
    torch.save(partial, tmp_path / "blocks.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="worldtune"):
        assert _generate(tmp_path / "blocks.pt", image, tmp_path / "b.mp4") == 0
    assert f"loaded {len(partial)} of {total}" in caplog.text
    assert f"{total - len(partial)} DiT tensors not in {tmp_path / 'blocks.pt'} start from random weights" in caplog.text
