"""Sim-Physics scenes in the seed's layout: frame picking, motion accumulated over the gaps between
sampled frames (checked by warping one frame onto the next), motion scaled with resize / crop,
invalid depth masked, the metadata CSV, named errors and counted skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sim_physics_fixtures import BACKGROUND_DEPTH, SQUARE, SQUARE_DEPTH, square_origin, write_scene
from worldtune.data.errors import DataError
from worldtune.data.formats.sim_physics import SimPhysicsDataConfig, SimPhysicsDataset, video_to_unit_range
from worldtune.data.formats.sim_physics_files import (
    pick_frames,
    read_metadata,
    scene_prompt,
    write_metadata,
)
from worldtune.data.formats.sim_physics_motion import warp_back

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
    video = video_to_unit_range(item["video"])
    assert not item["motion_valid"][0] and item["motion_valid"][1:].all() and not item["motion"][:, 0].any()
    for t in range(1, 5):
        gap = picks[t] - picks[t - 1]
        x0, y0 = square_origin(picks[t], (4, 6), (2, 1))
        inner = (slice(y0 + 1, y0 + SQUARE - 1), slice(x0 + 1, x0 + SQUARE - 1))
        motion = item["motion"][:, t]
        assert torch.allclose(motion[0][inner], torch.tensor(2.0 * gap)) and torch.allclose(motion[1][inner], torch.tensor(1.0 * gap))
        assert not motion[:, :3, 24:].any()  # the static background does not move
        warped = warp_back(video[:, t - 1], motion)
        assert torch.allclose(warped[(slice(None), *inner)], video[:, t][(slice(None), *inner)], atol=1e-5)
        # the original's target (the last step's file alone) would not: it lands `gap - 1` steps short
        short = warp_back(video[:, t - 1], motion / gap)
        assert not torch.allclose(short[(slice(None), *inner)], video[:, t][(slice(None), *inner)], atol=0.05)


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
    assert item["video"].dtype == torch.uint8 and item["video"][2, t, int(cy), int(cx)] > 242  # the square is where its motion is
    # units and sign conventions of other recorders: one file read three ways
    from worldtune.data.formats.sim_physics_motion import read_motion

    path = tmp_path / SCENE / "motion_vectors" / "step_0003.npy"
    pixels = read_motion(path, (32, 48))
    assert torch.equal(read_motion(path, (32, 48), sign=(1.0, -1.0)), pixels * torch.tensor([1.0, -1.0]).view(2, 1, 1))
    assert torch.allclose(read_motion(path, (32, 48), units="normalized"), pixels * torch.tensor([48.0, 32.0]).view(2, 1, 1))


def _dense_chain(fields: list[torch.Tensor]) -> torch.Tensor:
    """The plain definition: every pixel of the last frame followed back through every step's whole
    field (bilinear, edge held)."""
    from worldtune.data.formats.sim_physics_motion import pixel_grid, sample_at

    origin = pixel_grid(*fields[-1].shape[1:])
    position = origin.clone()
    for field in reversed(fields):
        position = position - sample_at(field, position)
    return origin - position


def test_motion_chained_where_it_moves_equals_the_whole_field_chain(tmp_path):
    """The loader reads each step around its moving pixels only; the chained displacement is the
    one of following every pixel through every whole field: bodies that touch the frame's edge,
    steps with nothing moving, NaN, and a pixel carried out of one body's patch into another's."""
    from worldtune.data.formats.sim_physics_motion import accumulate_motion, read_motion, read_motion_patch

    rng = np.random.default_rng(0)
    h, w = 24, 40
    paths = []
    for k, (box, velocity) in enumerate([((3, 5, 9, 12), (1.5, 0.5)), (None, None), ((0, 0, 6, 4), (-2.0, 1.0)),
                                          ((30, 15, 40, 24), (0.7, -1.3)), ((7, 4, 14, 14), (2.5, 2.0))]):
        mv = np.zeros((h, w, 4), np.float32)
        if box is not None:
            x0, y0, x1, y1 = box
            mv[y0:y1, x0:x1, :2] = np.asarray(velocity) + rng.normal(0, 0.3, (y1 - y0, x1 - x0, 2))
        if k == 3:
            mv[16, 31, 0] = np.nan
        paths.append(tmp_path / f"step_{k}.npy")
        np.save(paths[-1], mv)
    patches = [read_motion_patch(p, (h, w)) for p in paths]
    assert patches[1] is None and patches[2].top == 0 and patches[2].left == 0
    chained = accumulate_motion(patches, (h, w))
    reference = _dense_chain([read_motion(p, (h, w)) for p in paths])
    assert chained.abs().max() > 2 and torch.isfinite(chained).all()
    assert torch.allclose(chained, reference, atol=1e-4), (chained - reference).abs().max()


def test_a_scene_read_again_gets_its_chained_motion_from_the_cache(tmp_path):
    write_scene(tmp_path, SCENE, frames=13, size=(32, 48), velocity=(2, 1))
    dataset = SimPhysicsDataset(config(tmp_path, height=16, width=16))  # resized: the cache holds the source's
    first = dataset[0]
    assert dataset.motion_cache.used_bytes > 0
    for path in (tmp_path / SCENE / "motion_vectors").iterdir():
        np.save(path, np.zeros(0, np.float32))  # empty arrays are no motion: chaining again would give zeros
    again = dataset[0]
    assert first["motion"].abs().max() > 1 and torch.equal(again["motion"], first["motion"])
    uncached = SimPhysicsDataset(config(tmp_path, height=16, width=16, target_cache_mb=0))
    assert not uncached[0]["motion"].any() and uncached.motion_cache.used_bytes == 0


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
    (scene / "motion_vectors" / "step_0003.npy").write_bytes(b"")  # a recorder killed mid-write
    with pytest.raises(DataError, match=r"step_0003.npy: unreadable .npy"):
        SimPhysicsDataset(config(tmp_path))[0]
    np.save(scene / "motion_vectors" / "step_0003.npy", np.zeros((32, 32, 4), np.float32))
    for k in range(6):
        np.save(scene / "distance_to_camera" / f"step_{k:04d}.npy", np.full((32, 32), np.inf, np.float32))
    with pytest.raises(DataError, match="every depth value of the clip is invalid"):
        SimPhysicsDataset(config(tmp_path))[0]

    (tmp_path / "meta.csv").write_text("video,prompt\ntest_missing/env_0/0/0,x\n")
    with pytest.raises(DataError, match="test_missing/env_0/0/0: scene folder not found"):
        SimPhysicsDataset(config(tmp_path, dataset_metadata_path=str(tmp_path / "meta.csv")))
