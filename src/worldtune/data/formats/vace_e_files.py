"""VACE-E's per-episode robot files (seed `1-vace-e.md`): hand and object trajectories, task prompts.

```
<base>/<task_folder>/episode_<k>/episode_<k>_hand_trajectories.hdf5     hands -> [T, 20]
<base>/<task_folder>/episode_<k>/episode_<k>_object_trajectories.hdf5   objects -> [T, N, 9], ids [N]
<task_metadata_path> (ph2d_metadata.json): per_task_attributes[<task_folder>] -> the prompt
```

Hand motion, 20 values per frame: left wrist position (3) and 6-D rotation (6), right wrist position
and rotation, then the left and right gripper as the seed documents them, **open = 1, closed = 0**.
The files' `*_hand_states` follow their `state_mapping` attribute (the sample files say `open=0,
closed=1, inactive=2`; that convention is assumed when the attribute is absent): the original code
took `state == 1` (closed) as its "open", the inversion this reader fixes; inactive counts as not
open. A legacy file with only `right_wrist` gets zeros for the left hand. Objects: the `object_<n>`
groups in numeric order (the original sorted `object_10` before `object_2`), shorter tracks held at
their last pose, `object_id` from each group's attribute. Every problem is a `BadRecording` naming
the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from worldtune.data.errors import DataError

HAND_DIM = 20
OBJECT_DIM = 9
DEFAULT_STATE_MAPPING = {"open": 0, "closed": 1, "inactive": 2}


class BadRecording(DataError):
    """A trajectory file or the task metadata cannot be used; the message names the file."""


def _h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise BadRecording(path, f"cannot open the HDF5 file ({err})") from err


def _pose(path: Path, group, name: str) -> np.ndarray:
    """`[T, 9]`: a group's positions (3) and 6-D rotations (6)."""
    if "positions" not in group or "rotations_6d" not in group:
        raise BadRecording(path, f"group {name!r} needs 'positions' and 'rotations_6d', has {sorted(group)}")
    pos, rot = np.asarray(group["positions"], np.float64), np.asarray(group["rotations_6d"], np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise BadRecording(path, f"{name}/positions must be [T, 3], got {list(pos.shape)}")
    if rot.ndim != 2 or rot.shape[1] != 6:
        raise BadRecording(path, f"{name}/rotations_6d must be [T, 6] (6-D rotations), got {list(rot.shape)}")
    if len(pos) != len(rot):
        raise BadRecording(path, f"{name}: {len(pos)} positions but {len(rot)} rotations")
    return np.concatenate([pos, rot], axis=1)


def state_mapping(path: Path, attrs) -> dict[str, int]:
    """The file's `state_mapping` attribute (`"open=0, closed=1, inactive=2"`), else the default."""
    raw = attrs.get("state_mapping")
    if raw is None:
        return dict(DEFAULT_STATE_MAPPING)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    pairs = dict(re.findall(r"(\w+)\s*=\s*(-?\d+)", text))
    if "open" not in pairs:
        raise BadRecording(path, f"state_mapping {text!r} does not say which value is 'open'")
    return {k: int(v) for k, v in pairs.items()}


def read_hand_motion(path: str | Path) -> np.ndarray:
    """`[T, 20]` float32 (see the module docstring). Non-finite values become 0, as the original's."""
    path = Path(path)
    with _h5(path) as f:
        if "right_wrist" not in f:
            raise BadRecording(path, f"no 'right_wrist' group (has {sorted(f)})")
        right = _pose(path, f["right_wrist"], "right_wrist")
        left = _pose(path, f["left_wrist"], "left_wrist") if "left_wrist" in f else np.zeros_like(right)
        if len(left) != len(right):
            raise BadRecording(path, f"left_wrist has {len(left)} frames, right_wrist {len(right)}")
        mapping = {**state_mapping(path, f.attrs), **_group_mapping(path, f)}
        grips = [_open(path, f, f"{side}_hand_states", len(right), mapping) for side in ("left", "right")]
    motion = np.concatenate([left, right, np.stack(grips, axis=1)], axis=1)
    return np.nan_to_num(motion, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def _group_mapping(path: Path, f) -> dict[str, int]:
    """A `state_mapping` attribute on a states dataset wins over the file's (the samples put it there)."""
    for name in ("right_hand_states", "left_hand_states"):
        if name in f and "state_mapping" in f[name].attrs:
            return state_mapping(path, f[name].attrs)
    return {}


def _open(path: Path, f, name: str, frames: int, mapping: dict[str, int]) -> np.ndarray:
    if name not in f:
        return np.zeros(frames)  # a legacy single-hand file: that hand is absent
    states = np.asarray(f[name]).reshape(-1)
    if len(states) != frames:
        raise BadRecording(path, f"{name} has {len(states)} frames, the wrists {frames}")
    return (states == mapping["open"]).astype(np.float64)


def read_object_trajectories(path: str | Path, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """(`[T, N, 9]` float32, `object_ids [N]` int64) for the `object_<n>` groups in numeric order."""
    path = Path(path)
    with _h5(path) as f:
        names = sorted((k for k in f if re.fullmatch(r"object_\d+", k)), key=lambda k: int(k.split("_")[1]))
        if not names:
            raise BadRecording(path, f"no object_<n> groups (has {sorted(f)})")
        if len(names) > max_objects:
            raise BadRecording(path, f"{len(names)} objects, more than max_objects {max_objects}")
        tracks = [_pose(path, f[n], n) for n in names]
        ids = [int(f[n].attrs.get("object_id", int(n.split("_")[1]))) for n in names]
    if any(len(t) == 0 for t in tracks):
        raise BadRecording(path, "an object track has no frames")
    frames = max(len(t) for t in tracks)
    held = [np.concatenate([t, np.repeat(t[-1:], frames - len(t), axis=0)]) for t in tracks]
    out = np.nan_to_num(np.stack(held, axis=1), nan=0.0, posinf=0.0, neginf=0.0)
    return out.astype(np.float32), np.asarray(ids, dtype=np.int64)


def align_to_clip(trajectory: np.ndarray, frame_indices: list[int], path: str | Path) -> np.ndarray:
    """The trajectory rows of the clip's video frames: one row per video frame (a longer recording's
    tail is not used). The original fed the whole episode beside an 81-frame clip."""
    needed = max(frame_indices) + 1
    if len(trajectory) < needed:
        raise BadRecording(path, f"{len(trajectory)} trajectory frames, the clip needs frame {needed - 1}")
    return trajectory[frame_indices]


# ------------------------------------------------------------------------------------- prompts

def load_task_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """`per_task_attributes` of ph2d_metadata.json, keyed by the full task folder name."""
    import json

    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadRecording(path, f"cannot read the task metadata ({err})") from err
    tasks = tree.get("per_task_attributes") if isinstance(tree, dict) else None
    if not isinstance(tasks, dict):
        raise BadRecording(path, "no 'per_task_attributes' object")
    return tasks


def task_prompt(task_name: str, attributes: dict[str, Any] | None) -> str:
    """The seed's prompt rules: "Right hand grasping white bottle with black lid.", "Pouring, left
    hand cup, right hand bottle", "Both hands <task> <objects>", "Left hand ...", "<Task> <objects>";
    without metadata "Robot manipulation task: <task folder>"."""
    if attributes is None:
        return f"Robot manipulation task: {task_name}"
    task = str(attributes.get("task_type", "manipulation"))
    objects = str(attributes.get("objects", "objects"))
    left, right = bool(attributes.get("left_hand", False)), bool(attributes.get("right_hand", True))
    if left and right:
        items = [o.strip().rstrip(".") for o in objects.split(",") if o.strip()]
        if task == "pouring" and len(items) == 2:  # the original hard-coded these two objects
            return f"Pouring, left hand {items[0]}, right hand {items[1]}"
        return f"Both hands {task} {objects}"
    if right:
        return f"Right hand {task} {objects}"
    if left:
        return f"Left hand {task} {objects}"
    return f"{task.capitalize()} {objects}"

