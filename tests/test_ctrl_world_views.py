"""Per-view normalisation of frame changes (stat.json `latent_delta_rms`, `model.normalise_views`,
`model.view_scales`), still clips (`model.still_prob`), the change dead zone and `zero_init_output`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldtune.config import build_config
from worldtune.data.toyenv import generate_dataset
from worldtune.models.encoders.pixel import PixelLatents
from worldtune.systems.ctrl_world import world_edm
from worldtune.systems.ctrl_world.config import CtrlWorldModelConfig, CtrlWorldRunConfig
from worldtune.systems.ctrl_world.convert import convert_recordings
from worldtune.systems.ctrl_world.dataset import meta_info_path
from worldtune.systems.ctrl_world.demo import demo_config
from worldtune.systems.ctrl_world.recipe import RECIPE
from worldtune.systems.ctrl_world.view_scales import measured_delta_rms, view_scales

CAMERAS = ["cam_high", "cam_left_wrist"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """4 toy episodes at 16 px, converted with space-to-depth x2 (train / val split 3 / 1)."""
    root = tmp_path_factory.mktemp("views")
    generate_dataset(root / "raw", 4, seed=0, image_size=16, num_steps=18, cameras=CAMERAS, table="gradient",
                     show_progress=False)
    convert_recordings(root / "raw", root / "sim_data", PixelLatents(patch=2), dataset_name="sim", cameras=CAMERAS,
                       height=16, width=16, num_history=0, num_frames=3, val_ratio=0.25, seed=0, fps_downsample=1,
                       progress=False)
    return root


def _cfg(root: Path, steps: int = 2, **model) -> CtrlWorldRunConfig:
    settings = demo_config(root, steps, image_size=16, batch_size=2, factor=2, model_overrides=model)
    settings["log"]["progress_bar"] = False
    return build_config(CtrlWorldRunConfig, settings, source="test")


def _rms_per_view(root: Path, episodes: list[str]) -> list[float]:
    """Straight from the converted per-view latent files."""
    out = []
    for view in range(len(CAMERAS)):
        changes = [torch.load(root / "sim_data" / e / "latent_videos" / str(view) / "0.pt").double().diff(dim=0)
                   for e in episodes]
        out.append(float(torch.cat([c.flatten() for c in changes]).pow(2).mean().sqrt()))
    return out


def test_converter_records_each_views_frame_change(root):
    cfg = _cfg(root)
    stat = json.loads((meta_info_path(cfg.data) / "stat.json").read_text())
    every = sorted(p.name for p in (root / "sim_data").iterdir() if p.is_dir())
    np.testing.assert_allclose(stat["latent_delta_rms"], _rms_per_view(root, every), rtol=1e-9)
    assert stat["latent_delta_rms"][1] > 2 * stat["latent_delta_rms"][0]  # the wrist view moves more
    # Folders converted before the key existed: measured on the train episodes instead.
    train = sorted({str(s["episode_id"]) for s in
                    json.loads((meta_info_path(cfg.data) / "train_sample.json").read_text())})
    np.testing.assert_allclose(measured_delta_rms(cfg), _rms_per_view(root, train), rtol=1e-6)


def test_view_scales_from_stat_json_or_the_config(root):
    cfg = _cfg(root)
    rms = json.loads((meta_info_path(cfg.data) / "stat.json").read_text())["latent_delta_rms"]
    np.testing.assert_allclose(view_scales(cfg), [0.2 / r for r in rms])  # sigma_data / rms
    assert view_scales(_cfg(root, view_scales=[1.0, 0.5])) == [1.0, 0.5]
    assert view_scales(_cfg(root, normalise_views=False)) is None
    with pytest.raises(ValueError, match="expected 2 positive factors"):
        view_scales(_cfg(root, view_scales=[1.0]))
    with pytest.raises(ValueError, match="need model.residual"):
        view_scales(_cfg(root, residual=False))


def test_a_run_keeps_the_scales_it_was_trained_with(root, tmp_path):
    """The scales are a buffer of the model: a run's checkpoint brings back its own, even when the
    dataset's stat.json changes afterwards."""
    from worldtune.train.loop import Trainer
    from worldtune.train.run import load_run

    cfg = _cfg(root)
    trained_with = view_scales(cfg)
    cfg.output_dir = str(tmp_path / "run")
    Trainer(cfg, RECIPE).fit()
    stat_path = meta_info_path(cfg.data) / "stat.json"
    original = stat_path.read_text()
    try:
        stat = json.loads(original)
        stat["latent_delta_rms"] = [1.0, 1.0]
        stat_path.write_text(json.dumps(stat))
        model = load_run(tmp_path / "run", RECIPE).model()
    finally:
        stat_path.write_text(original)
    np.testing.assert_allclose(model.view_scales.tolist(), trained_with, rtol=1e-6)


def test_the_residual_target_is_scaled_per_view(root):
    """With a zero output layer and a huge sigma the prediction is ~0, so the loss's mse is the mean
    square of the target: the wrist view's changes count 16 times with a scale of 4."""
    latents = torch.randn(2, 3, 12, 8, 4, generator=torch.Generator().manual_seed(0))  # 2 views of 4 rows
    actions = torch.zeros(2, 3, 7)
    changes = latents[:, 0:] - latents[:, :1]
    top, bottom = changes[..., :4, :].pow(2).sum(), changes[..., 4:, :].pow(2).sum()
    mse = {}
    for scales in ([1.0, 1.0], [1.0, 4.0]):
        parts = RECIPE.build_models(_cfg(root, view_scales=scales, zero_init_output=True, latent_channels=12,
                                         cfg_drop=0.0))
        model = parts.model.eval()
        out = world_edm.training_loss(model, parts.cfg.model, 0, latents, actions, sigma=torch.full((2,), 1e4),
                                      generator=torch.Generator().manual_seed(1))
        mse[scales[1]] = float(out["mse"])
    assert mse[4.0] / mse[1.0] == pytest.approx(float((top + 16 * bottom) / (top + bottom)), rel=1e-4)


def test_changes_map_to_the_model_space_and_back_with_a_dead_zone():
    model = torch.nn.Module()
    model.register_buffer("view_scales", torch.tensor([1.0, 4.0]))
    changes = torch.tensor([0.3, 0.05, -0.2, 0.01]).view(1, 1, 1, 4, 1)  # rows 0-1: view 0, rows 2-3: view 1
    scaled = world_edm.changes_to_model_space(model, changes)
    np.testing.assert_allclose(scaled.flatten(), [0.3, 0.05, -0.8, 0.04])
    exact = CtrlWorldModelConfig(sigma_data=0.2, change_deadzone=0.0)
    torch.testing.assert_close(world_edm.changes_from_model_space(model, exact, scaled), changes)
    # Dead zone 0.5 x sigma_data = 0.1 in the model's space: view 0's 0.05 and view 1's 0.04 (0.01 of
    # the latent) are no change at all.
    dead = CtrlWorldModelConfig(sigma_data=0.2, change_deadzone=0.5)
    np.testing.assert_allclose(world_edm.changes_from_model_space(model, dead, scaled).flatten(), [0.3, 0.0, -0.2, 0.0])
    with pytest.raises(ValueError, match="view_scales for 2 views"):
        world_edm.changes_to_model_space(model, torch.zeros(1, 1, 1, 3, 1))


def test_still_clips_hold_the_current_frame_and_action():
    latents = torch.randn(64, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    actions = torch.randn(64, 4, 7, generator=torch.Generator().manual_seed(1))
    held, held_actions = world_edm.hold_still(latents, actions, 1, 0.5, torch.Generator().manual_seed(2))
    still = (held == held[:, 1:2]).flatten(1).all(1)
    assert 16 < int(still.sum()) < 48  # about half
    assert torch.equal(held[~still], latents[~still]) and torch.equal(held_actions[~still], actions[~still])
    assert torch.equal(held_actions[still], actions[still][:, 1:2].expand(-1, 4, -1))
    assert torch.equal(world_edm.hold_still(latents, actions, 1, 0.0)[0], latents)


def test_zero_init_output_starts_at_no_change(root):
    model = RECIPE.build_models(_cfg(root, zero_init_output=True)).model
    assert not model.unet.conv_out.weight.any() and not model.unet.conv_out.bias.any()
    assert RECIPE.build_models(_cfg(root)).model.unet.conv_out.weight.any()
