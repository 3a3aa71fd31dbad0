"""Scripted policies for the demo world (`data/toyenv`), a success test on frames, and the same
policies run in the real simulator, so that a ranking in imagination can be checked against reality.

The task: bring the gripper over a block (the block the recording's instruction names, else the one
that shows most in the fixed camera). Policies see only what `imagine.Observation` gives (frames,
state, instruction), so they run unchanged in the world model and in the simulator:

- `ReachBlock` finds the block in the fixed camera each chunk (colour and the camera's known
  calibration), and moves to above it at the data's speed;
- `ReachNearby` aims at the block with a random error of a few centimetres: right about half the time;
- `ReachRandom` moves to a random point of the table: right only by chance.

`reached_block` judges an episode from its frames alone: in the fixed camera, the gripper at the last
frame (where the picture turned orange since the start frame) must be over the target block (found in
the start frame). In the world model that is a test of the imagined frames, not of the commanded
poses. `reached_block_wrist` asks the wrist camera instead (the block under its centre): exact on
rendered frames, but a blurred imagined wrist view rarely passes it.
Use: `worldtune eval ctrl-world RUN --policy worldtune.systems.ctrl_world.demo_policies:ReachBlock
--success worldtune.systems.ctrl_world.demo_policies:reached_block --chunks 6`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from worldtune.data.toyenv_render import plane_points
from worldtune.data.toyenv_world import BLOCK_COLORS, POSE_HIGH, POSE_LOW

FIXED_VIEW, WRIST_VIEW = "cam_high", "cam_left_wrist"
HOVER_Z = 0.12
SPEED = 0.09  # table units per frame: the demo data's mean speed (0.03 a simulator step, 3 steps a frame)
BLOCK_TOP_Z = 0.07  # about a block's top face: where a block pixel's ray is cut
GRIPPER_TOP_Z = HOVER_Z + 0.13  # about the palm's top face over a hovering gripper
# Shading of the faces the fixed camera sees (see toyenv_render): a block pixel is its colour times 0.55-1.
_SHADES = np.linspace(0.55, 1.0, 10)


def _view(frames: np.ndarray, views: list[str], name: str) -> np.ndarray:
    if name not in views:
        raise ValueError(f"the demo policies need the {name} view; the run has {views}")
    return frames[views.index(name)]


def colour_mask(image: np.ndarray, colour: str, tolerance: float = 40.0) -> np.ndarray:
    """Pixels [H, W] within `tolerance` (RGB distance) of the block colour under any face shading."""
    base = np.asarray(BLOCK_COLORS[colour], dtype=np.float64)
    pixels = image.astype(np.float64)
    distance = np.min([np.linalg.norm(pixels - s * base, axis=-1) for s in _SHADES], axis=0)
    return distance < tolerance


def target_colour(instruction: str, fixed_image: np.ndarray) -> str:
    """The block colour the instruction names, else the colour that covers most of the fixed view."""
    named = [c for c in BLOCK_COLORS if re.search(rf"\b{c}\b", instruction.lower())]
    if named:
        return named[0]
    return max(BLOCK_COLORS, key=lambda c: int(colour_mask(fixed_image, c).sum()))


@functools.lru_cache(maxsize=8)
def _table_points(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each fixed-camera pixel's ray meets the plane of the blocks' tops."""
    return plane_points(FIXED_VIEW, height, width, BLOCK_TOP_Z)


def locate_block(fixed_image: np.ndarray, colour: str) -> np.ndarray | None:
    """The block's table position (x, y) seen in the fixed camera, or None when it is not visible."""
    mask = colour_mask(fixed_image, colour)
    if mask.sum() < 2:
        return None
    xs, ys = _table_points(*fixed_image.shape[:2])
    return np.array([xs[mask].mean(), ys[mask].mean()])


def move_towards(state: np.ndarray, goal_xy: np.ndarray, rows: int, speed: float = SPEED) -> np.ndarray:
    """`rows` poses from `state` toward (goal, HOVER_Z) at `speed` a frame, the gripper open (a block it
    held falls), the orientation kept."""
    out, pose = [], np.asarray(state, dtype=np.float64).copy()
    pose[6] = 1.0
    target = np.array([goal_xy[0], goal_xy[1], HOVER_Z])
    for _ in range(rows):
        delta = target - pose[:3]
        step = np.linalg.norm(delta)
        pose[:3] += delta if step <= speed else delta * (speed / step)
        out.append(np.clip(pose, POSE_LOW, POSE_HIGH))
    return np.stack(out)


class ReachBlock:
    """Moves over the target block, found anew in the fixed camera at every chunk."""

    def __init__(self) -> None:
        self.colour: str | None = None
        self.goal: np.ndarray | None = None

    def reset(self, observation: Any) -> None:
        fixed = _view(observation.frames, observation.views, FIXED_VIEW)
        self.colour = target_colour(observation.instruction, fixed)
        self.goal = None

    def __call__(self, observation: Any) -> np.ndarray:
        if self.colour is None:
            self.reset(observation)
        seen = locate_block(_view(observation.frames, observation.views, FIXED_VIEW), self.colour)
        if seen is not None:
            self.goal = seen
        goal = self.goal if self.goal is not None else observation.state[:2]
        return move_towards(observation.state, goal, observation.rows_per_chunk)


class ReachNearby(ReachBlock):
    """`ReachBlock` with a sloppy aim: a random offset (drawn from the start state) added to the block's
    position; right about half the time."""

    OFFSET = 0.06

    def reset(self, observation: Any) -> None:
        super().reset(observation)
        self.offset = _start_rng(observation).normal(0.0, self.OFFSET, size=2)

    def __call__(self, observation: Any) -> np.ndarray:
        if self.colour is None:
            self.reset(observation)
        seen = locate_block(_view(observation.frames, observation.views, FIXED_VIEW), self.colour)
        if seen is not None:
            self.goal = seen + self.offset
        goal = self.goal if self.goal is not None else observation.state[:2]
        return move_towards(observation.state, goal, observation.rows_per_chunk)


def _start_rng(observation: Any) -> np.random.Generator:
    """A generator seeded by the start state, so a policy's draws repeat from the same start."""
    return np.random.default_rng(int(abs(np.asarray(observation.state[:2]) * 1e6).sum()) % (2**31))


class ReachRandom:
    """Moves to a random point of the table (drawn from the start state, so runs repeat)."""

    def __init__(self) -> None:
        self.goal: np.ndarray | None = None

    def reset(self, observation: Any) -> None:
        self.goal = _start_rng(observation).uniform(0.15, 0.85, size=2)

    def __call__(self, observation: Any) -> np.ndarray:
        if self.goal is None:
            self.reset(observation)
        return move_towards(observation.state, self.goal, observation.rows_per_chunk)


POLICIES = {"reach_block": ReachBlock, "reach_nearby": ReachNearby, "reach_random": ReachRandom}


def block_in_wrist_centre(wrist_image: np.ndarray, colour: str) -> float:
    """Share of the centre of the wrist view (a square a sixth of the image's side, at least 2 pixels)
    showing the block: the point right below the gripper."""
    h, w = wrist_image.shape[:2]
    half_h, half_w = max(1, h // 12), max(1, w // 12)
    centre = wrist_image[h // 2 - half_h : h // 2 + half_h, w // 2 - half_w : w // 2 + half_w]
    return float(colour_mask(centre, colour).mean())


def reached_block_wrist(episode: Any, threshold: float = 0.5) -> bool:
    """Success seen by the wrist camera: at the last frame the target block covers at least `threshold`
    of its centre (exact on rendered frames; needs sharp frames of what came into the wrist's view)."""
    fixed0 = _view(episode.frames[0], episode.views, FIXED_VIEW)
    colour = target_colour(episode.instruction, fixed0)
    return block_in_wrist_centre(_view(episode.frames[-1], episode.views, WRIST_VIEW), colour) >= threshold


def _orange(image: np.ndarray) -> np.ndarray:
    """How orange each pixel is (the gripper's hue: red well above green well above blue), 0 for the
    red and yellow blocks and anything else."""
    r, g, b = (image[..., k].astype(np.float64) for k in range(3))
    return np.clip(r - g - 50, 0, None) * np.clip(g - b - 25, 0, None)


def locate_gripper(start: np.ndarray, image: np.ndarray) -> np.ndarray | None:
    """The gripper's table position in a fixed-camera frame: where the frame became more orange than the
    start frame (the table there does not change), mapped through the camera at the palm's height.
    A blurred gripper still has its centroid; None when no orange appeared (it left or vanished)."""
    gain = np.clip(_orange(image) - _orange(start), 0, None)
    if gain.sum() < 1e3:
        return None
    xs, ys = plane_points(FIXED_VIEW, *image.shape[:2], GRIPPER_TOP_Z)
    return np.array([(xs * gain).sum(), (ys * gain).sum()]) / gain.sum()


def reached_block(episode: Any, tolerance: float = 0.07) -> bool:
    """Success seen by the fixed camera: at the last frame the gripper (located by `locate_gripper`) is
    within `tolerance` of the target block (located in the start frame)."""
    start = _view(episode.frames[0], episode.views, FIXED_VIEW)
    block = locate_block(start, target_colour(episode.instruction, start))
    gripper = locate_gripper(start, _view(episode.frames[-1], episode.views, FIXED_VIEW))
    return block is not None and gripper is not None and float(np.linalg.norm(gripper - block)) < tolerance
