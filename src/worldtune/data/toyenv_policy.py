"""Scripted random policy for the toy world (see `worldtune.data.toyenv`).

The policy is a queue of segments. A segment picks a waypoint (an absolute 7-D pose) when it
starts, from the world as it is then (so a pick goes where the block really is), and the commanded
pose follows a minimum-jerk curve from the previous command to that waypoint. Speeds are drawn per
segment and stay inside the simulator's limits, so the achieved pose tracks the command.

With probability `pick_prob` an episode is a pick-and-place (hover over a block, descend, close,
lift, carry to a place, lower, open, retreat), sometimes after one random waypoint; otherwise, and
after the place, the gripper wanders between random waypoints (some low enough to push blocks,
some pauses, random yaw, small roll / pitch, random opening). `rotation` scales every change of
the gripper's orientation (1: as described; 0: the gripper keeps its starting roll, pitch and yaw,
a position-only policy). Everything comes from one `numpy.random.Generator`, so an episode is
reproducible from its seed.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np

from worldtune.data.toyenv_world import POSE_HIGH, POSE_LOW, ToyWorld

HOVER_Z = (0.1, 0.16)
GRASP_TCP_Z = 0.02
PLACE_TCP_Z = 0.035
XY_SPEED = (0.03, 0.05)  # mean speed of a segment; the min-jerk peak is 1.875x the mean
Z_SPEED = 0.04
ANGLE_SPEED = 0.15
GRIP_SPEED = 0.25

# Where a block can be put, in words and as (x, y) ranges.
PLACES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "on the left": ((0.15, 0.25), (0.3, 0.7)),
    "on the right": ((0.75, 0.85), (0.3, 0.7)),
    "at the top": ((0.3, 0.7), (0.75, 0.85)),
    "at the bottom": ((0.3, 0.7), (0.15, 0.25)),
    "in the middle": ((0.45, 0.55), (0.45, 0.55)),
}

Waypoint = Callable[[ToyWorld, np.ndarray], np.ndarray]  # (world, last command) -> target pose


def _min_jerk(s: float) -> float:
    return s * s * s * (10 - 15 * s + 6 * s * s)


class ScriptedPolicy:
    """Emits one absolute 7-D target pose per call of `act(world)`; `instruction` describes the plan."""

    def __init__(
        self, world: ToyWorld, rng: np.random.Generator, pick_prob: float = 0.6, rotation: float = 1.0
    ):
        if not 0.0 <= rotation <= 1.0:
            raise ValueError(f"rotation must be in [0, 1], got {rotation}")
        self.rng = rng
        self.rotation = float(rotation)
        self.command = world.qpos
        self._queue: deque[tuple[Waypoint, float]] = deque()
        self._start = self._target = self.command
        self._duration = 0
        self._k = 0
        self.target_block: int | None = None
        if rng.random() < pick_prob:
            if rng.random() < 0.25:
                self._queue.append((self._wander, self._speed()))
            self.target_block = int(rng.integers(len(world.blocks)))
            self.instruction = self._plan_pick_place(world, self.target_block)
        else:
            self.instruction = "move the gripper around the table"

    # ------------------------------------------------------------------ planning

    def _speed(self) -> float:
        return float(self.rng.uniform(*XY_SPEED))

    def _plan_pick_place(self, world: ToyWorld, k: int) -> str:
        rng, block = self.rng, world.blocks[k]
        others = [i for i in range(len(world.blocks)) if i != k]
        if others and rng.random() < 0.25:
            ref = others[int(rng.integers(len(others)))]
            phrase = f"next to the {world.blocks[ref].name} block"
            angle = float(rng.uniform(0, 2 * math.pi))

            def place_xy(w: ToyWorld) -> np.ndarray:
                other = w.blocks[ref]
                gap = other.half + w.blocks[k].half + 0.03
                return other.xy + gap * np.array([math.cos(angle), math.sin(angle)])
        else:
            phrase = list(PLACES)[int(rng.integers(len(PLACES)))]
            (x0, x1), (y0, y1) = PLACES[phrase]
            goal = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])

            def place_xy(w: ToyWorld) -> np.ndarray:
                return goal

        hover = float(rng.uniform(*HOVER_Z))
        speed = self._speed()
        tilt = rng.uniform(-0.1, 0.1, size=2)

        def above_block(w: ToyWorld, cmd: np.ndarray) -> np.ndarray:
            b = w.blocks[k]
            # The finger axis aligned with a side of the block, the closest such yaw to the current one.
            yaws = [b.yaw + m * math.pi / 2 for m in range(-3, 4)]
            yaws = [y for y in yaws if abs(y) <= POSE_HIGH[5] - 0.1] or [0.0]
            yaw = min(yaws, key=lambda y: abs(y - cmd[5]))
            return np.array([b.xy[0], b.xy[1], hover, tilt[0], tilt[1], yaw, 1.0])

        def with_(**changes: float) -> Waypoint:
            index = {"z": 2, "g": 6}

            def waypoint(w: ToyWorld, cmd: np.ndarray) -> np.ndarray:
                target = cmd.copy()
                for key, value in changes.items():
                    target[index[key]] = value
                return target

            return waypoint

        def carry(w: ToyWorld, cmd: np.ndarray) -> np.ndarray:
            target = cmd.copy()
            target[:2] = place_xy(w)
            target[5] = np.clip(cmd[5] + rng.uniform(-0.5, 0.5), -1.4, 1.4)
            return target

        self._queue.extend(
            [
                (above_block, speed),
                (with_(z=GRASP_TCP_Z), speed),
                (with_(g=0.0), speed),
                (with_(z=hover), speed),
                (carry, speed),
                (with_(z=PLACE_TCP_Z), speed),
                (with_(g=1.0), speed),
                (with_(z=hover), speed),
            ]
        )
        return f"put the {block.name} block {phrase}"

    def _wander(self, world: ToyWorld, cmd: np.ndarray) -> np.ndarray:
        rng = self.rng
        target = cmd.copy()
        if rng.random() < 0.15:
            return target  # a pause
        target[:2] = rng.uniform(0.1, 0.9, size=2)
        target[2] = rng.uniform(0.01, 0.04) if rng.random() < 0.35 else rng.uniform(0.06, 0.3)
        target[3:5] = rng.uniform(-0.2, 0.2, size=2)
        target[5] = np.clip(cmd[5] + rng.uniform(-0.8, 0.8), -1.4, 1.4)
        if rng.random() < 0.3:
            target[6] = rng.choice([0.0, 1.0, float(rng.uniform(0.2, 0.8))])
        return target

    # ------------------------------------------------------------------ acting

    def _next_segment(self, world: ToyWorld) -> None:
        if not self._queue:
            self._queue.append((self._wander, self._speed()))
        waypoint, speed = self._queue.popleft()
        self._start = self.command.copy()
        target = np.clip(waypoint(world, self.command), POSE_LOW, POSE_HIGH)
        delta = np.abs(target - self._start)
        steps = max(
            float(np.linalg.norm(delta[:2])) / speed,
            delta[2] / Z_SPEED,
            float(delta[3:6].max()) / ANGLE_SPEED,
            delta[6] / GRIP_SPEED,
        )
        if self.rotation != 1.0:  # the orientation moves `rotation` of the way; draws and timing stay
            target[3:6] = self._start[3:6] + self.rotation * (target[3:6] - self._start[3:6])
        self._target = target
        self._duration = max(2, math.ceil(steps))
        self._k = 0

    def act(self, world: ToyWorld) -> np.ndarray:
        """The next absolute target pose `[x, y, z, roll, pitch, yaw, g]` (float64)."""
        if self._k >= self._duration:
            self._next_segment(world)
        self._k += 1
        blend = _min_jerk(self._k / self._duration)
        self.command = self._start + (self._target - self._start) * blend
        return self.command.copy()
