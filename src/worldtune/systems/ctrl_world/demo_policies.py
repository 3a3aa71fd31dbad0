"""Scripted policies for the demo world (`data/toyenv`), a success test on frames, and the same
policies run in the real simulator, so that a ranking in imagination can be checked against reality.

The task: bring the gripper over a block (the block the recording's instruction names, else the one
that shows most in the fixed camera). Policies see only what `imagine.Observation` gives (frames,
state, instruction), so they run unchanged in the world model and in the simulator:

- `ReachBlock` finds the block in the fixed camera each chunk (colour and the camera's known
  calibration), and moves to above it at the data's speed;
- `ReachRandom` moves to a random point of the table: right only by chance.

`reached_block` judges an episode from its last frame alone: the block must fill the centre of the
wrist camera's view (it looks straight down between the fingers). In the world model that is a test
of the imagined frames, not of the commanded poses.
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
    """`rows` poses from `state` toward (goal, HOVER_Z) at `speed` a frame; orientation and opening kept."""
    out, pose = [], np.asarray(state, dtype=np.float64).copy()
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


class ReachRandom:
    """Moves to a random point of the table (drawn from the start state, so runs repeat)."""

    def __init__(self) -> None:
        self.goal: np.ndarray | None = None

    def reset(self, observation: Any) -> None:
        seed = int(abs(np.asarray(observation.state[:2]) * 1e6).sum()) % (2**31)
        self.goal = np.random.default_rng(seed).uniform(0.15, 0.85, size=2)

    def __call__(self, observation: Any) -> np.ndarray:
        if self.goal is None:
            self.reset(observation)
        return move_towards(observation.state, self.goal, observation.rows_per_chunk)


POLICIES = {"reach_block": ReachBlock, "reach_random": ReachRandom}


def block_in_wrist_centre(wrist_image: np.ndarray, colour: str) -> float:
    """Share of the wrist view's central quarter (half the height and width) showing the block."""
    h, w = wrist_image.shape[:2]
    centre = wrist_image[h // 4 : h - h // 4, w // 4 : w - w // 4]
    return float(colour_mask(centre, colour).mean())


def reached_block(episode: Any, threshold: float = 0.25) -> bool:
    """Success: at the last frame the target block fills at least `threshold` of the wrist view's centre."""
    fixed0 = _view(episode.frames[0], episode.views, FIXED_VIEW)
    colour = target_colour(episode.instruction, fixed0)
    return block_in_wrist_centre(_view(episode.frames[-1], episode.views, WRIST_VIEW), colour) >= threshold
