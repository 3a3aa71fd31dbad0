"""Physics and scripted policy of the planar pushing world (see `worldtune.data.pushworld`).

Physics: the pusher is a kinematic disc that moves toward the commanded xy at most `MAX_STEP` per
step, in `SUBSTEPS` sub-steps (each far smaller than any shape, so no contact is skipped). After
each sub-step overlaps are removed by positional projection: the pusher moves an object out along
the contact normal, objects are clamped onto the table, objects push each other apart (half each,
or all of it when the table's edge stops one), and a pusher that still overlaps an object (stuck at
the edge) yields instead. Objects are
discs and axis-aligned squares without rotation or friction: a push moves an object only while the
pusher touches it. Plain float arithmetic, so every run is bit-for-bit repeatable.

Policy: a queue of phases, each planned when it starts from the world as it is then. A task picks
an object and a goal (of a few random goals, the one whose push starts nearest the pusher), goes
around the object to the point behind it (opposite the goal), pushes it to the goal and, if it
slid off the line, tries again (twice at most); between tasks it may pause or wander. Each phase
follows a polyline at a cruise speed under `MAX_STEP` with smooth speed ramps at both ends, so the
command is smooth and the pusher tracks it. A still policy commands the current pose.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

PUSHER_RADIUS = 0.05
MAX_STEP = 0.03  # table units per step
SUBSTEPS = 4
XY_LOW, XY_HIGH = 0.05, 0.95  # commanded / achieved pusher xy bounds
POSE_CONSTANT = (0.02, 0.0, 0.0, 0.0, 0.0)  # z, roll, pitch, yaw, gripper: fixed in this world
APPROACH_SPEED = (0.018, 0.028)  # cruise speed of a phase, drawn per phase (< MAX_STEP)
PUSH_SPEED = (0.010, 0.018)
RAMP_STEPS = 4  # steps to speed up / slow down
GOAL_TOLERANCE = 0.06


def pose(xy: np.ndarray) -> np.ndarray:
    return np.array([xy[0], xy[1], *POSE_CONSTANT])


def _contact(ax, ay, a_box, a_size, bx, by, b_box, b_size) -> tuple[float, float, float]:
    """Unit normal (pointing from a to b) and depth of the overlap of two shapes; depth <= 0: apart."""
    dx, dy = bx - ax, by - ay
    if a_box and b_box:
        ox, oy = a_size + b_size - abs(dx), a_size + b_size - abs(dy)
        return (math.copysign(1.0, dx), 0.0, ox) if ox < oy else (0.0, math.copysign(1.0, dy), oy)
    if not a_box and not b_box:
        d = math.hypot(dx, dy)
        return (dx / d, dy / d, a_size + b_size - d) if d > 1e-12 else (1.0, 0.0, a_size + b_size)
    if b_box:  # solve as box at a, disc at b, then flip the normal
        nx, ny, depth = _contact(bx, by, True, b_size, ax, ay, False, a_size)
        return -nx, -ny, depth
    h, r = a_size, b_size
    vx, vy = dx - min(max(dx, -h), h), dy - min(max(dy, -h), h)  # disc centre - closest box point
    d = math.hypot(vx, vy)
    if d > 1e-12:
        return vx / d, vy / d, r - d
    px, py = h - abs(dx), h - abs(dy)  # the centre is inside the box: leave by the nearest side
    return (math.copysign(1.0, dx), 0.0, px + r) if px < py else (0.0, math.copysign(1.0, dy), py + r)


def _clamp_move(p: list[float], s: float, dx: float, dy: float) -> tuple[float, float]:
    """Move object centre `p` (half size `s`) by (dx, dy) but stay on the table; returns the part refused."""
    x, y = p[0] + dx, p[1] + dy
    p[0], p[1] = min(max(x, s), 1.0 - s), min(max(y, s), 1.0 - s)
    return x - p[0], y - p[1]


@dataclass
class PushWorld:
    """State: pusher xy and the movable objects (centres, sizes = radius or half side, kinds)."""

    pusher: np.ndarray  # float64 (2,)
    pos: np.ndarray  # float64 [K, 2]
    size: np.ndarray  # float64 [K]
    box: np.ndarray  # bool [K]
    colors: np.ndarray  # float32 [K, 3]
    names: tuple[str, ...]

    @property
    def qpos(self) -> np.ndarray:
        return pose(self.pusher)

    def reach(self, k: int) -> float:
        """Distance from object k's centre to its farthest point."""
        return float(self.size[k] * (math.sqrt(2.0) if self.box[k] else 1.0))

    def extent(self, k: int, direction: np.ndarray) -> float:
        """Half width of object k along unit `direction` (its support distance)."""
        return float(self.size[k] * (abs(direction[0]) + abs(direction[1]) if self.box[k] else 1.0))

    def copy(self) -> PushWorld:
        return replace(self, pusher=self.pusher.copy(), pos=self.pos.copy())

    def step(self, target: np.ndarray) -> np.ndarray:
        """Move toward the absolute target pose (7,) for one step; returns the achieved pose."""
        delta = np.clip(target[:2], XY_LOW, XY_HIGH) - self.pusher
        norm = float(np.hypot(*delta))
        if norm > MAX_STEP:
            delta *= MAX_STEP / norm
        for _ in range(SUBSTEPS):
            self.pusher = self.pusher + delta / SUBSTEPS
            self._resolve()
        return self.qpos

    def _resolve(self) -> None:
        px, py = self.pusher.tolist()
        pos, size, box = self.pos.tolist(), self.size.tolist(), self.box.tolist()
        for p, s, b in zip(pos, size, box, strict=True):
            nx, ny, depth = _contact(px, py, False, PUSHER_RADIUS, p[0], p[1], b, s)
            if depth > 0:
                p[0], p[1] = p[0] + nx * depth, p[1] + ny * depth
        for p, s in zip(pos, size, strict=True):
            _clamp_move(p, s, 0.0, 0.0)
        for _ in range(3):  # a few passes settle chains of objects
            for i in range(len(pos)):
                for j in range(i + 1, len(pos)):
                    nx, ny, depth = _contact(*pos[i], box[i], size[i], *pos[j], box[j], size[j])
                    if depth > 0:
                        # Half each; what the table's edge stops one object from taking, the other takes.
                        lost = _clamp_move(pos[j], size[j], nx * depth / 2, ny * depth / 2)
                        _clamp_move(pos[i], size[i], -nx * depth / 2 - lost[0], -ny * depth / 2 - lost[1])
        for p, s, b in zip(pos, size, box, strict=True):  # an object stuck at the edge stops the pusher
            nx, ny, depth = _contact(px, py, False, PUSHER_RADIUS, p[0], p[1], b, s)
            if depth > 0:
                px, py = px - nx * depth, py - ny * depth
        self.pusher = np.clip(np.array([px, py]), XY_LOW, XY_HIGH)
        self.pos = np.array(pos, dtype=np.float64).reshape(-1, 2)


def smooth_path(points: list[np.ndarray], vmax: float) -> list[np.ndarray]:
    """xy targets, one per step, along a polyline at cruise speed <= `vmax` with smooth ramps.

    The speed rises and falls as a raised cosine over `RAMP_STEPS` steps at each end (no jump in
    velocity, so the command is smooth) and cruises in between (far faster than a minimum-jerk
    profile under the same peak speed, so long approaches do not eat the episode).
    """
    pts = np.asarray(points, dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    length = float(cum[-1])
    if length < 1e-9:
        return [pts[-1].copy()]
    n = max(1, math.ceil(length / vmax))
    while True:  # lengthen until the ramps fit under the speed limit
        k = np.arange(n)
        x = np.minimum(np.minimum(k + 1, n - k) / (RAMP_STEPS + 1), 1.0)
        speed = 0.5 - 0.5 * np.cos(np.pi * x)
        speed *= length / speed.sum()
        if speed.max() <= vmax * (1 + 1e-9):
            break
        n += 1
    s = np.minimum(np.cumsum(speed), length)
    s[-1] = length
    return list(np.stack([np.interp(s, cum, pts[:, 0]), np.interp(s, cum, pts[:, 1])], axis=1))


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.hypot(*v))
    return v / n if n > 1e-9 else np.array([1.0, 0.0])


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip(np.dot(p - a, ab) / max(float(np.dot(ab, ab)), 1e-12), 0.0, 1.0))
    return float(np.hypot(*(a + t * ab - p)))


def _direction_words(v: np.ndarray) -> str:
    if abs(v[0]) >= abs(v[1]):
        return "to the right" if v[0] > 0 else "to the left"
    return "to the top" if v[1] > 0 else "to the bottom"  # +y is the top of the fixed camera's image


class PushPolicy:
    """Scripted pushing from one `numpy.random.Generator` (see the module docstring)."""

    def __init__(self, world: PushWorld, rng: np.random.Generator, *, still: bool = False):
        self.rng, self.still = rng, still
        self.command = world.pusher.copy()
        self.path: deque[np.ndarray] = deque()
        self.todo: deque = deque()  # phases: callables world -> list of xy targets
        self.instruction = "keep everything still" if still else self._new_task(world)

    def act(self, world: PushWorld) -> np.ndarray:
        """The absolute 7-D target pose to command after seeing `world`."""
        if self.still:
            return world.qpos
        while not self.path:
            if not self.todo:
                self._queue_extras()
                self._new_task(world)
            self.path.extend(self.todo.popleft()(world))
        self.command = self.path.popleft()
        return pose(self.command)

    def _new_task(self, world: PushWorld) -> str:
        k = int(self.rng.integers(len(world.names)))
        obj = world.pos[k]
        goals = self.rng.uniform(0.2, 0.8, size=(12, 2))
        dist = np.hypot(*(goals - obj).T)
        # A goal neither trivially close nor across the whole table; of the first few, the one whose
        # push starts nearest the pusher (a long detour around the object wastes the episode).
        fine = goals[(dist >= 0.2) & (dist <= 0.5)][:3]
        fine = fine if len(fine) else goals[np.argsort(np.abs(dist - 0.35))[:1]]
        starts = obj - 0.1 * (fine - obj) / np.hypot(*(fine - obj).T)[:, None]
        goal = fine[int(np.argmin(np.hypot(*(starts - self.command).T)))]
        self.todo.extend(self._attempt(k, goal, tries=0))
        return f"push the {world.names[k]} {_direction_words(goal - obj)}"

    def _attempt(self, k: int, goal: np.ndarray, tries: int) -> list:
        return [
            lambda w: self._approach(w, k, goal),
            lambda w: self._push(w, k, goal),
            lambda w: self._check(w, k, goal, tries),
        ]

    def _queue_extras(self) -> None:
        if self.rng.random() < 0.2:
            steps = int(self.rng.integers(3, 9))
            self.todo.append(lambda w: [self.command.copy() for _ in range(steps)])
        if self.rng.random() < 0.2:
            point, speed = self.rng.uniform(0.1, 0.9, size=2), self.rng.uniform(*APPROACH_SPEED)
            self.todo.append(lambda w: smooth_path([self.command, point], speed))

    def _approach(self, world: PushWorld, k: int, goal: np.ndarray) -> list[np.ndarray]:
        obj = world.pos[k]
        d = _unit(goal - obj)
        behind = obj - d * (PUSHER_RADIUS + world.extent(k, d) + 0.02)
        # End with a short run along the push line, from `outer` on a circle clear of the object; if the
        # way to `outer` would hit the object, first go around it on that circle in 45-degree steps.
        clear = PUSHER_RADIUS + world.reach(k) + 0.02
        outer = obj - d * clear
        points = [self.command]
        a0 = math.atan2(*(self.command - obj)[::-1])
        turn = (math.atan2(-d[1], -d[0]) - a0 + math.pi) % (2 * math.pi) - math.pi
        if _segment_distance(obj, self.command, outer) < PUSHER_RADIUS + world.reach(k) + 0.005:
            n = math.ceil(abs(turn) / (math.pi / 4))
            angles = a0 + turn * np.arange(1, n) / n
            points += [obj + clear * np.array([math.cos(a), math.sin(a)]) for a in angles]
        points += [outer, behind]
        points = [np.clip(p, XY_LOW, XY_HIGH) for p in points]
        return smooth_path(points, self.rng.uniform(*APPROACH_SPEED))

    def _push(self, world: PushWorld, k: int, goal: np.ndarray) -> list[np.ndarray]:
        d = _unit(goal - world.pos[k])
        end = np.clip(goal - d * (PUSHER_RADIUS + world.extent(k, d)), XY_LOW, XY_HIGH)
        return smooth_path([self.command, end], self.rng.uniform(*PUSH_SPEED))

    def _check(self, world: PushWorld, k: int, goal: np.ndarray, tries: int) -> list[np.ndarray]:
        if float(np.hypot(*(world.pos[k] - goal))) > GOAL_TOLERANCE and tries < 2:
            self.todo.extendleft(reversed(self._attempt(k, goal, tries + 1)))
        return []
