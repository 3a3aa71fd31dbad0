"""The planar pushing simulator: determinism, physics, the presets' image statistics, cameras, HDF5."""

from __future__ import annotations

import time

import numpy as np
import pytest

from worldtune.data.pushworld import (
    CAMERA_NAMES,
    WORLDS,
    PushEnv,
    generate_push_dataset,
    simulate_push_episode,
)
from worldtune.data.pushworld_render import WRIST_EXTENT
from worldtune.data.pushworld_sim import MAX_STEP, PUSHER_RADIUS
from worldtune.data.toyenv import Episode, read_aloha_hdf5

CONSTANT_POSE = np.array([0.02, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)


@pytest.fixture(scope="module")
def episodes() -> dict[str, Episode]:
    """One 48-step 32x32 episode per preset."""
    return {
        world: simulate_push_episode((1, 2), num_steps=48, image_size=32, world=world) for world in WORLDS
    }


def _target(xy) -> np.ndarray:
    return np.array([xy[0], xy[1], *CONSTANT_POSE], dtype=np.float64)


def _env_with(objects, pusher, *, world="textured", **kwargs) -> PushEnv:
    """An environment whose objects are `(x, y, size, is_box)` tuples and pusher is at `pusher`."""
    env = PushEnv(0, world=world, **kwargs)
    env.world.pos = np.array([o[:2] for o in objects], dtype=np.float64)
    env.world.size = np.array([o[2] for o in objects], dtype=np.float64)
    env.world.box = np.array([o[3] for o in objects], dtype=bool)
    env.world.colors = np.tile(np.array([[230.0, 30.0, 30.0]], dtype=np.float32), (len(objects), 1))
    env.world.names = tuple(f"object {k}" for k in range(len(objects)))
    env.world.pusher = np.array(pusher, dtype=np.float64)
    return env


def _far_from(h: int, w: int, centres: np.ndarray, radius: float) -> np.ndarray:
    """Mask of cam_high pixels whose centre is farther than `radius` from every point in `centres`."""
    x = (np.arange(w) + 0.5) / w
    y = 1.0 - (np.arange(h) + 0.5) / h
    mask = np.ones((h, w), dtype=bool)
    for cx, cy in np.asarray(centres).reshape(-1, 2):
        mask &= np.hypot(x[None, :] - cx, y[:, None] - cy) > radius
    return mask


# --------------------------------------------------------------------------- episodes


@pytest.mark.parametrize("world", list(WORLDS))
def test_episodes_are_deterministic_with_the_documented_shapes(world):
    a = simulate_push_episode((4, 1), num_steps=10, image_size=(24, 32), world=world)
    b = simulate_push_episode((4, 1), num_steps=10, image_size=(24, 32), world=world)
    assert a.cameras == ("cam_high", "cam_left_wrist") == tuple(CAMERA_NAMES)
    for cam in a.cameras:
        assert a.frames[cam].shape == (10, 24, 32, 3) and a.frames[cam].dtype == np.uint8
        np.testing.assert_array_equal(a.frames[cam], b.frames[cam])
    assert a.qpos.shape == a.action.shape == (10, 7)
    assert a.qpos.dtype == a.action.dtype == np.float32
    np.testing.assert_array_equal(a.qpos, b.qpos)
    np.testing.assert_array_equal(a.action, b.action)
    num_objects = len(a.object_names)
    assert WORLDS[world].objects[0] <= num_objects <= WORLDS[world].objects[1]
    assert a.object_positions.shape == (10, num_objects, 3)
    assert np.all(a.object_positions[..., 2] == 0)
    np.testing.assert_array_equal(a.object_positions, b.object_positions)
    assert a.instruction == b.instruction and a.fps == 10.0
    other = simulate_push_episode((4, 2), num_steps=10, image_size=(24, 32), world=world)
    assert not np.array_equal(other.frames["cam_left_wrist"], a.frames["cam_left_wrist"])


def test_only_xy_is_commanded_and_the_command_is_smooth(episodes):
    for world, ep in episodes.items():
        np.testing.assert_array_equal(ep.action[:, 2:], np.tile(CONSTANT_POSE, (ep.num_steps, 1)))
        np.testing.assert_array_equal(ep.qpos[:, 2:], np.tile(CONSTANT_POSE, (ep.num_steps, 1)))
        speed = np.hypot(*np.diff(ep.action[:, :2], axis=0).T)
        assert speed.max() <= MAX_STEP + 1e-6, world
        # Speeds ramp instead of jumping (no step-to-step change near the speed limit).
        assert np.abs(np.diff(speed)).max() < 0.5 * MAX_STEP, world
    ep = episodes["textured"]
    assert ep.instruction.startswith(f"push the {ep.object_names[0]} ")
    assert np.mean(np.hypot(*np.diff(ep.qpos[:, :2], axis=0).T) > 1e-4) > 0.7  # the pusher is busy


def test_textured_episodes_push_the_object_and_objects_move_only_when_touched():
    for index in range(3):
        ep = simulate_push_episode((0, index), num_steps=96, image_size=8, cameras=("cam_high",))
        objects, pusher = ep.object_positions[:, 0, :2], ep.qpos[:, :2]
        assert np.hypot(*(objects - objects[0]).T).max() > 0.1, index
        moved = np.hypot(*np.diff(objects, axis=0).T) > 1e-6
        assert moved.sum() >= 10, index
        touching = np.hypot(*(objects[1:] - pusher[1:]).T) < PUSHER_RADIUS + 0.04 * np.sqrt(2) + 1e-3
        assert np.all(touching[moved]), index


def test_still_world_never_changes(episodes):
    ep = episodes["still"]
    for cam in ep.cameras:
        assert np.all(ep.frames[cam] == ep.frames[cam][:1]), cam
    assert np.all(ep.qpos == ep.qpos[:1]) and np.all(ep.action == ep.qpos)
    assert np.all(ep.object_positions == ep.object_positions[:1])


def test_clutter_has_camera_noise_and_flicker_where_nothing_moves(episodes):
    ep = episodes["clutter"]
    frames = ep.frames["cam_high"].astype(np.float64)
    centres = np.concatenate([ep.qpos[:, None, :2], ep.object_positions[..., :2]], axis=1)
    static = _far_from(32, 32, centres.reshape(-1, 2), 0.13)
    assert static.mean() > 0.2
    diff = (frames[1:] - frames[:-1])[:, static]
    assert np.mean(diff != 0) > 0.5  # nearly every still pixel changes every frame
    assert 4.0 < diff.std() < 14.0  # sqrt(2) x noise 5, plus the flicker
    means = frames[:, static].mean(axis=(1, 2))
    assert means.std() > 1.0  # the global brightness flickers


def test_textured_background_is_exactly_static(episodes):
    ep = episodes["textured"]
    frames = ep.frames["cam_high"]
    reach = PUSHER_RADIUS + 3 / 32  # shapes and their anti-aliased rims stay within this of a centre
    for t in range(ep.num_steps - 1):
        centres = np.concatenate(
            [ep.qpos[t : t + 2, :2], ep.object_positions[t : t + 2, :, :2].reshape(-1, 2)]
        )
        mask = _far_from(32, 32, centres, reach)
        assert mask.mean() > 0.5
        np.testing.assert_array_equal(frames[t][mask], frames[t + 1][mask])
    assert not np.array_equal(frames[0], frames[-1])  # the pusher did move
    assert frames.std() > 40  # a strong texture, not a flat table


def test_wrist_view_slides_with_the_pusher_and_sees_sub_pixel_motion():
    size = 32
    env = _env_with([(0.9, 0.9, 0.03, False)], (0.4, 0.4), image_size=size, cameras=("cam_left_wrist",))
    before = env.render()["cam_left_wrist"].astype(int)
    shift = 2
    env.step(_target((0.4 + shift * WRIST_EXTENT / size, 0.4)))
    after = env.render()["cam_left_wrist"].astype(int)
    # The pusher (centre) stays put; the table slides left by `shift` pixels under it.
    keep = np.ones((size, size - shift), dtype=bool)
    keep[size // 2 - 7 : size // 2 + 7, size // 2 - 7 - shift : size // 2 + 7] = False
    np.testing.assert_allclose(after[:, :-shift][keep], before[:, shift:][keep], atol=1)
    assert np.abs(after - before).mean() > 5
    nudged = env.copy()
    nudged.step(_target(env.world.pusher + [0.002, 0.0]))  # under a fifth of a pixel
    assert not np.array_equal(nudged.render()["cam_left_wrist"], env.render()["cam_left_wrist"])


def test_fixed_camera_is_anti_aliased():
    env = _env_with([(0.8, 0.2, 0.03, True)], (0.4, 0.6), image_size=32, cameras=("cam_high",))
    nudged = env.copy()
    nudged.step(_target(env.world.pusher + [0.004, 0.0]))  # an eighth of a pixel
    assert not np.array_equal(nudged.render()["cam_high"], env.render()["cam_high"])


def test_one_table_per_dataset_seed(episodes):
    def background(seed, **kwargs):
        ep = simulate_push_episode(seed, num_steps=1, image_size=32, **kwargs)
        centres = np.concatenate([ep.qpos[:, :2], ep.object_positions[0, :, :2]])
        return ep.frames["cam_high"][0], _far_from(32, 32, centres, 0.15)

    a, mask_a = background((7, 0))
    b, mask_b = background((7, 1))
    c, mask_c = background((8, 0))
    d, mask_d = background((9, 5), scene_seed=7)
    np.testing.assert_array_equal(a[mask_a & mask_b], b[mask_a & mask_b])
    np.testing.assert_array_equal(a[mask_a & mask_d], d[mask_a & mask_d])
    assert np.abs(a[mask_a & mask_c].astype(int) - c[mask_a & mask_c]).mean() > 10


# --------------------------------------------------------------------------- physics and the env


@pytest.mark.parametrize("is_box", [False, True])
def test_the_pusher_pushes_an_object_along_the_line(is_box):
    env = _env_with([(0.5, 0.5, 0.04, is_box)], (0.3, 0.5))
    for _ in range(12):
        env.step(_target((0.8, 0.5)))
    x, y = env.world.pos[0]
    assert x > 0.7 and y == pytest.approx(0.5)
    assert x - env.world.pusher[0] >= PUSHER_RADIUS + 0.04 - 1e-9  # touching, not overlapping


def test_objects_push_each_other_and_stay_on_the_table():
    env = _env_with([(0.5, 0.5, 0.04, False), (0.62, 0.5, 0.04, False)], (0.35, 0.5), world="clutter")
    for _ in range(30):
        env.step(_target((0.95, 0.5)))
    first, second = env.world.pos
    assert second[0] == pytest.approx(1.0 - 0.04)  # pushed against the edge, not off the table
    assert second[0] - first[0] >= 0.08 - 1e-9  # the objects do not overlap
    assert first[0] - env.world.pusher[0] >= PUSHER_RADIUS + 0.04 - 1e-9  # the blocked pusher stops


def test_replaying_the_actions_reproduces_the_episode(episodes):
    ep = episodes["clutter"]
    env = PushEnv((1, 2), world="clutter", image_size=32)
    for t in range(ep.num_steps):
        frames = env.render()
        np.testing.assert_array_equal(env.qpos.astype(np.float32), ep.qpos[t])
        np.testing.assert_array_equal(frames["cam_high"], ep.frames["cam_high"][t])
        env.step(ep.action[t])
    copied = env.copy()
    copied.step(_target((0.1, 0.1)))
    assert not np.array_equal(copied.qpos, env.qpos)


def test_rendering_is_fast():
    simulate_push_episode(0, num_steps=2)  # imports, caches
    start = time.perf_counter()
    simulate_push_episode(11, num_steps=96, image_size=64, world="clutter")
    assert time.perf_counter() - start < 3.0


# --------------------------------------------------------------------------- HDF5 and arguments


def test_dataset_round_trips_through_the_aloha_reader(tmp_path):
    kwargs = {"num_steps": 6, "image_size": 16}
    paths = generate_push_dataset(tmp_path, 2, seed=3, world="clutter", show_progress=False, **kwargs)
    assert [p.name for p in paths] == ["episode_0.hdf5", "episode_1.hdf5"]
    for i, path in enumerate(paths):
        read = read_aloha_hdf5(path)
        expected = simulate_push_episode((3, i), world="clutter", **kwargs)
        assert read.instruction == expected.instruction and read.fps == expected.fps
        np.testing.assert_array_equal(read.qpos, expected.qpos)
        np.testing.assert_array_equal(read.action, expected.action)
        for cam in expected.cameras:
            np.testing.assert_array_equal(read.frames[cam], expected.frames[cam])


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match=r"world must be one of \['textured', 'clutter', 'still'\]"):
        simulate_push_episode(world="lab")
    with pytest.raises(ValueError, match="cameras must be a non-empty subset of.*cam_left_wrist"):
        simulate_push_episode(cameras=("cam_right_wrist",))
    with pytest.raises(ValueError, match="cameras"):
        PushEnv(cameras=())
    with pytest.raises(ValueError, match="image_size must be at least 8x8"):
        simulate_push_episode(image_size=(4, 16))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        simulate_push_episode(num_steps=0)
    with pytest.raises(ValueError, match="supersample must be >= 1"):
        PushEnv(supersample=0)
    with pytest.raises(ValueError, match=r"action must have shape \(7,\)"):
        PushEnv().step([0.5, 0.5])
    with pytest.raises(ValueError, match="world must be one of"):
        generate_push_dataset(tmp_path / "out", 1, world="lab", show_progress=False)
    assert not (tmp_path / "out").exists()
