"""A small built-in robot simulator for worldtune's demo and tests (numpy only).

A gripper moves coloured blocks on a table; it is seen by a fixed camera and a wrist camera (and
optionally a side camera), driven by 7-D absolute Cartesian actions `[x, y, z, roll, pitch, yaw,
gripper]` (Ctrl-World's convention) from a scripted random pick-and-place policy, and episodes are
written in the ALOHA-style HDF5 layout that the robot-data converters read. Cameras use the ALOHA
names: `cam_high` (fixed, above the table), `cam_left_wrist` (on the gripper) and, as the toy has
one arm, `cam_right_wrist` is a fixed side view from the right of the table.

    /observations/images/<cam>   uint8 [T, H, W, 3]  (or JPEG bytes per frame, see below)
    /observations/qpos           float32 [T, 7]      achieved pose at frame t
    /observations/qvel           float32 [T, 7]      finite-difference velocity (x fps), 0 at t = 0
    /action                      float32 [T, 7]      target pose commanded after frame t
    attrs: sim=True, fps, instruction, compress

With `jpeg=True` each camera dataset holds one JPEG per frame: `jpeg_layout="vlen"` (default) a
`[T]` dataset of `h5py.vlen_dtype(uint8)`; `"padded"` the layout of ALOHA's recorder, `[T, L]`
uint8 zero-padded to the longest frame plus `/compress_len` `[num_cams, T]`.

    episode = simulate_episode(seed=3, num_steps=40, image_size=64)
    write_aloha_hdf5("ep.hdf5", episode, jpeg=True)
    paths = generate_dataset("data/toy", num_episodes=20, seed=0)

Physics (`toyenv_world`), rendering (`toyenv_render`) and the policy (`toyenv_policy`) live in
sibling modules; their docstrings describe the model.
"""

from __future__ import annotations

import copy
import functools
import io
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from worldtune.data.toyenv_policy import ScriptedPolicy
from worldtune.data.toyenv_render import CAMERA_NAMES, TABLES, render_views
from worldtune.data.toyenv_world import POSE_DIM, POSE_NAMES, ToyWorld
from worldtune.utils.atomic import atomic_path
from worldtune.utils.logging import progress

__all__ = [
    "CAMERA_NAMES",
    "DEFAULT_CAMERAS",
    "DEFAULT_FPS",
    "POSE_NAMES",
    "Episode",
    "ToyEnv",
    "frames_for",
    "generate_dataset",
    "read_aloha_hdf5",
    "replay",
    "simulate_episode",
    "write_aloha_hdf5",
    "write_episodes",
]

DEFAULT_CAMERAS = ("cam_high", "cam_left_wrist")
DEFAULT_FPS = 10
JPEG_LAYOUTS = ("vlen", "padded")

Seed = int | Sequence[int]


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8x8, got {image_size}")
    return int(h), int(w)


@dataclass(frozen=True)
class Episode:
    """One recorded episode: frame t shows `qpos[t]`; `action[t]` is commanded after seeing it."""

    frames: dict[str, np.ndarray]  # camera name -> uint8 [T, H, W, 3]
    qpos: np.ndarray  # float32 [T, 7]
    action: np.ndarray  # float32 [T, 7]
    instruction: str
    fps: float = DEFAULT_FPS
    # Simulator-only extras (not written to HDF5): block bottom-centre positions [T, K, 3], names.
    object_positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3)))
    object_names: tuple[str, ...] = ()

    @property
    def num_steps(self) -> int:
        return int(self.qpos.shape[0])

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.frames)

    @property
    def image_size(self) -> tuple[int, int]:
        first = next(iter(self.frames.values()))
        return int(first.shape[1]), int(first.shape[2])


def frames_for(episode: Episode, camera: str) -> np.ndarray:
    """The uint8 `[T, H, W, 3]` frames of `camera`; a KeyError names the cameras there are."""
    try:
        return episode.frames[camera]
    except KeyError:
        raise KeyError(f"episode has no camera {camera!r}; it has {list(episode.frames)}") from None


class ToyEnv:
    """Step-by-step access to the simulator (for closed-loop use): `step(action)`, `render()`."""

    def __init__(
        self,
        seed: Seed = 0,
        *,
        num_objects: int | None = None,
        image_size: int | tuple[int, int] = 64,
        cameras: Sequence[str] = DEFAULT_CAMERAS,
        supersample: int = 1,
        table: str = "wood",
    ):
        if table not in TABLES:
            raise ValueError(f"table must be one of {list(TABLES)}, got {table!r}")
        unknown = [c for c in cameras if c not in CAMERA_NAMES]
        if unknown or not cameras:
            raise ValueError(
                f"cameras must be a non-empty subset of {list(CAMERA_NAMES)}, got {list(cameras)}"
            )
        self.rng = np.random.default_rng(seed)
        self.world = ToyWorld(self.rng, num_objects)
        self.image_size = _hw(image_size)
        self.cameras = tuple(cameras)
        self.supersample = int(supersample)
        self.table = table

    @property
    def qpos(self) -> np.ndarray:
        return self.world.qpos

    def step(self, action: Sequence[float] | np.ndarray) -> np.ndarray:
        """Apply one absolute target pose (7,); returns the achieved pose."""
        return self.world.step(np.asarray(action, dtype=np.float64))

    def render(self) -> dict[str, np.ndarray]:
        """Current uint8 `[H, W, 3]` frame of every camera."""
        h, w = self.image_size
        return render_views(self.world, self.cameras, h, w, self.supersample, self.table)

    def copy(self) -> ToyEnv:
        """An independent copy of the current state (e.g. to try two actions from one state)."""
        other = object.__new__(ToyEnv)
        other.__dict__.update(self.__dict__)
        other.world = self.world.copy()
        other.rng = copy.deepcopy(self.rng)
        return other


def simulate_episode(
    seed: Seed = 0,
    num_steps: int = 40,
    image_size: int | tuple[int, int] = 64,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    *,
    num_objects: int | None = None,
    pick_prob: float = 0.6,
    rotation: float = 1.0,
    supersample: int = 1,
    table: str = "wood",
    fps: float = DEFAULT_FPS,
) -> Episode:
    """Run the scripted policy for `num_steps` steps; identical arguments give identical arrays.

    `seed` is an int or a sequence of ints (e.g. `(dataset_seed, index)`); `num_objects` is 2 or 3
    at random when None; `pick_prob` is the share of pick-and-place episodes (the rest wander);
    `rotation` scales the policy's orientation changes (0: position only, see `toyenv_policy`);
    `supersample` renders at that many times the size and averages down (anti-aliasing); `table` is
    "wood" or "gradient" (see `toyenv_render`).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    env, policy = _scripted(seed, num_objects, image_size, cameras, supersample, table, pick_prob, rotation)
    h, w = env.image_size
    frames = {cam: np.empty((num_steps, h, w, 3), dtype=np.uint8) for cam in env.cameras}
    qpos = np.empty((num_steps, POSE_DIM), dtype=np.float32)
    action = np.empty((num_steps, POSE_DIM), dtype=np.float32)
    objects = np.empty((num_steps, len(env.world.blocks), 3), dtype=np.float32)
    for t in range(num_steps):
        for cam, frame in env.render().items():
            frames[cam][t] = frame
        qpos[t] = env.qpos
        objects[t] = env.world.block_positions()
        action[t] = policy.act(env.world)
        env.step(action[t].astype(np.float64))
    return Episode(
        frames=frames,
        qpos=qpos,
        action=action,
        instruction=policy.instruction,
        fps=fps,
        object_positions=objects,
        object_names=tuple(b.name for b in env.world.blocks),
    )


def _scripted(seed: Seed, num_objects: int | None, image_size: int | tuple[int, int], cameras: Sequence[str],
              supersample: int, table: str, pick_prob: float, rotation: float) -> tuple[ToyEnv, ScriptedPolicy]:
    env = ToyEnv(seed, num_objects=num_objects, image_size=image_size, cameras=cameras,
                 supersample=supersample, table=table)
    return env, ScriptedPolicy(env.world, env.rng, pick_prob=pick_prob, rotation=rotation)


def replay(
    seed: Seed,
    steps: int,
    image_size: int | tuple[int, int] = 64,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    *,
    num_objects: int | None = None,
    pick_prob: float = 0.6,
    rotation: float = 1.0,
    supersample: int = 1,
    table: str = "wood",
) -> ToyEnv:
    """The simulator as `simulate_episode` with the same arguments has it after `steps` steps (frame
    `steps` of that episode), without rendering: to take over from a recorded state in closed loop."""
    env, policy = _scripted(seed, num_objects, image_size, cameras, supersample, table, pick_prob, rotation)
    for _ in range(steps):
        env.step(policy.act(env.world))
    return env


# --------------------------------------------------------------------------- HDF5 (ALOHA layout)


def _jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def write_aloha_hdf5(
    path: str | os.PathLike,
    episode: Episode,
    *,
    jpeg: bool = False,
    jpeg_quality: int = 90,
    jpeg_layout: str = "vlen",
    fps: float | None = None,
) -> Path:
    """Write `episode` in the ALOHA layout (see the module docstring), atomically; returns the path."""
    if jpeg_layout not in JPEG_LAYOUTS:
        raise ValueError(f"jpeg_layout must be one of {JPEG_LAYOUTS}, got {jpeg_layout!r}")
    fps = float(episode.fps if fps is None else fps)
    qpos = np.asarray(episode.qpos, dtype=np.float32)
    qvel = np.zeros_like(qpos)
    qvel[1:] = np.diff(qpos, axis=0) * fps
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as root:
        root.attrs["sim"] = True
        root.attrs["fps"] = fps
        root.attrs["instruction"] = episode.instruction
        root.attrs["compress"] = bool(jpeg)
        images = root.create_group("observations").create_group("images")
        lengths = []
        for cam, frames in episode.frames.items():
            frames = np.asarray(frames, dtype=np.uint8)
            if not jpeg:
                images.create_dataset(cam, data=frames, chunks=(1, *frames.shape[1:]))
                continue
            encoded = [_jpeg(frame, jpeg_quality) for frame in frames]
            lengths.append([len(e) for e in encoded])
            if jpeg_layout == "vlen":
                data = images.create_dataset(cam, shape=(len(encoded),), dtype=h5py.vlen_dtype(np.uint8))
                for t, e in enumerate(encoded):
                    data[t] = e
            else:
                padded = np.zeros((len(encoded), max(lengths[-1])), dtype=np.uint8)
                for t, e in enumerate(encoded):
                    padded[t, : len(e)] = e
                images.create_dataset(cam, data=padded, chunks=(1, padded.shape[1]))
        if jpeg and jpeg_layout == "padded":
            root.create_dataset("compress_len", data=np.asarray(lengths, dtype=np.float32))
        root.create_dataset("observations/qpos", data=qpos)
        root.create_dataset("observations/qvel", data=qvel)
        root.create_dataset("action", data=np.asarray(episode.action, dtype=np.float32))
    return path


def _decode(data: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes())).convert("RGB"))


def read_aloha_hdf5(path: str | os.PathLike) -> Episode:
    """Read a file written by `write_aloha_hdf5` (any image layout) back into an `Episode`."""
    with h5py.File(path, "r") as root:
        frames: dict[str, np.ndarray] = {}
        images = root["observations/images"]
        for index, cam in enumerate(images):
            data = images[cam]
            if data.dtype == np.uint8 and data.ndim == 4:
                frames[cam] = data[()]
            elif data.ndim == 1:  # vlen JPEG
                frames[cam] = np.stack([_decode(data[t]) for t in range(data.shape[0])])
            else:  # padded JPEG: the true lengths are in /compress_len
                lengths = root["compress_len"][index].astype(np.int64)
                frames[cam] = np.stack([_decode(data[t, : lengths[t]]) for t in range(data.shape[0])])
        instruction = root.attrs.get("instruction", "")
        return Episode(
            frames=frames,
            qpos=root["observations/qpos"][()],
            action=root["action"][()],
            instruction=instruction.decode() if isinstance(instruction, bytes) else str(instruction),
            fps=float(root.attrs.get("fps", DEFAULT_FPS)),
        )


def generate_dataset(
    out_dir: str | os.PathLike,
    num_episodes: int,
    seed: int = 0,
    *,
    jpeg: bool = False,
    jpeg_quality: int = 90,
    jpeg_layout: str = "vlen",
    show_progress: bool = True,
    workers: int = 1,
    **kwargs,
) -> list[Path]:
    """Simulate and write `episode_<i>.hdf5` for i < `num_episodes`; episode i uses seed `(seed, i)`.

    `kwargs` go to `simulate_episode` (num_steps, image_size, cameras, num_objects, ...); `workers` > 1
    simulates that many episodes at a time in separate processes (the files are the same).
    """
    simulate = functools.partial(simulate_episode, **kwargs)
    return write_episodes(out_dir, num_episodes, seed, simulate, "toyenv episodes", show_progress=show_progress,
                          workers=workers, jpeg=jpeg, jpeg_quality=jpeg_quality, jpeg_layout=jpeg_layout)


def _simulate_and_write(simulate: Callable[[Seed], Episode], seed: Seed, path: Path, options: dict) -> Path:
    return write_aloha_hdf5(path, simulate(seed), **options)


def write_episodes(out_dir: str | os.PathLike, num_episodes: int, seed: int, simulate: Callable[[Seed], Episode],
                   desc: str, *, show_progress: bool = True, workers: int = 1, **write_options) -> list[Path]:
    """`episode_<i>.hdf5` = `write_aloha_hdf5(simulate((seed, i)))` for i < `num_episodes`, in order, or
    `workers` at a time in spawned processes (`simulate` must be picklable, e.g. a functools.partial)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"episode_{i}.hdf5" for i in range(num_episodes)]
    jobs = [(simulate, (seed, i), path, write_options) for i, path in enumerate(paths)]
    if workers <= 1 or num_episodes <= 1:
        for job in progress(jobs, desc=desc, enabled=show_progress, unit="episode"):
            _simulate_and_write(*job)
        return paths
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's threads
    with ProcessPoolExecutor(min(workers, num_episodes), mp_context=context) as pool:
        futures = [pool.submit(_simulate_and_write, *job) for job in jobs]
        for future in progress(as_completed(futures), desc=desc, enabled=show_progress, unit="episode",
                               total=len(futures)):
            future.result()
    return paths
