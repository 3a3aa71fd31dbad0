"""Sim-Physics scenes in the seed's layout: a bright square moving at a constant velocity over a
textured, static background, with exact per-step motion vectors and depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SQUARE = 6
BACKGROUND_DEPTH, SQUARE_DEPTH = 5.0, 2.0


def square_origin(step: int, start: tuple[int, int], velocity: tuple[int, int]) -> tuple[int, int]:
    return start[0] + velocity[0] * step, start[1] + velocity[1] * step  # x, y of the top-left corner


def write_scene(root: Path, scene: str = "test_ball_collide/env_0/0/0", frames: int = 13, size: tuple[int, int] = (32, 32),
                start: tuple[int, int] = (4, 6), velocity: tuple[int, int] = (2, 1), sky: bool = True) -> Path:
    """`root/scene/{rgb,motion_vectors,distance_to_camera}/step_XXXX.*`; motion file k is the motion
    from step k-1 to step k on step k's grid (x right, y down, pixels), 4 channels as Isaac writes."""
    from PIL import Image

    h, w = size
    base = root / scene
    for folder in ("rgb", "motion_vectors", "distance_to_camera"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:h, 0:w]
    texture = np.stack([(xs * 7) % 64 + 32, (ys * 5) % 64 + 32, ((xs + ys) * 3) % 64 + 32], -1).astype(np.uint8)
    for k in range(frames):
        x0, y0 = square_origin(k, start, velocity)
        inside = (xs >= x0) & (xs < x0 + SQUARE) & (ys >= y0) & (ys < y0 + SQUARE)
        rgb = texture.copy()
        pattern = np.stack([150 + 15 * (xs - x0), 100 + 20 * (ys - y0), np.full_like(xs, 250)], -1)
        rgb[inside] = pattern[inside].astype(np.uint8)  # textured, so a wrong warp shows
        Image.fromarray(rgb).save(base / "rgb" / f"step_{k:04d}.png")
        motion = np.zeros((h, w, 4), np.float32)
        if k > 0:
            motion[inside, 0], motion[inside, 1] = velocity
        motion[..., 3] = 1.0  # the channels that are not motion
        np.save(base / "motion_vectors" / f"step_{k:04d}.npy", motion)
        depth = np.where(inside, SQUARE_DEPTH, BACKGROUND_DEPTH).astype(np.float32)
        if sky:
            depth[0, :3] = np.inf
            depth[1, 0] = np.nan
            depth[1, 1] = 0.0
        np.save(base / "distance_to_camera" / f"step_{k:04d}.npy", depth)
    return base


def write_ground_scene(root: Path, scene: str, frames: int, size: int, velocity: tuple[int, int],
                       start: tuple[int, int], square: int = 24, colour: tuple[int, int, int] | None = None,
                       tint: bool = True) -> Path:
    """A textured box (or one of a plain `colour`) sliding over a ground plane: depth grows with the
    row (2 m at the bottom, 8 m at the top) and the ground's shade with it, so appearance says how
    far; its tint changes along x, so that appearance also says where; the box is 1.5 m."""
    from PIL import Image

    base = root / scene
    for folder in ("rgb", "motion_vectors", "distance_to_camera"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:size, 0:size]
    ground_depth = 8.0 - 6.0 * ys / (size - 1)
    shade = (40 + 160 * (ys / (size - 1))).astype(np.uint8)
    blue = (40 + 160 * (xs / (size - 1))).astype(np.uint8) if tint else shade  # where along x: RoPE is relative
    ground = np.stack([shade, shade, blue], -1)
    for k in range(frames):
        x0, y0 = square_origin(k, start, velocity)
        inside = (xs >= x0) & (xs < x0 + square) & (ys >= y0) & (ys < y0 + square)
        rgb = ground.copy()
        pattern = np.stack([200 + 3 * (xs - x0), 60 + 8 * (ys - y0), np.full_like(xs, 40)], -1)
        rgb[inside] = np.clip(pattern, 0, 255)[inside].astype(np.uint8) if colour is None else colour
        Image.fromarray(rgb).save(base / "rgb" / f"step_{k:04d}.png")
        motion = np.zeros((size, size, 4), np.float32)
        if k > 0:
            motion[inside, 0], motion[inside, 1] = velocity
        np.save(base / "motion_vectors" / f"step_{k:04d}.npy", motion)
        np.save(base / "distance_to_camera" / f"step_{k:04d}.npy",
                np.where(inside, 1.5, ground_depth).astype(np.float32))
    return base


def write_ground_dataset(root: Path, scenes: int, frames: int = 12, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(scenes):
        velocity = tuple(int(v) for v in rng.integers(-2, 3, size=2))
        start = tuple(int(s) for s in rng.integers(12, size - 36, size=2))
        write_ground_scene(root, f"test_slide_{i:02d}/env_0/0/0", frames, size, velocity, start)
    return root


# Boxes whose colour says which way they slide: red right, green left, blue down, yellow up.
COLOURED_SLIDES = (((2, 0), (220, 40, 40)), ((-2, 0), (40, 200, 60)), ((0, 2), (50, 70, 230)), ((0, -2), (230, 210, 40)))


def write_coloured_dataset(root: Path, scenes: int, frames: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Scene i slides as COLOURED_SLIDES[i % 4] says: the direction can be read from one frame."""
    rng = np.random.default_rng(seed)
    for i in range(scenes):
        velocity, colour = COLOURED_SLIDES[i % len(COLOURED_SLIDES)]
        start = tuple(int(s) for s in rng.integers(14, size - 38, size=2))
        write_ground_scene(root, f"test_slide_{i:02d}/env_0/0/0", frames, size, velocity, start, colour=colour,
                           tint=False)
    return root
