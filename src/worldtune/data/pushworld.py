"""A second built-in simulator: a top-down planar pushing world (numpy only).

`toyenv` is one world with one set of image statistics; a world-model recipe tuned on it alone is
not trustworthy. This world looks different: a unit-square table seen from straight above, a
circular pusher (radius 0.05, dark with a light cap) and flat discs / squares that it pushes
around. It produces the same `Episode` (see `worldtune.data.toyenv`) and writes the same
ALOHA-style HDF5 through `toyenv.write_aloha_hdf5`.

Conventions (as in toyenv): x grows to the right, y toward the far side (the top of the fixed
camera's image). Actions are absolute 7-D target poses `[x, y, z, roll, pitch, yaw, gripper]`
(Ctrl-World's convention); only x, y act here, the rest stay `z = 0.02`, 0, 0, 0, `gripper = 0`.
Each step the pusher moves toward the target at most 0.03 per step. Frame t shows the state
`qpos[t]`; `action[t]` is commanded after seeing frame t. `object_positions` is `[T, K, 3]`
(z = 0); `object_names` are like "red disc" / "blue square"; the instruction names the policy's
first task ("push the red disc to the left"; "keep everything still" in the still world).
Physics and the scripted policy are described in `pushworld_sim`, rendering in `pushworld_render`.

Cameras (ALOHA names), orthographic and top-down, anti-aliased by supersampling:

- `cam_high`: fixed, the whole table;
- `cam_left_wrist`: eye-in-hand, a window of side 0.35 centred on the pusher: the pusher stays in
  the image centre and the table slides under it (a plain floor shows beyond the table's edge).

Pixels are square: the window's size is that of the image's shorter side, so a non-square image
sees more (of the floor, for `cam_high`) along its longer side.

Presets (`WORLDS`), chosen with `world=`:

- "textured": a static, sharp, high-contrast procedural texture and one small object: a model that
  blurs or hazes a still background loses many dB here;
- "clutter": a plain table with 8-12 painted distractor shapes, 3-5 objects, per-pixel Gaussian
  sensor noise (std 5 in 0-255) and a per-frame brightness flicker (std 3%);
- "still": a softly textured table, a few distractors and objects, and nothing ever moves (the
  policy commands the current pose): a world model must keep the scene still.

The table (texture, distractors) depends on the dataset seed only (`scene_seed`: by default the
first entry of `seed`), so all episodes of a dataset share one fixed scene, as in a real lab;
object placement and the policy depend on the whole `seed`, e.g. `(dataset_seed, index)`.
Camera noise has its own generators (spawned from `seed`, one per camera), so the choice of
cameras or image size never changes a trajectory.

    episode = simulate_push_episode(seed=(0, 3), world="clutter", image_size=64)
    paths = generate_push_dataset("data/push", num_episodes=20, seed=0, world="textured")
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldtune.data.pushworld_render import (
    CAMERA_NAMES,
    PUSHER_CAP_COLOR,
    PUSHER_COLOR,
    RIM_WIDTH,
    Renderer,
    Shape,
    make_backdrop,
    to_uint8,
)
from worldtune.data.pushworld_sim import PUSHER_RADIUS, PushPolicy, PushWorld
from worldtune.data.toyenv import Episode, write_episodes

__all__ = [
    "CAMERA_NAMES",
    "DEFAULT_CAMERAS",
    "WORLDS",
    "PushEnv",
    "WorldSpec",
    "generate_push_dataset",
    "simulate_push_episode",
]

DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist")
DEFAULT_FPS = 10.0

Seed = int | Sequence[int]


@dataclass(frozen=True)
class WorldSpec:
    """The statistics of a preset; ranges are inclusive `(low, high)`."""

    backdrop: str  # a `pushworld_render.STYLES` name
    distractors: tuple[int, int]  # static shapes painted on the table
    objects: tuple[int, int]  # movable objects
    object_size: tuple[float, float]  # radius of a disc / half side of a square
    noise: float = 0.0  # per-pixel Gaussian sensor noise std, 0-255 units
    flicker: float = 0.0  # relative std of a per-frame global brightness gain
    still: bool = False  # the policy never moves


WORLDS: dict[str, WorldSpec] = {
    "textured": WorldSpec("texture", (0, 0), (1, 1), (0.03, 0.04)),
    "clutter": WorldSpec("plain", (8, 12), (3, 5), (0.025, 0.04), noise=5.0, flicker=0.03),
    "still": WorldSpec("soft", (3, 5), (2, 3), (0.03, 0.045), still=True),
}

# Saturated colours far from each other (objects get distinct ones).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (30, 80, 240),
    "yellow": (250, 215, 20),
    "magenta": (235, 40, 200),
    "cyan": (20, 215, 230),
    "orange": (255, 130, 0),
    "purple": (130, 50, 220),
}


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {image_size}")
    return int(h), int(w)


def _spec(world: str) -> WorldSpec:
    if world not in WORLDS:
        raise ValueError(f"world must be one of {list(WORLDS)}, got {world!r}")
    return WORLDS[world]


def _scene_seed(seed: Seed) -> int:
    return int(seed) if isinstance(seed, int | np.integer) else int(seed[0])


def _place(rng: np.random.Generator, spec: WorldSpec) -> PushWorld:
    """Pusher and objects at random, apart from each other (rejection sampling, then the physics)."""
    pusher = rng.uniform(0.2, 0.8, size=2)
    count = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    colors = rng.choice(len(PALETTE), size=count, replace=False)
    box = rng.random(count) < 0.5
    size = rng.uniform(*spec.object_size, size=count)
    reach = size * np.where(box, np.sqrt(2.0), 1.0)
    pos = np.zeros((count, 2))
    for k in range(count):
        for _ in range(100):
            pos[k] = rng.uniform(0.12, 0.88, size=2)
            far_from_pusher = np.hypot(*(pos[k] - pusher)) > PUSHER_RADIUS + reach[k] + 0.04
            if far_from_pusher and np.all(np.hypot(*(pos[:k] - pos[k]).T) > reach[:k] + reach[k] + 0.02):
                break
    names = tuple(f"{list(PALETTE)[c]} {'square' if b else 'disc'}" for c, b in zip(colors, box, strict=True))
    rgb = np.array([PALETTE[n.split()[0]] for n in names], dtype=np.float32).reshape(-1, 3)
    world = PushWorld(pusher, pos, size, box, rgb, names)
    world.step(world.qpos)  # settle any overlap the sampling could not avoid
    return world


class PushEnv:
    """Step-by-step access to the pushing world (closed-loop use): `step(action)`, `render()`."""

    def __init__(
        self,
        seed: Seed = 0,
        *,
        world: str = "textured",
        image_size: int | tuple[int, int] = 64,
        cameras: Sequence[str] = DEFAULT_CAMERAS,
        supersample: int = 2,
        scene_seed: int | None = None,
    ):
        self.spec = _spec(world)
        unknown = [c for c in cameras if c not in CAMERA_NAMES]
        if unknown or not cameras:
            raise ValueError(
                f"cameras must be a non-empty subset of {list(CAMERA_NAMES)}, got {list(cameras)}"
            )
        if int(supersample) < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        h, w = _hw(image_size)
        self.world_name = world
        self.cameras = tuple(cameras)
        self.image_size = (h, w)
        self.supersample = int(supersample)
        self.rng = np.random.default_rng(seed)
        self.noise_rngs = dict(zip(CAMERA_NAMES, self.rng.spawn(len(CAMERA_NAMES)), strict=True))
        scene_rng = np.random.default_rng((_scene_seed(seed) if scene_seed is None else scene_seed, 0x5C3E))
        count = int(scene_rng.integers(self.spec.distractors[0], self.spec.distractors[1] + 1))
        self.renderer = Renderer(make_backdrop(scene_rng, self.spec.backdrop, count), h, w, self.supersample)
        self.world = _place(self.rng, self.spec)

    @property
    def qpos(self) -> np.ndarray:
        return self.world.qpos

    @property
    def object_names(self) -> tuple[str, ...]:
        return self.world.names

    def object_positions(self) -> np.ndarray:
        """Object centres `[K, 3]` (z = 0: everything lies on the table)."""
        return np.concatenate([self.world.pos, np.zeros((len(self.world.names), 1))], axis=1)

    def step(self, action: Sequence[float] | np.ndarray) -> np.ndarray:
        """Apply one absolute target pose (7,); returns the achieved pose."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {action.shape}")
        return self.world.step(action)

    def shapes(self) -> list[Shape]:
        """What moves, in drawing order: the objects, then the pusher on top."""
        w = self.world
        shapes = [
            Shape("box" if b else "disc", float(x), float(y), float(s), c, rim=RIM_WIDTH)
            for (x, y), s, b, c in zip(w.pos, w.size, w.box, w.colors, strict=True)
        ]
        x, y = (float(v) for v in w.pusher)
        return shapes + [
            Shape("disc", x, y, PUSHER_RADIUS, PUSHER_COLOR),
            Shape("disc", x, y, 0.4 * PUSHER_RADIUS, PUSHER_CAP_COLOR),
        ]

    def render(self) -> dict[str, np.ndarray]:
        """Current uint8 `[H, W, 3]` frame of every camera (camera noise drawn per call)."""
        shapes = self.shapes()
        return {
            cam: to_uint8(
                self.renderer.render(cam, self.world.pusher, shapes),
                self.noise_rngs[cam],
                self.spec.noise,
                self.spec.flicker,
            )
            for cam in self.cameras
        }

    def copy(self) -> PushEnv:
        """An independent copy of the current state (the static renderer cache is shared)."""
        other = object.__new__(PushEnv)
        other.__dict__.update(self.__dict__)
        other.world = self.world.copy()
        other.rng = copy.deepcopy(self.rng)
        other.noise_rngs = copy.deepcopy(self.noise_rngs)
        return other


def simulate_push_episode(
    seed: Seed = 0,
    num_steps: int = 96,
    image_size: int | tuple[int, int] = 64,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    *,
    world: str = "textured",
    supersample: int = 2,
    fps: float = DEFAULT_FPS,
    scene_seed: int | None = None,
) -> Episode:
    """Run the scripted pushing policy for `num_steps` steps; identical arguments, identical arrays."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    env = PushEnv(
        seed,
        world=world,
        image_size=image_size,
        cameras=cameras,
        supersample=supersample,
        scene_seed=scene_seed,
    )
    policy = PushPolicy(env.world, env.rng, still=env.spec.still)
    h, w = env.image_size
    frames = {cam: np.empty((num_steps, h, w, 3), dtype=np.uint8) for cam in env.cameras}
    qpos = np.empty((num_steps, 7), dtype=np.float32)
    action = np.empty((num_steps, 7), dtype=np.float32)
    objects = np.empty((num_steps, len(env.object_names), 3), dtype=np.float32)
    for t in range(num_steps):
        for cam, frame in env.render().items():
            frames[cam][t] = frame
        qpos[t] = env.qpos
        objects[t] = env.object_positions()
        action[t] = policy.act(env.world)
        env.step(action[t].astype(np.float64))  # the stored (float32) action: replays are exact
    return Episode(
        frames=frames,
        qpos=qpos,
        action=action,
        instruction=policy.instruction,
        fps=fps,
        object_positions=objects,
        object_names=env.object_names,
    )


def generate_push_dataset(
    out_dir: str | os.PathLike,
    num_episodes: int,
    seed: int = 0,
    *,
    world: str = "textured",
    jpeg: bool = False,
    jpeg_quality: int = 90,
    jpeg_layout: str = "vlen",
    show_progress: bool = True,
    workers: int = 1,
    **kwargs,
) -> list[Path]:
    """Simulate and write `episode_<i>.hdf5` for i < `num_episodes`; episode i uses seed `(seed, i)`.

    All episodes share the table of `seed`; `kwargs` go to `simulate_push_episode` (num_steps,
    image_size, cameras, supersample, fps); `workers` > 1 simulates in that many processes.
    """
    _spec(world)  # fail before creating anything
    simulate = functools.partial(simulate_push_episode, world=world, **kwargs)
    return write_episodes(out_dir, num_episodes, seed, simulate, f"pushworld {world}", show_progress=show_progress,
                          workers=workers, jpeg=jpeg, jpeg_quality=jpeg_quality, jpeg_layout=jpeg_layout)
