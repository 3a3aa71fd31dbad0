"""VACE-E's robot files in the seed's format: hand motion (dual and legacy single-hand), the gripper
mapping, objects in numeric order, alignment to the clip's frames, the prompt rules, bad files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from worldtune.data.errors import DataError
from worldtune.data.formats.vace_e_files import (
    BadRecording,
    align_to_clip,
    load_task_metadata,
    read_hand_motion,
    read_object_trajectories,
    task_prompt,
)


def write_hands(path, frames=6, left=True, mapping="open=0, closed=1, inactive=2", rot_dim=6):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        sides = ("left", "right") if left else ("right",)
        for side in sides:
            g = f.create_group(f"{side}_wrist")
            g["positions"] = rng.normal(size=(frames, 3))
            g["rotations_6d"] = rng.normal(size=(frames, rot_dim))
            states = f.create_dataset(f"{side}_hand_states", data=np.resize([0, 1, 2], frames))
            if mapping is not None:
                states.attrs["state_mapping"] = mapping
        f["timestamps"] = np.arange(frames)  # present in real files, unused
    return path


def test_dual_hand_motion_is_20_values_with_open_as_one(tmp_path):
    path = write_hands(tmp_path / "hands.hdf5")
    motion = read_hand_motion(path)
    assert motion.shape == (6, 20) and motion.dtype == np.float32
    with h5py.File(path) as f:
        assert np.allclose(motion[:, :3], f["left_wrist/positions"][:])
        assert np.allclose(motion[:, 12:18], f["right_wrist/rotations_6d"][:])
    # open=0 in the file's mapping: open frames give 1, closed (1) and inactive (2) give 0
    assert motion[:, 18].tolist() == [1, 0, 0, 1, 0, 0] == motion[:, 19].tolist()


def test_another_state_mapping_is_followed(tmp_path):
    motion = read_hand_motion(write_hands(tmp_path / "h.hdf5", mapping="closed=0, open=1"))
    assert motion[:, 19].tolist() == [0, 1, 0, 0, 1, 0]


def test_legacy_single_hand_file_gets_a_zero_left_hand(tmp_path):
    motion = read_hand_motion(write_hands(tmp_path / "legacy.hdf5", left=False))
    assert motion.shape == (6, 20)
    assert not motion[:, :9].any() and not motion[:, 18].any()
    assert motion[:, 9:18].any()


def test_bad_hand_files_are_named(tmp_path):
    with pytest.raises(BadRecording, match=r"bad_rot.hdf5: right_wrist/rotations_6d must be \[T, 6\]"):
        read_hand_motion(write_hands(tmp_path / "bad_rot.hdf5", rot_dim=4))
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("head")
    with pytest.raises(BadRecording, match="empty.hdf5: no 'right_wrist' group"):
        read_hand_motion(empty)
    (tmp_path / "garbage.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(BadRecording, match="garbage.hdf5: cannot open"):
        read_hand_motion(tmp_path / "garbage.hdf5")


def write_objects(path, counts=(5, 3, 5)):
    with h5py.File(path, "w") as f:
        for n, frames in zip((2, 10, 1), counts, strict=True):
            g = f.create_group(f"object_{n}")
            g["positions"] = np.full((frames, 3), float(n)) + np.arange(frames)[:, None]
            g["rotations_6d"] = np.zeros((frames, 6))
            g.attrs["object_id"] = n + 100
    return path


def test_objects_in_numeric_order_held_at_their_last_pose(tmp_path):
    poses, ids = read_object_trajectories(write_objects(tmp_path / "objects.hdf5"), max_objects=10)
    assert poses.shape == (5, 3, 9) and ids.tolist() == [101, 102, 110]  # object_1, object_2, object_10
    assert poses[:, 2, 0].tolist() == [10, 11, 12, 12, 12]  # object_10 has 3 frames, then held
    with pytest.raises(BadRecording, match="objects.hdf5: 3 objects, more than max_objects 2"):
        read_object_trajectories(tmp_path / "objects.hdf5", max_objects=2)


def test_trajectories_follow_the_clip_frames(tmp_path):
    trajectory = np.arange(10)[:, None] * np.ones((1, 20))
    assert align_to_clip(trajectory, [2, 4, 6], "t.hdf5")[:, 0].tolist() == [2, 4, 6]
    with pytest.raises(BadRecording, match="t.hdf5: 10 trajectory frames, the clip needs frame 12"):
        align_to_clip(trajectory, [4, 8, 12], "t.hdf5")


def test_prompt_rules_and_metadata(tmp_path):
    grasp = {"task_type": "grasping", "left_hand": False, "right_hand": True, "objects": "white bottle with black lid."}
    pour = {"task_type": "pouring", "left_hand": True, "right_hand": True, "objects": "cup, bottle."}
    assert task_prompt("104-lars-grasping", grasp) == "Right hand grasping white bottle with black lid."
    assert task_prompt("902-pouring", pour) == "Pouring, left hand cup, right hand bottle"
    assert task_prompt("t", {**pour, "task_type": "stacking"}) == "Both hands stacking cup, bottle."
    assert task_prompt("t", {**grasp, "left_hand": True, "right_hand": False}) == \
        "Left hand grasping white bottle with black lid."
    assert task_prompt("t", {**grasp, "right_hand": False}) == "Grasping white bottle with black lid."
    assert task_prompt("105-unknown", None) == "Robot manipulation task: 105-unknown"
    meta = tmp_path / "ph2d_metadata.json"
    meta.write_text(json.dumps({"metadata": {}, "per_task_attributes": {"104-lars-grasping": grasp}}))
    assert load_task_metadata(meta)["104-lars-grasping"]["objects"] == "white bottle with black lid."
    meta.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(BadRecording, match="ph2d_metadata.json: no 'per_task_attributes'"):
        load_task_metadata(meta)


# ------------------------------------------------------------------------------------ episodes

def write_episode(base, task, k, frames=12, hands=True, legacy=False, mask_video=True):
    from worldtune.data.video_write import write_video

    ep = base / task / f"episode_{k}"
    ep.mkdir(parents=True)
    video = np.zeros((frames, 32, 32, 3), np.uint8)
    video[:, :, :, 0] = np.arange(frames)[:, None, None] * 20
    write_video(ep / f"episode_{k}.mp4", video, fps=10)
    write_video(ep / f"episode_{k}_hands_masked.mp4", video // 2, fps=10)
    if mask_video:
        mask = np.zeros_like(video)
        mask[:, :16] = 255
        write_video(ep / f"episode_{k}_hands_mask.mp4", mask, fps=10)
    if hands:
        write_hands(ep / f"episode_{k}_hand_trajectories.hdf5", frames=frames, left=not legacy)
        write_objects(ep / f"episode_{k}_object_trajectories.hdf5", counts=(frames, frames, frames - 2))
    return ep


def dataset_config(base, **kw):
    from worldtune.data.formats.vace_e import VaceEDataConfig

    return VaceEDataConfig(dataset_base_path=str(base), num_frames=9, height=32, width=32, **kw)


def test_episodes_in_the_seed_layout(tmp_path):
    from PIL import Image

    from worldtune.data.formats.vace_e import VaceEDataset

    base = tmp_path / "data"
    ep = write_episode(base, "104-lars-grasping_2024-11-08", 0)
    Image.new("RGB", (8, 8)).save(ep / "end_effector_gripper.jpg")
    write_episode(base, "902-pouring-val", 0, legacy=True)
    write_episode(base, "300-untracked", 1, hands=False)
    meta = tmp_path / "ph2d_metadata.json"
    meta.write_text(json.dumps({"per_task_attributes": {
        "104-lars-grasping_2024-11-08": {"task_type": "grasping", "left_hand": False, "right_hand": True,
                                         "objects": "white bottle with black lid."},
        "902-pouring-val": {"task_type": "pouring", "left_hand": True, "right_hand": True, "objects": "cup, bottle."}}}))
    with pytest.raises(DataError, match="episode_1: missing episode_1_hand_trajectories.hdf5"):
        VaceEDataset(dataset_config(base, task_metadata_path=str(meta)))
    dataset = VaceEDataset(dataset_config(base, task_metadata_path=str(meta), fallback_to_video_only=True))
    assert len(dataset) == 3 and dataset.video_only == 1
    grasp, untracked, pour = (dataset[i] for i in range(3))  # task folders in sorted order
    assert grasp["prompt"] == "Right hand grasping white bottle with black lid."
    assert pour["prompt"] == "Pouring, left hand cup, right hand bottle"
    assert untracked["prompt"] == "Robot manipulation task: 300-untracked" and untracked["hand_motion"] is None
    assert grasp["video"].shape == (3, 9, 32, 32) and grasp["control"].shape == (3, 9, 32, 32)
    assert grasp["mask"].shape == (1, 9, 32, 32)
    assert 0 <= grasp["mask"].min() and grasp["mask"].max() <= 1 and grasp["mask"][0, 0, :8].mean() > 0.9
    assert grasp["hand_motion"].shape == (9, 20) and grasp["objects"].shape == (9, 3, 9)  # the clip's frames
    episode = base / "104-lars-grasping_2024-11-08" / "episode_0"
    recorded = read_hand_motion(episode / "episode_0_hand_trajectories.hdf5")  # 12 frames
    assert np.array_equal(grasp["hand_motion"].numpy(), recorded[:9])
    poses, _ = read_object_trajectories(episode / "episode_0_object_trajectories.hdf5", max_objects=10)
    assert np.array_equal(grasp["objects"].numpy(), poses[:9])
    assert not pour["hand_motion"][:, :9].any()  # the legacy file's absent left hand
    assert grasp["embodiment_image"].endswith("end_effector_gripper.jpg") and pour["embodiment_image"] is None


def test_a_bad_episode_is_named_or_skipped(tmp_path):
    from worldtune.data.formats.vace_e import VaceEDataset

    base = tmp_path / "data"
    write_episode(base, "task", 0)
    write_episode(base, "task", 1, mask_video=False)
    with pytest.raises(DataError, match="episode_1_hands_mask.mp4: missing \\(VACE mask video\\)"):
        VaceEDataset(dataset_config(base))
    dataset = VaceEDataset(dataset_config(base, on_bad_sample="skip"))
    assert len(dataset) == 1 and [name for name, _ in dataset.skipped] == ["task/episode_1"]
    from worldtune.config import ConfigError

    with pytest.raises(ConfigError, match="num_frames 9 is more than max_hand_motion_length"):
        VaceEDataset(dataset_config(base, max_hand_motion_length=8))
