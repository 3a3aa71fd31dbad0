"""State and physics of the toy tabletop world (see `worldtune.data.toyenv`).

The table is the unit square in x (left -> right) and y (near -> far), z points up. The gripper's
tool centre point (TCP, between the finger tips) has a pose `[x, y, z, roll, pitch, yaw, g]`
(`g` = opening in [0, 1], 1 = open). A step moves the pose toward an absolute commanded pose with
per-step speed limits, in a few sub-steps so that contacts are never skipped:

- grasp: when the gripper is low (`z < GRASP_Z`), closed (`g < 0.5`) and its TCP is over a block
  (closer to its centre than the block's half size), it holds that block; the block then follows
  the gripper (position and yaw) until the gripper opens (`g >= 0.5`), when it falls to the table;
- push: a low gripper (below a block's top) that touches a block it does not hold pushes it out
  of its footprint (a disc of radius `finger_sep / 2 + finger thickness`); blocks push each other
  apart and stay on the table.

Everything is deterministic float64 numpy arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POSE_DIM = 7
POSE_NAMES = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
# Commanded poses are clipped into these bounds (yaw stays inside (-pi, pi): no wrap-around).
POSE_LOW = np.array([0.05, 0.05, 0.0, -0.35, -0.35, -1.6, 0.0])
POSE_HIGH = np.array([0.95, 0.95, 0.35, 0.35, 0.35, 1.6, 1.0])
MAX_XY_STEP = 0.1  # table units per step
MAX_Z_STEP = 0.08
MAX_ANGLE_STEP = 0.3  # radians per step
MAX_GRIP_STEP = 0.5
SUBSTEPS = 5

GRASP_Z = 0.05  # TCP height below which a closed gripper grasps
FALL_STEP = 0.08  # a released block falls this far per step
ON_TABLE_Z = 1e-6

# Gripper geometry in its own frame (x: finger axis, z: up, away from the finger tips).
FINGER_HALF = (0.012, 0.03, 0.045)  # half extents of one finger
FINGER_SEP_CLOSED = 0.03  # distance between the finger centres at g = 0
FINGER_SEP_OPEN = 0.18  # ... at g = 1
PALM_HALF = (0.05, 0.035, 0.018)
PALM_Z = 2 * FINGER_HALF[2] + PALM_HALF[2]  # palm centre height above the TCP
COLUMN_HALF = (0.014, 0.014, 0.07)
WRIST_CAMERA_Z = 0.22  # wrist camera height above the TCP, looking along -z of the gripper

BLOCK_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 200, 60),
    "blue": (40, 90, 235),
    "yellow": (245, 205, 30),
}
BLOCK_HALF_SIZES = (0.05, 0.06, 0.07)
BLOCK_HEIGHT_RATIO = 1.2  # block height / half size


@dataclass
class Block:
    """A coloured block resting on (or carried above) the table."""

    name: str  # colour name: "red", "green", ...
    color: tuple[int, int, int]
    half: float  # half side length in x / y (table units)
    xy: np.ndarray  # centre, shape (2,)
    z: float = 0.0  # height of the bottom face
    yaw: float = 0.0

    @property
    def height(self) -> float:
        return BLOCK_HEIGHT_RATIO * self.half

    def copy(self) -> Block:
        return Block(self.name, self.color, self.half, self.xy.copy(), self.z, self.yaw)


def rotation_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (extrinsic x-y-z Euler angles), shape (3, 3)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    return np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )


def finger_separation(g: float) -> float:
    """Distance between the finger centres for opening `g` (with nothing between them)."""
    return FINGER_SEP_CLOSED + (FINGER_SEP_OPEN - FINGER_SEP_CLOSED) * float(np.clip(g, 0.0, 1.0))


def _rot2(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class ToyWorld:
    """The simulated state: gripper pose, blocks and which block (if any) is held.

    `step(action)` applies one absolute 7-D target pose; `qpos` is the achieved pose.
    """

    def __init__(self, rng: np.random.Generator, num_objects: int | None = None):
        if num_objects is None:
            num_objects = int(rng.integers(2, 4))
        if not 1 <= num_objects <= len(BLOCK_COLORS):
            raise ValueError(f"num_objects must be in [1, {len(BLOCK_COLORS)}], got {num_objects}")
        names = list(BLOCK_COLORS)[:3] if num_objects <= 3 else list(BLOCK_COLORS)
        chosen = [names[i] for i in sorted(rng.choice(len(names), size=num_objects, replace=False))]
        halves = rng.permutation(np.resize(np.array(BLOCK_HALF_SIZES), num_objects))
        self.blocks: list[Block] = []
        self.held: int | None = None
        self._hold_offset = np.zeros(4)  # (dx, dy) in the gripper's yaw frame, dz, dyaw
        for name, half in zip(chosen, halves, strict=True):
            for _ in range(200):  # rejection sampling of non-overlapping positions
                xy = rng.uniform(0.12 + half, 0.88 - half, size=2)
                if all(np.linalg.norm(xy - b.xy) > half + b.half + 0.05 for b in self.blocks):
                    break
            yaw = float(rng.uniform(-math.pi / 4, math.pi / 4))
            self.blocks.append(Block(name, BLOCK_COLORS[name], float(half), xy, 0.0, yaw))
        self._resolve_block_overlaps()
        self.pose = np.array(
            [
                rng.uniform(0.2, 0.8),
                rng.uniform(0.2, 0.8),
                rng.uniform(0.15, 0.3),
                rng.uniform(-0.1, 0.1),
                rng.uniform(-0.1, 0.1),
                rng.uniform(-0.8, 0.8),
                1.0,
            ]
        )

    # ------------------------------------------------------------------ state access

    @property
    def qpos(self) -> np.ndarray:
        """The achieved pose `[x, y, z, roll, pitch, yaw, g]`, a float64 copy."""
        return self.pose.copy()

    def block_positions(self) -> np.ndarray:
        """`[K, 3]` block centres of the bottom faces (x, y, z)."""
        return np.array([[b.xy[0], b.xy[1], b.z] for b in self.blocks])

    def copy(self) -> ToyWorld:
        other = object.__new__(ToyWorld)
        other.blocks = [b.copy() for b in self.blocks]
        other.pose = self.pose.copy()
        other.held = self.held
        other._hold_offset = self._hold_offset.copy()
        return other

    def finger_separation(self) -> float:
        """Visual finger separation: the opening, but never narrower than a held block."""
        sep = finger_separation(self.pose[6])
        if self.held is not None:
            sep = max(sep, 2 * self.blocks[self.held].half + 2 * FINGER_HALF[0])
        return sep

    # ------------------------------------------------------------------ dynamics

    def step(self, action: np.ndarray) -> np.ndarray:
        """Move toward the absolute target pose `action` (7,) for one step; returns `qpos`."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (POSE_DIM,):
            raise ValueError(f"action must have shape ({POSE_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite values: {action}")
        target = np.clip(action, POSE_LOW, POSE_HIGH)
        delta = target - self.pose
        xy_norm = float(np.linalg.norm(delta[:2]))
        if xy_norm > MAX_XY_STEP:
            delta[:2] *= MAX_XY_STEP / xy_norm
        delta[2] = np.clip(delta[2], -MAX_Z_STEP, MAX_Z_STEP)
        delta[3:6] = np.clip(delta[3:6], -MAX_ANGLE_STEP, MAX_ANGLE_STEP)
        delta[6] = np.clip(delta[6], -MAX_GRIP_STEP, MAX_GRIP_STEP)

        self.pose[6] += delta[6]
        if self.held is not None and self.pose[6] >= 0.5:
            self.held = None  # released: the block falls below
        start = self.pose[:6].copy()
        for k in range(1, SUBSTEPS + 1):
            self.pose[:6] = start + delta[:6] * (k / SUBSTEPS)
            self._carry()
            self._push()
        for i, block in enumerate(self.blocks):
            if i != self.held and block.z > ON_TABLE_Z:
                block.z = max(0.0, block.z - FALL_STEP)
        self._try_grasp()
        return self.qpos

    def _carry(self) -> None:
        if self.held is None:
            return
        block = self.blocks[self.held]
        yaw = self.pose[5]
        block.xy = np.clip(self.pose[:2] + _rot2(yaw) @ self._hold_offset[:2], block.half, 1 - block.half)
        block.z = max(0.0, self.pose[2] + self._hold_offset[2])
        block.yaw = yaw + self._hold_offset[3]

    def _push(self) -> None:
        gz = self.pose[2]
        reach = self.finger_separation() / 2 + FINGER_HALF[0]
        for i, block in enumerate(self.blocks):
            if i == self.held or block.z > ON_TABLE_Z or gz >= block.height:
                continue
            diff = block.xy - self.pose[:2]
            dist = float(np.linalg.norm(diff))
            # Inside the block's footprint the fingers straddle it; in the ring around it they push.
            if block.half <= dist < reach + block.half:
                block.xy = self.pose[:2] + diff * ((reach + block.half) / dist)
        self._resolve_block_overlaps()

    def _resolve_block_overlaps(self, iterations: int = 2) -> None:
        for _ in range(iterations):
            for i, a in enumerate(self.blocks):
                for j in range(i + 1, len(self.blocks)):
                    b = self.blocks[j]
                    if self.held in (i, j) or a.z > ON_TABLE_Z or b.z > ON_TABLE_Z:
                        continue
                    diff = b.xy - a.xy
                    dist = float(np.linalg.norm(diff))
                    overlap = a.half + b.half - dist
                    if overlap > 0:
                        direction = diff / dist if dist > 1e-9 else np.array([1.0, 0.0])
                        a.xy = a.xy - direction * (overlap / 2)
                        b.xy = b.xy + direction * (overlap / 2)
            for block in self.blocks:
                block.xy = np.clip(block.xy, block.half, 1 - block.half)

    def _try_grasp(self) -> None:
        if self.held is not None or self.pose[6] >= 0.5 or self.pose[2] >= GRASP_Z:
            return
        best, best_dist = None, math.inf
        for i, block in enumerate(self.blocks):
            dist = float(np.linalg.norm(block.xy - self.pose[:2]))
            if block.z <= ON_TABLE_Z and dist < block.half and dist < best_dist:
                best, best_dist = i, dist
        if best is None:
            return
        block, yaw = self.blocks[best], self.pose[5]
        offset_xy = _rot2(-yaw) @ (block.xy - self.pose[:2])
        self._hold_offset = np.array([offset_xy[0], offset_xy[1], block.z - self.pose[2], block.yaw - yaw])
        self.held = best
