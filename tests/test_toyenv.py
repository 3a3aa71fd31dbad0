"""The built-in toy robot simulator: determinism, physics, rendering and the ALOHA HDF5 files."""

from __future__ import annotations

import io
import time

import h5py
import numpy as np
import pytest
from PIL import Image

from worldtune.data.toyenv import (
    CAMERA_NAMES,
    DEFAULT_CAMERAS,
    Episode,
    ToyEnv,
    frames_for,
    generate_dataset,
    read_aloha_hdf5,
    simulate_episode,
    write_aloha_hdf5,
)
from worldtune.data.toyenv_world import GRASP_Z, POSE_HIGH, POSE_LOW, Block, ToyWorld


@pytest.fixture(scope="module")
def episode() -> Episode:
    return simulate_episode(3, num_steps=24)


def _world_with_block(x=0.5, y=0.5, half=0.06) -> ToyWorld:
    world = ToyWorld(np.random.default_rng(0), num_objects=1)
    world.blocks = [Block("red", (225, 35, 35), half, np.array([x, y]))]
    world.pose = np.array([0.2, 0.2, 0.2, 0.0, 0.0, 0.0, 1.0])
    return world


def _drive(world: ToyWorld, target, steps: int = 12) -> None:
    for _ in range(steps):
        world.step(np.asarray(target, dtype=np.float64))


# --------------------------------------------------------------------------- episodes


def test_same_seed_same_episode_and_other_seeds_differ(episode):
    again = simulate_episode(3, num_steps=24)
    assert again.instruction == episode.instruction
    np.testing.assert_array_equal(again.qpos, episode.qpos)
    np.testing.assert_array_equal(again.action, episode.action)
    for cam in DEFAULT_CAMERAS:
        np.testing.assert_array_equal(frames_for(again, cam), frames_for(episode, cam))
    other = simulate_episode(4, num_steps=24)
    assert not np.array_equal(other.qpos, episode.qpos)
    assert not np.array_equal(other.frames["cam_high"], episode.frames["cam_high"])


def test_shapes_dtypes_and_bounds(episode):
    assert episode.cameras == DEFAULT_CAMERAS
    assert episode.num_steps == 24 and episode.image_size == (64, 64)
    for cam in DEFAULT_CAMERAS:
        frames = frames_for(episode, cam)
        assert frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
        assert frames.std() > 10  # textured, not blank
    assert episode.qpos.shape == episode.action.shape == (24, 7)
    assert episode.qpos.dtype == episode.action.dtype == np.float32
    assert np.all(episode.qpos >= POSE_LOW - 1e-6) and np.all(episode.qpos <= POSE_HIGH + 1e-6)
    assert episode.object_positions.shape == (24, len(episode.object_names), 3)
    assert (
        any(name in episode.instruction for name in episode.object_names) or "gripper" in episode.instruction
    )

    wide = simulate_episode(1, num_steps=3, image_size=(48, 80), cameras=CAMERA_NAMES, supersample=2)
    assert wide.cameras == CAMERA_NAMES
    assert all(f.shape == (3, 48, 80, 3) for f in wide.frames.values())


def test_bad_arguments_fail_loudly(episode):
    with pytest.raises(ValueError, match="cam_top"):
        simulate_episode(0, num_steps=2, cameras=("cam_top",))
    with pytest.raises(ValueError, match="shape"):
        ToyEnv(0).step([0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match="non-finite"):
        ToyEnv(0).step([0.5, 0.5, np.nan, 0, 0, 0, 1])
    with pytest.raises(KeyError, match="cam_high"):
        frames_for(episode, "cam_right_wrist")


def test_achieved_pose_tracks_the_commands(episode):
    # The policy stays inside the speed limits: the next state is the commanded pose.
    np.testing.assert_allclose(episode.qpos[1:], episode.action[:-1], atol=1e-5)


# --------------------------------------------------------------------------- actions matter


def test_different_actions_from_one_state_give_different_frames():
    env = ToyEnv(7, cameras=CAMERA_NAMES)
    base = env.qpos
    base[2] = 0.2
    frames_before = env.render()
    results = {}
    changes = {"x": (0, 0.08), "y": (1, -0.08), "z": (2, -0.06), "yaw": (5, 0.3), "gripper": (6, -0.5)}
    for name, (dim, delta) in changes.items():
        trial = env.copy()
        action = base.copy()
        action[dim] += delta
        trial.step(action)
        results[name] = trial.render()
    reference = env.copy()
    reference.step(base)
    same = reference.render()
    for name, frames in results.items():
        for cam in ("cam_high", "cam_left_wrist"):
            assert not np.array_equal(frames[cam], same[cam]), (name, cam)
    for roll_pitch in (3, 4):  # tilts show in the wrist view
        trial = env.copy()
        action = base.copy()
        action[roll_pitch] += 0.2
        trial.step(action)
        assert not np.array_equal(trial.render()["cam_left_wrist"], same["cam_left_wrist"])
    # The copy did not disturb the original.
    assert all(np.array_equal(env.render()[c], frames_before[c]) for c in CAMERA_NAMES)


def test_gripper_reaches_its_commanded_target_and_respects_speed_limits():
    env = ToyEnv(2)
    target = np.array([0.8, 0.25, 0.05, 0.1, -0.1, 1.0, 0.0])
    previous = env.qpos
    for _ in range(15):
        current = env.step(target)
        assert np.linalg.norm(current[:2] - previous[:2]) <= 0.1 + 1e-9
        previous = current
    np.testing.assert_allclose(env.qpos, target, atol=1e-9)
    for _ in range(15):  # out-of-range commands are clipped to the workspace
        current = env.step([2.0, -1.0, 1.0, 0, 0, 0, 5.0])
    np.testing.assert_allclose(current[[0, 1, 2, 6]], [POSE_HIGH[0], POSE_LOW[1], POSE_HIGH[2], 1.0])


def test_replaying_the_actions_reproduces_the_frames(episode):
    env = ToyEnv(3)  # the world is drawn first from the seed; stepping uses no randomness
    for t in range(episode.num_steps):
        frames = env.render()
        for cam in DEFAULT_CAMERAS:
            np.testing.assert_array_equal(frames[cam], episode.frames[cam][t])
        env.step(episode.action[t].astype(np.float64))


# --------------------------------------------------------------------------- physics


def test_pick_carry_and_release():
    world = _world_with_block()
    _drive(world, [0.5, 0.5, 0.15, 0, 0, 0, 1.0])
    _drive(world, [0.5, 0.5, 0.02, 0, 0, 0, 1.0])
    assert world.held is None and np.allclose(world.blocks[0].xy, [0.5, 0.5])  # open: straddles it
    _drive(world, [0.5, 0.5, 0.02, 0, 0, 0, 0.0], steps=3)
    assert world.held == 0 and world.pose[2] < GRASP_Z
    _drive(world, [0.5, 0.5, 0.2, 0, 0, 0.5, 0.0])
    _drive(world, [0.3, 0.7, 0.2, 0, 0, 0.5, 0.0])
    block = world.blocks[0]
    assert block.z > 0.1 and np.allclose(block.xy, [0.3, 0.7], atol=1e-6) and block.yaw == pytest.approx(0.5)
    _drive(world, [0.3, 0.7, 0.2, 0, 0, 0.5, 1.0])
    assert world.held is None and block.z == 0.0 and np.allclose(block.xy, [0.3, 0.7], atol=1e-6)


def test_low_gripper_pushes_high_gripper_passes_over():
    world = _world_with_block(0.5, 0.5)
    _drive(world, [0.2, 0.5, 0.2, 0, 0, 0, 0.0])
    _drive(world, [0.8, 0.5, 0.2, 0, 0, 0, 0.0])  # above the block's top
    assert np.allclose(world.blocks[0].xy, [0.5, 0.5])
    world = _world_with_block(0.5, 0.5)
    _drive(world, [0.2, 0.5, 0.01, 0, 0, 0, 0.0])
    _drive(world, [0.6, 0.5, 0.01, 0, 0, 0, 0.0])
    block = world.blocks[0]
    assert world.held is None and block.xy[0] > 0.6 + block.half and block.xy[1] == pytest.approx(0.5)
    _drive(world, [0.95, 0.5, 0.01, 0, 0, 0, 0.0])
    assert block.xy[0] <= 1 - block.half + 1e-9  # blocks stay on the table


def test_rotation_zero_keeps_the_orientation_and_the_same_path():
    turning = simulate_episode(5, num_steps=60, image_size=8, cameras=("cam_high",))
    still = simulate_episode(5, num_steps=60, image_size=8, cameras=("cam_high",), rotation=0.0)
    assert np.ptp(turning.qpos[:, 3:6], axis=0).max() > 0.1  # the default policy turns the gripper
    np.testing.assert_allclose(still.qpos[:, 3:6], still.qpos[:1, 3:6].repeat(60, 0), atol=1e-6)
    # Same draws and timing: position and gripper follow the same path.
    np.testing.assert_allclose(still.action[:, [0, 1, 2, 6]], turning.action[:, [0, 1, 2, 6]], atol=1e-6)
    with pytest.raises(ValueError, match="rotation"):
        simulate_episode(5, num_steps=2, image_size=8, rotation=1.5)


def test_objects_move_in_some_episodes_only():
    moved, lifted, still = 0, 0, 0
    for seed in range(8):
        ep = simulate_episode(seed, num_steps=40, image_size=16, cameras=("cam_high",))
        shift = np.abs(ep.object_positions[-1, :, :2] - ep.object_positions[0, :, :2]).max()
        moved += shift > 0.1
        still += shift < 1e-6
        lifted += ep.object_positions[:, :, 2].max() > 0.05
    assert moved >= 2 and lifted >= 2 and still >= 1


# --------------------------------------------------------------------------- speed


def test_rendering_is_fast():
    simulate_episode(0, num_steps=2)  # warm the static-view cache
    start = time.perf_counter()
    simulate_episode(11, num_steps=40, image_size=64, cameras=("cam_high", "cam_left_wrist"))
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- HDF5


def test_raw_hdf5_layout_and_round_trip(tmp_path, episode):
    path = write_aloha_hdf5(tmp_path / "ep.hdf5", episode, fps=15)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.hdf5"]  # no temporary left over
    with h5py.File(path, "r") as root:
        assert set(root) == {"observations", "action"}
        assert set(root["observations"]) == {"images", "qpos", "qvel"}
        assert set(root["observations/images"]) == set(DEFAULT_CAMERAS)
        images = root["observations/images/cam_high"]
        assert images.shape == (24, 64, 64, 3) and images.dtype == np.uint8
        assert root["observations/qpos"].shape == root["action"].shape == (24, 7)
        assert root["action"].dtype.kind == "f"
        assert bool(root.attrs["sim"]) is True and bool(root.attrs["compress"]) is False
        assert float(root.attrs["fps"]) == 15.0
        assert root.attrs["instruction"] == episode.instruction
        np.testing.assert_allclose(
            root["observations/qvel"][1], (episode.qpos[1] - episode.qpos[0]) * 15, atol=1e-4
        )
    back = read_aloha_hdf5(path)
    assert back.instruction == episode.instruction and back.fps == 15.0
    np.testing.assert_array_equal(back.qpos, episode.qpos)
    np.testing.assert_array_equal(back.action, episode.action)
    for cam in DEFAULT_CAMERAS:
        np.testing.assert_array_equal(back.frames[cam], episode.frames[cam])


@pytest.mark.parametrize("layout", ["vlen", "padded"])
def test_jpeg_hdf5_decodes_close_to_the_raw_frames(tmp_path, episode, layout):
    path = write_aloha_hdf5(tmp_path / "ep.hdf5", episode, jpeg=True, jpeg_layout=layout)
    with h5py.File(path, "r") as root:
        assert bool(root.attrs["compress"]) is True
        data = root["observations/images/cam_left_wrist"]
        if layout == "vlen":
            assert data.shape == (24,) and h5py.check_vlen_dtype(data.dtype) == np.dtype(np.uint8)
            encoded = data[5]
        else:
            lengths = root["compress_len"][()]
            assert lengths.shape == (2, 24) and data.shape == (24, int(lengths.max()))
            encoded = data[5, : int(lengths[list(root["observations/images"]).index("cam_left_wrist"), 5])]
        decoded = np.asarray(Image.open(io.BytesIO(encoded.tobytes())).convert("RGB"))
    raw = episode.frames["cam_left_wrist"][5]
    assert decoded.shape == raw.shape
    assert np.abs(decoded.astype(float) - raw).mean() < 8
    back = read_aloha_hdf5(path)
    for cam in DEFAULT_CAMERAS:
        assert np.abs(back.frames[cam].astype(float) - episode.frames[cam]).mean() < 8


def test_generate_dataset(tmp_path):
    paths = generate_dataset(tmp_path / "toy", 3, seed=5, num_steps=6, image_size=32, show_progress=False)
    assert [p.name for p in paths] == ["episode_0.hdf5", "episode_1.hdf5", "episode_2.hdf5"]
    episodes = [read_aloha_hdf5(p) for p in paths]
    assert all(ep.frames["cam_high"].shape == (6, 32, 32, 3) for ep in episodes)
    assert not np.array_equal(episodes[0].qpos, episodes[1].qpos)
    again = generate_dataset(tmp_path / "again", 1, seed=5, num_steps=6, image_size=32, show_progress=False)
    np.testing.assert_array_equal(read_aloha_hdf5(again[0]).qpos, episodes[0].qpos)


def test_gradient_table_colours_the_wrist_view_by_position():
    """`table="gradient"`: the wrist view's mean colour follows the gripper across the table (red grows with
    x far more than on the wood table); an unknown table is refused."""
    def mean_red(table: str, x: float) -> float:
        env = ToyEnv(0, image_size=16, cameras=("cam_left_wrist",), supersample=4, table=table)
        pose = env.qpos.copy()
        pose[0], pose[2] = x, 0.15
        for _ in range(30):
            env.step(pose)
        return float(env.render()["cam_left_wrist"][..., 0].mean())

    gradient = mean_red("gradient", 0.75) - mean_red("gradient", 0.25)
    wood = mean_red("wood", 0.75) - mean_red("wood", 0.25)
    assert gradient > 30 and gradient > 2 * wood
    with pytest.raises(ValueError, match="table"):
        ToyEnv(0, table="marble")


def test_parallel_simulation_writes_the_same_files(tmp_path):
    from worldtune.data.pushworld import generate_push_dataset
    from worldtune.data.toyenv import read_aloha_hdf5

    serial = generate_dataset(tmp_path / "a", 3, seed=1, image_size=16, num_steps=6, show_progress=False)
    parallel = generate_dataset(tmp_path / "b", 3, seed=1, image_size=16, num_steps=6, show_progress=False, workers=2)
    pushed = generate_push_dataset(tmp_path / "c", 2, seed=1, image_size=16, num_steps=6, show_progress=False,
                                   workers=2)
    assert [p.name for p in parallel] == [p.name for p in serial] == ["episode_0.hdf5", "episode_1.hdf5",
                                                                     "episode_2.hdf5"]
    for a, b in zip(serial, parallel, strict=True):
        first, second = read_aloha_hdf5(a), read_aloha_hdf5(b)
        np.testing.assert_array_equal(first.frames["cam_high"], second.frames["cam_high"])
        np.testing.assert_array_equal(first.qpos, second.qpos)
    assert all(p.is_file() for p in pushed)
