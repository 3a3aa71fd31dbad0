"""Sim-Physics end to end on scenes in the seed layout: stage 1 leaves the DiT bitwise unchanged,
stage 2 changes only LoRA and the heads, kill and resume (bitwise), export with the original's files
(and loading them back), eval against the baselines, generate, the metadata command."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, step_metric, subprocess_env, train_then_kill
from sim_physics_fixtures import write_scene
from worldtune.cli import main
from worldtune.systems import load_config, train_run
from worldtune.train.export import load_weights

TINY = REPO / "configs" / "physics" / "tiny.yaml"
HEADS = ("motion_head.", "depth_head.")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("physics_data")
    for i, velocity in enumerate([(2, 1), (1, 2), (-1, 1)]):
        write_scene(root, f"test_scene_{i}/env_0/0/0", frames=20, size=(64, 64), start=(20, 20), velocity=velocity)
    return root


def test_heads_keep_the_original_keys_and_convert_both_ways():
    from worldtune.models.wan.physics import (
        WanPhysicsModel,
        from_original_motion_head,
        to_original_motion_head,
    )
    from worldtune.models.wan.sizes import wan_config

    model = WanPhysicsModel(wan_config("tiny-ti2v"))
    motion = {k[len("motion_head."):]: v for k, v in model.state_dict().items() if k.startswith("motion_head.")}
    assert sorted(motion) == ["head.bias", "head.weight", "modulation", ] and not motion["modulation"].any()
    original = to_original_motion_head(motion, (1, 2, 2))
    assert original["head.weight"].shape == (16, 24)  # 4 channels x 2x2 patch, as the original's motion_head.pth
    assert all(torch.equal(from_original_motion_head(original, (1, 2, 2))[k], motion[k]) for k in motion)
    assert model.depth_head.head.weight.shape == (4, 24)


def test_stages_kill_resume_export_reload_eval_generate(scenes, tmp_path):
    overrides = [f"data.dataset_base_path={scenes}"]
    uninterrupted = tmp_path / "uninterrupted"
    train_run(load_config(TINY, [*overrides, f"output_dir={uninterrupted}"]))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "worldtune.cli", "train", str(TINY), *overrides, f"output_dir={run}"]
    train_then_kill(command, run, 3)
    assert max(step_metric(run)) < 6
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True)
    assert step_metric(run) == step_metric(uninterrupted)
    assert step_metric(run, "val/motion/epe") and step_metric(run, "val/depth/median_abs_rel")

    initial = _initial_weights(run)
    stage1, stage2 = (load_weights(run / "checkpoints" / f"step_{s:08d}") for s in (2, 6))
    frozen = [k for k in initial if not k.startswith(HEADS)]
    assert all(torch.equal(stage1[k], initial[k]) for k in frozen)  # stage 1: the DiT bitwise unchanged
    assert not torch.equal(stage1["motion_head.head.weight"], initial["motion_head.head.weight"])
    changed = {k for k in initial if not torch.equal(stage2[k], stage1[k])}
    assert changed and all(k.startswith(HEADS) or ".lora_" in k for k in changed)  # stage 2: LoRA and heads only
    assert any(".lora_" in k for k in changed)

    assert main(["export", str(run)]) == 0
    final = run / "export" / "final"
    motion = torch.load(final / "motion_head.pth", weights_only=True)
    assert sorted(motion) == ["head.bias", "head.weight", "modulation"] and motion["head.weight"].shape == (16, 24)
    lora = torch.load(final / "lora_weights.pth", weights_only=True)
    assert lora and all(".lora_" in k and k.startswith("blocks.") for k in lora)
    from worldtune.systems.physics.recipe import RECIPE

    model = RECIPE.build_models(load_config(TINY, [*overrides, f"model.pt_dir={final}"])).model
    reloaded = model.state_dict()
    assert all(torch.equal(reloaded[k], stage2[k]) for k in stage2 if k.startswith(HEADS) or ".lora_" in k)
    out = model(torch.randn(1, 48, 3, 4, 4), torch.tensor([300.0]), torch.randn(1, 32, 32))  # and it runs
    assert out.motion.shape == (1, 2, 3, 4, 4) and torch.isfinite(out.log_depth).all()

    report_path = tmp_path / "eval.json"
    assert main(["eval", "physics", str(run), "--split", "all", "--json", str(report_path),
                 "--videos", str(tmp_path / "videos")]) == 0
    metrics = json.loads(report_path.read_text())["metrics"]
    assert {"motion/epe", "motion/zero_epe", "motion/epe_still", "depth/abs_rel", "depth/delta1", "depth/median_abs_rel",
            "depth/median_delta1", "video/mse_loss", "video/base_mse_loss"} <= set(metrics)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 3

    from PIL import Image

    Image.new("RGB", (64, 64), (60, 90, 120)).save(tmp_path / "first.png")
    out = tmp_path / "gen.mp4"
    assert main(["generate", "physics", "--run", str(run), "--image", str(tmp_path / "first.png"),
                 "--prompt", "A physics simulation of ball collide", "--out", str(out)]) == 0
    assert np.load(tmp_path / "gen_motion.npy").shape == (2, 3, 64, 64)
    assert np.load(tmp_path / "gen_depth.npy").shape == (3, 64, 64) and (tmp_path / "gen_physics.mp4").is_file()


def _initial_weights(run: Path) -> dict[str, torch.Tensor]:
    from worldtune.systems.physics.recipe import RECIPE
    from worldtune.train.rng import seed_all
    from worldtune.train.run import load_run

    cfg = load_run(run, RECIPE).cfg
    seed_all(cfg.seed)
    return {k: v.clone() for k, v in RECIPE.build_models(cfg).model.state_dict().items()}


@pytest.mark.parametrize("kind", ["simple", "full"])
def test_spatiotemporal_heads_start_per_frame_and_learn_across_frames(kind):
    """The temporal modules start as the identity (each frame's output its own), and once trained
    a frame's output depends on the others."""
    from worldtune.models.wan.physics_heads import SpatioTemporalHead
    from worldtune.models.wan.sizes import wan_config

    torch.manual_seed(0)
    grid, dim = (5, 8, 8), 32
    head = SpatioTemporalHead(dim, 2, (1, 2, 2), kind=kind, features=16)
    model = _with_head_init(head)
    tokens, e = torch.randn(2, 5 * 64, dim), torch.randn(2, 1, dim)
    later = tokens.clone()
    later[:, 3 * 64:4 * 64] += torch.randn(2, 64, dim)  # frame 3 changes
    first_frame = slice(0, 64)
    out = model(tokens, e, grid)
    assert out.shape == (2, 5 * 64, 8) and out.abs().max() < 1.0  # small last layer, as the plain heads
    assert torch.allclose(model(later, e, grid)[:, first_frame], out[:, first_frame], atol=1e-6)
    for name, param in model.named_parameters():
        if name.endswith("proj_out.weight"):
            torch.nn.init.normal_(param, std=0.1)  # as training moves them
    assert not torch.allclose(model(later, e, grid)[:, first_frame], model(tokens, e, grid)[:, first_frame], atol=1e-4)
    assert model.modulation.dtype == torch.float32 and not [b for b in model.buffers()]  # no RoPE buffer to break

    from worldtune.models.wan.physics import HeadKinds, WanPhysicsModel

    physics = WanPhysicsModel(wan_config("tiny-ti2v"), HeadKinds(motion=kind, depth=kind, features=16))
    assert isinstance(physics.motion_head, SpatioTemporalHead) and not physics.motion_head.modulation.any()
    result = physics(torch.randn(1, 48, 3, 4, 4), torch.tensor([300.0]), torch.randn(1, 32, 32))
    assert result.motion.shape == (1, 2, 3, 4, 4) and result.log_depth.shape == (1, 1, 3, 4, 4)


def _with_head_init(head):
    """The head initialised by its own rules (as WanPhysicsModel does), torch defaults elsewhere."""
    with torch.no_grad():
        for name, param in head.named_parameters():
            module_name, _, attr = name.rpartition(".")
            rule = head.init_rule(module_name, attr)
            if rule is not None:
                param.copy_(rule(torch.empty_like(param), torch.Generator().manual_seed(0)))
    return head


def test_spatiotemporal_heads_train_export_and_reload_with_the_seed_switches(scenes, tmp_path):
    from worldtune.config import ConfigError, seed_flag_overrides

    _, flags = seed_flag_overrides(["--use_spatiotemporal_motion", "--use_spatiotemporal_depth",
                                    "--spatiotemporal_depth_type", "simple", "--full_res_heads"])
    overrides = [f"data.dataset_base_path={scenes}", f"output_dir={tmp_path / 'run'}", *flags,
                 "model.spatiotemporal_features=16", "validation.every_steps=0", "checkpoint.every_steps=0"]
    cfg = load_config(TINY, overrides)
    assert (cfg.model.use_spatiotemporal_motion, cfg.model.spatiotemporal_motion_type) == (True, "full")
    assert (cfg.model.spatiotemporal_depth_type, cfg.model.full_res_heads) == ("simple", True)
    train_run(cfg)
    trained = load_weights(tmp_path / "run" / "checkpoints" / "step_00000006")
    assert any(k.startswith("motion_head.temporal_modules.3.") for k in trained)
    assert any(k.startswith("depth_head.temporal.blocks.1.") for k in trained)
    assert main(["export", str(tmp_path / "run")]) == 0
    final = tmp_path / "run" / "export" / "final"
    motion = torch.load(final / "motion_head.pth", weights_only=True)
    assert motion["output_conv.1.weight"].shape[0] == 16  # 4 channels (2-3 zero) x 2x2 patch, as the original's
    from worldtune.systems.physics.recipe import RECIPE

    model = RECIPE.build_models(load_config(TINY, [*overrides, f"model.pt_dir={final}"])).model
    reloaded = model.state_dict()
    assert all(torch.equal(reloaded[k], trained[k]) for k in trained if k.startswith(HEADS))
    out = model(torch.randn(1, 48, 3, 4, 4), torch.tensor([300.0]), torch.randn(1, 32, 32))  # and it runs
    assert out.motion.shape == (1, 2, 3, 4, 4) and torch.isfinite(out.motion).all()
    with pytest.raises(ConfigError, match="model.spatiotemporal_depth_type must be simple or full"):
        load_config(TINY, [*overrides, "model.spatiotemporal_depth_type=dpt"])


def test_prepare_metadata_command(scenes, tmp_path):
    out = tmp_path / "sim_physics_metadata.csv"
    assert main(["prepare", "sim-physics-metadata", str(scenes), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["video"] for r in rows] == [f"test_scene_{i}/env_0/0/0" for i in range(3)]
    assert rows[0]["prompt"] == "A physics simulation of scene 0"


def test_trained_heads_beat_zero_motion_and_the_clip_median_on_held_out_scenes(tmp_path):
    """Boxes sliding over a ground plane whose shade says how far it is, each box's colour saying
    which way it slides; pixels as latents (no trained VAE in between), DiT and heads trained 300
    steps with the balanced motion loss on lightly noised clips. On held-out scenes the motion beats
    predicting none on the moving pixels by a clear margin and over all pixels, and depth clearly
    beats each clip's median. (Reading a direction from the frames alone, with no colour to say it,
    is beyond this budget: issue 17's notes in docs/architecture.md.)"""
    from sim_physics_fixtures import write_coloured_dataset

    data = write_coloured_dataset(tmp_path / "data", scenes=10)
    held_out = [f"test_slide_{i:02d}" for i in range(4)]  # one of each colour
    run = tmp_path / "run"
    stages = "train.training_stages"
    train_run(load_config(TINY, [
        f"data.dataset_base_path={data}", f"output_dir={run}", f"data.val_scenes=[{','.join(held_out)}]",
        "model.vae=pixels:4", "data.target_stride=1", "model.full_res_heads=false", "loss.heads_max_sigma=0.3",
        "train.batch_size=4", f"{stages}.stage_1.max_steps=300", f"{stages}.stage_1.trainable_models=dit,heads",
        f"{stages}.stage_2.max_steps=1", "validation.every_steps=0", "checkpoint.every_steps=0",
        "log.progress_bar=false"]))
    report = tmp_path / "eval.json"
    assert main(["eval", "physics", str(run), "--split", "val", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    m = result["metrics"]
    assert result["scenes"] == 4
    assert m["motion/epe_moving"] < 0.6 * m["motion/zero_epe_moving"], m
    assert m["motion/epe"] < m["motion/zero_epe"], m
    assert m["depth/abs_rel"] < 0.5 * m["depth/median_abs_rel"], m
    assert m["depth/delta1"] > m["depth/median_delta1"] + 0.3, m


def test_the_seed_flags():
    from worldtune.config import ConfigError, seed_flag_overrides

    config, overrides = seed_flag_overrides([
        "--config", str(TINY), "--dataset_base_path", "/scenes", "--dataset_metadata_path", "meta.csv",
        "--dataset_preset", "magic_physics", "--training_mode", "heads_only", "--motion_loss_weight", "0.5",
        "--warp_loss_weight", "0.2", "--save_steps", "500", "--gradient_accumulation_steps", "8", "--num_frames", "49"])
    cfg = load_config(config, overrides)
    assert (cfg.data.dataset_base_path, cfg.data.dataset_metadata_path, cfg.data.dataset_preset) == (
        "/scenes", "meta.csv", "magic_physics")
    assert cfg.train.trainable_models == "heads" and cfg.loss.motion_loss_weight == 0.5 and cfg.loss.warp_loss_weight == 0.2
    assert cfg.checkpoint.every_steps == 500 and cfg.train.gradient_accumulation == 8 and cfg.data.num_frames == 49
    assert cfg.data.folders() == ("rgb_capture", "motion_vectors_capture", "distance_to_camera_capture")
    with pytest.raises(ConfigError, match="--training_mode: one of heads_only, lora, full"):
        seed_flag_overrides(["--training_mode", "everything"])


def test_torchrun_two_ranks_run_both_stages(scenes, tmp_path):
    """FSDP2 over 2 ranks (the model returns velocity, motion and depth together); export reads the
    sharded checkpoint."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "worldtune.cli", "train",
               str(TINY), f"data.dataset_base_path={scenes}", f"output_dir={run}", "train.batch_size=1",
               "validation.every_steps=0"]
    subprocess.run(command, env=subprocess_env(), check=True, capture_output=True, timeout=300)
    assert max(step_metric(run)) == 6 and all(np.isfinite(v) for v in step_metric(run, "train/motion_loss").values())
    assert main(["export", str(run)]) == 0 and (run / "export" / "final" / "lora_weights.pth").is_file()


def test_targets_pooled_to_the_latent_grid(scenes):
    """`model.full_res_heads: false`: the targets come down to the heads' grid instead (motion averaged
    per cell in frame pixels, depth the geometric mean of the valid pixels)."""
    from worldtune.systems.physics.recipe import RECIPE, at_latent_grid

    cfg = load_config(TINY, [f"data.dataset_base_path={scenes}", "model.full_res_heads=false", "model.lora_rank=0"])
    parts = RECIPE.build(cfg)
    items = [parts.train_dataset[i] for i in range(2)]
    batch = {k: torch.stack([it[k] for it in items]) if isinstance(items[0][k], torch.Tensor) else [it[k] for it in items]
             for k in items[0]}
    pooled = at_latent_grid(batch, (4, 4))
    assert pooled["motion"].shape == (2, 2, 3, 4, 4) and pooled["depth"].shape == (2, 1, 3, 4, 4)
    assert torch.allclose(pooled["motion"].mean((-1, -2)), batch["motion"].mean((-1, -2)), atol=1e-5)  # means kept
    losses = RECIPE.loss(parts, batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_balanced_motion_loss_weighs_moving_and_still_pixels_alike():
    from worldtune.systems.physics.losses import motion_loss

    target = torch.zeros(1, 2, 2, 4, 4)
    target[:, 0, 1, :1, :1] = 4.0  # one moving pixel of 16 in frame 1
    pred = torch.zeros_like(target)
    valid = torch.tensor([[False, True]])
    assert torch.isclose(motion_loss(pred, target, valid, "epe"), torch.tensor(4.0 / 16), atol=1e-4)
    assert torch.isclose(motion_loss(pred, target, valid, "epe", balanced=True), torch.tensor(2.0), atol=1e-4)
    none = torch.zeros(1, 2, dtype=torch.bool)
    assert motion_loss(pred, target, none, "epe", balanced=True) == 0  # nothing counted: no loss, no NaN
