"""Sim-Physics scenes in the seed's layout: frame picking, motion accumulated over the gaps between
sampled frames (checked by warping one frame onto the next), motion scaled with resize / crop,
invalid depth masked, the metadata CSV, named errors and counted skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim_physics_fixtures import BACKGROUND_DEPTH, SQUARE, SQUARE_DEPTH, square_origin, write_scene
from worldtune.data.errors import DataError
from worldtune.data.formats.sim_physics import SimPhysicsDataConfig, SimPhysicsDataset
from worldtune.data.formats.sim_physics_files import (
    pick_frames,
    read_metadata,
    scene_prompt,
    warp_back,
    write_metadata,
)

SCENE = "test_ball_collide/env_0/0/0"


def config(root, **kw) -> SimPhysicsDataConfig:
    base = dict(dataset_base_path=str(root), num_frames=5, height=32, width=32, split="all", target_stride=1)
    return SimPhysicsDataConfig(**{**base, **kw})


def test_frames_are_picked_evenly_like_the_seed():
    picks = pick_frames(131, 49)
    assert len(picks) == 49 and picks[:4] == [0, 2, 5, 8] and picks[-1] == 128
    assert set(np.diff(picks)) == {2, 3}
    with pytest.raises(ValueError, match="12 frames, fewer than num_frames 49"):
        pick_frames(12, 49)


def test_targets_every_stride_frames_chain_the_motion(tmp_path):
    write_scene(tmp_path, SCENE, frames=13, velocity=(2, 1))
    item = SimPhysicsDataset(config(tmp_path, target_stride=2))[0]  # frames 0, 2, 5, 7, 10 -> targets 0, 5, 10
    assert item["motion"].shape == (2, 3, 32, 32) and item["depth"].shape == (1, 3, 32, 32)
    x0, y0 = square_origin(10, (4, 6), (2, 1))
    assert torch.allclose(item["motion"][:, 2, y0 + 2, x0 + 2], torch.tensor([10.0, 5.0]))  # steps 6..10
    from worldtune.config import ConfigError

    with pytest.raises(ConfigError, match=r"num_frames 5 must be 1 \+ a multiple of data.target_stride 3"):
        config(tmp_path, target_stride=3).check()


def test_motion_is_accumulated_over_the_gap_and_warps_one_frame_onto_the_next(tmp_path):
    write_scene(tmp_path, SCENE, frames=13, velocity=(2, 1))
    item = SimPhysicsDataset(config(tmp_path))[0]
    picks = item["frame_indices"].tolist()
    assert picks == [0, 2, 5, 7, 10]
    assert item["video"].shape == (3, 5, 32, 32) and item["motion"].shape == (2, 5, 32, 32)
    assert not item["motion_valid"][0] and item["motion_valid"][1:].all() and not item["motion"][:, 0].any()
    for t in range(1, 5):
        gap = picks[t] - picks[t - 1]
        x0, y0 = square_origin(picks[t], (4, 6), (2, 1))
        inner = (slice(y0 + 1, y0 + SQUARE - 1), slice(x0 + 1, x0 + SQUARE - 1))
        motion = item["motion"][:, t]
        assert torch.allclose(motion[0][inner], torch.tensor(2.0 * gap)) and torch.allclose(motion[1][inner], torch.tensor(1.0 * gap))
        assert not motion[:, :3, 24:].any()  # the static background does not move
        warped = warp_back(item["video"][:, t - 1], motion)
        assert torch.allclose(warped[(slice(None), *inner)], item["video"][:, t][(slice(None), *inner)], atol=1e-5)
        # the original's target (the last step's file alone) would not: it lands `gap - 1` steps short
        short = warp_back(item["video"][:, t - 1], motion / gap)
        assert not torch.allclose(short[(slice(None), *inner)], item["video"][:, t][(slice(None), *inner)], atol=0.05)


def test_motion_scales_with_resize_and_follows_the_crop(tmp_path):
    write_scene(tmp_path, SCENE, frames=13, size=(32, 48), start=(10, 6), velocity=(2, 2), sky=False)
    item = SimPhysicsDataset(config(tmp_path, height=16, width=16))[0]  # 32x48 -> 16x24, crop 4 columns each side
    picks = item["frame_indices"].tolist()
    t = 2
    x0, y0 = square_origin(picks[t], (10, 6), (2, 2))
    cx, cy = (x0 + SQUARE / 2) / 2 - 4, (y0 + SQUARE / 2) / 2  # the square's centre in the output
    gap = picks[t] - picks[t - 1]
    motion = item["motion"][:, t, int(cy), int(cx)]
    assert torch.allclose(motion, torch.tensor([1.0 * gap, 1.0 * gap]), atol=0.3)  # 2 px/step at half size
    assert item["video"][2, t, int(cy), int(cx)] > 0.9  # the square is where its motion is
    # units and sign conventions of other recorders: one file read three ways
    from worldtune.data.formats.sim_physics_files import read_motion

    path = tmp_path / SCENE / "motion_vectors" / "step_0003.npy"
    pixels = read_motion(path, (32, 48))
    assert torch.equal(read_motion(path, (32, 48), sign=(1.0, -1.0)), pixels * torch.tensor([1.0, -1.0]).view(2, 1, 1))
    assert torch.allclose(read_motion(path, (32, 48), units="normalized"), pixels * torch.tensor([48.0, 32.0]).view(2, 1, 1))


def test_invalid_depth_is_masked_not_a_million_metres(tmp_path):
    write_scene(tmp_path, SCENE, frames=13)
    item = SimPhysicsDataset(config(tmp_path))[0]
    depth, valid = item["depth"][0, 0], item["depth_valid"][0, 0]
    assert not valid[0, :3].any() and not valid[1, :2].any() and valid[5:].all()
    assert float(depth[0, 0]) == 0.0 and float(depth.max()) == BACKGROUND_DEPTH
    x0, y0 = square_origin(0, (4, 6), (2, 1))
    assert float(depth[y0 + 1, x0 + 1]) == SQUARE_DEPTH


def test_metadata_csv_written_by_scanning_and_read_back(tmp_path):
    data = tmp_path / "data"
    write_scene(data, "test_ball_collide/env_0/0/0", frames=6)
    write_scene(data, "test_ball_and_block_fall/env_0/0/0", frames=6)
    out, count = write_metadata(data, tmp_path / "sim_physics_metadata.csv")
    assert count == 2 and read_metadata(out) == [
        ("test_ball_and_block_fall/env_0/0/0", "A physics simulation of ball and block fall"),
        ("test_ball_collide/env_0/0/0", "A physics simulation of ball collide")]
    assert scene_prompt("test_ball_collide/env_0/0/0") == "A physics simulation of ball collide"
    (tmp_path / "custom.csv").write_text('video,prompt\ntest_ball_collide/env_0/0/0,"A red ball hits, then stops"\n')
    dataset = SimPhysicsDataset(config(data, dataset_metadata_path=str(tmp_path / "custom.csv")))
    assert len(dataset) == 1 and dataset[0]["prompt"] == "A red ball hits, then stops"
    val = SimPhysicsDataset(config(data, split="val", val_scenes=["test_ball_collide"]))
    train = SimPhysicsDataset(config(data, split="train", val_scenes=["test_ball_collide"]))
    assert [s.scene for s, _ in val.scenes] == ["test_ball_collide/env_0/0/0"] and len(train) == 1


def test_bad_scenes_are_named_or_skipped(tmp_path):
    import shutil

    good = write_scene(tmp_path, "test_good/env_0/0/0", frames=6)
    no_depth = write_scene(tmp_path, "test_no_depth/env_0/0/0", frames=6)
    shutil.rmtree(no_depth / "distance_to_camera")
    with pytest.raises(DataError, match="test_no_depth/env_0/0/0/distance_to_camera: missing"):
        SimPhysicsDataset(config(tmp_path))
    skipping = SimPhysicsDataset(config(tmp_path, on_bad_sample="skip"))
    assert len(skipping) == 1 and [s for s, _ in skipping.skipped] == ["test_no_depth/env_0/0/0"]
    shutil.rmtree(no_depth.parents[2])

    (good / "rgb" / "step_0005.png").unlink()
    with pytest.raises(DataError, match="rgb 5, motion_vectors 6, distance_to_camera 6 frames: they must match"):
        SimPhysicsDataset(config(tmp_path))
    shutil.rmtree(good.parents[2])

    short = write_scene(tmp_path, "test_short/env_0/0/0", frames=4)
    with pytest.raises(DataError, match="test_short/env_0/0/0: 4 frames, fewer than num_frames 5"):
        SimPhysicsDataset(config(tmp_path))
    shutil.rmtree(short.parents[2])

    scene = write_scene(tmp_path, "test_bad/env_0/0/0", frames=6)
    np.save(scene / "motion_vectors" / "step_0003.npy", np.zeros((32, 32, 2), np.float32))
    with pytest.raises(DataError, match=r"step_0003.npy: motion vectors must be \(H, W, 4\)"):
        SimPhysicsDataset(config(tmp_path))[0]
    np.save(scene / "motion_vectors" / "step_0003.npy", np.zeros((32, 32, 4), np.float32))
    for k in range(6):
        np.save(scene / "distance_to_camera" / f"step_{k:04d}.npy", np.full((32, 32), np.inf, np.float32))
    with pytest.raises(DataError, match="every depth value of the clip is invalid"):
        SimPhysicsDataset(config(tmp_path))[0]

    (tmp_path / "meta.csv").write_text("video,prompt\ntest_missing/env_0/0/0,x\n")
    with pytest.raises(DataError, match="test_missing/env_0/0/0: scene folder not found"):
        SimPhysicsDataset(config(tmp_path, dataset_metadata_path=str(tmp_path / "meta.csv")))
