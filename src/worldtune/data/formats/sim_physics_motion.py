"""Sim-Physics motion vectors: one simulator step read where it moves, and steps chained into the
displacement between two sampled frames.

A step's file is (H, W, 4) floats over the whole frame, but in a physics scene only the moving
bodies have motion: a ball or a box is a few percent of the pixels. `read_motion_patch` keeps the
rectangle around the nonzero motion (with a one-pixel ring, so bilinear sampling next to it reads
the zeros it would read in the whole field), and `accumulate_motion` follows back only the pixels
that one of those rectangles can reach. The work is then proportional to the moving area, not to
the frame: the data loader reads every step of a 131-step recording (see
`benchmarks/physics_step.py`).

Conventions: see `sim_physics_files` (file k holds, on frame k's grid, the motion from frame k-1 to
frame k, channel 0 along x (right), channel 1 along y (down), in pixels).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldtune.data.formats.sim_physics_files import BadScene, read_npy


@dataclass(frozen=True)
class MotionPatch:
    """One step's motion around its moving pixels: `field` [2, h, w] float32 covers rows
    top..top+h-1 and columns left..left+w-1 of the frame, and holds every nonzero value of the step
    with a ring of zeros around them (or the frame's edge, where the motion reaches it)."""

    field: np.ndarray
    top: int
    left: int
    moving: tuple[int, int, int, int]  # x0, y0, x1, y1: the nonzero pixels' bounds (inclusive)

    def reaches(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The positions whose bilinear sample can be nonzero (bool, like x)."""
        x0, y0, x1, y1 = self.moving
        return (x > x0 - 1) & (x < x1 + 1) & (y > y0 - 1) & (y < y1 + 1)

    def sample(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """[2, N] motion at positions (x, y) in frame pixels, bilinear with the edge held: the whole
        field's value for every position that `reaches` says. (numpy: the loader calls this for
        every simulator step, where a tensor op's overhead outweighs its work.)"""
        _, h, w = self.field.shape
        x = np.clip(x - self.left, 0, w - 1)
        y = np.clip(y - self.top, 0, h - 1)
        xa, ya = np.minimum(x.astype(np.int64), max(w - 2, 0)), np.minimum(y.astype(np.int64), max(h - 2, 0))
        fx, fy = (x - xa).astype(np.float32), (y - ya).astype(np.float32)
        at = ya * w + xa  # flat index of the top-left neighbour; the others are +1, +w, +w+1 (or held)
        right, down = (xa < w - 1).astype(np.int64), (ya < h - 1).astype(np.int64) * w
        f = self.field.reshape(2, -1)
        top = f[:, at] + (f[:, at + right] - f[:, at]) * fx
        bottom = f[:, at + down] + (f[:, at + down + right] - f[:, at + down]) * fx
        return top + (bottom - top) * fy


def read_motion_patch(path: Path, shape: tuple[int, int], units: str = "pixels",
                      sign: tuple[float, float] = (1.0, 1.0)) -> MotionPatch | None:
    """The step's motion (dx, dy in pixels of the recording, in our convention) around where it is
    nonzero, or None where nothing moved (an empty file, as some recorders write for the first
    step, is no motion). NaN and inf are no motion."""
    mv = read_npy(path)
    if mv.size == 0:
        return None
    if mv.ndim != 3 or mv.shape[:2] != shape or mv.shape[2] != 4:
        raise BadScene(path, f"motion vectors must be (H, W, 4) = ({shape[0]}, {shape[1]}, 4), got {mv.shape}")
    rows, cols = _nonzero_rows_cols(mv)
    if rows.size == 0:
        return None
    (y0, y1), (x0, x1) = (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))
    top, left = max(y0 - 1, 0), max(x0 - 1, 0)
    bottom, right = min(y1 + 1, shape[0] - 1), min(x1 + 1, shape[1] - 1)
    field = np.array(mv[top:bottom + 1, left:right + 1, :2].transpose(2, 0, 1), dtype=np.float32)  # the one copy
    np.nan_to_num(field, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    scale = [s * (n if units == "normalized" else 1.0) for s, n in zip(sign, (shape[1], shape[0]), strict=True)]
    if scale != [1.0, 1.0]:
        field *= np.asarray(scale, np.float32)[:, None, None]
    return MotionPatch(field, top, left, (x0, y0, x1, y1))


def _nonzero_rows_cols(mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns where channel 0 or 1 is not zero (NaN counts; it is zeroed later). A
    float32 pair read as one 64-bit word is zero only when both are +0.0: one compare, not three."""
    if mv.dtype == np.float32 and mv.flags.c_contiguous:
        word = mv.view(np.uint64)[..., 0]
    else:
        word = (mv[..., 0] != 0) | (mv[..., 1] != 0)
    rows = np.flatnonzero(word.any(axis=1))
    if rows.size == 0:
        return rows, rows
    return rows, np.flatnonzero(word[rows[0]:rows[-1] + 1].any(axis=0))


def read_motion(path: Path, shape: tuple[int, int], units: str = "pixels",
                sign: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """The step's whole [2, H, W] float32 motion field."""
    motion = torch.zeros(2, *shape)
    patch = read_motion_patch(path, shape, units, sign)
    if patch is not None:
        _, h, w = patch.field.shape
        motion[:, patch.top:patch.top + h, patch.left:patch.left + w] = torch.from_numpy(patch.field)
    return motion


def accumulate_motion(steps: list[MotionPatch | None], shape: tuple[int, int]) -> torch.Tensor:
    """[2, H, W]: the displacement from the frame before `steps[0]` to the frame of `steps[-1]`, on the
    last frame's grid. Each pixel is followed back step by step, sampling each step's motion where
    the pixel then is; only pixels that a step can move are touched (`MotionPatch.reaches`): those
    still at their own place inside the step's moving rectangle, and those already moved."""
    h, w = shape
    touched = np.zeros((h, w), bool)
    x, y = _flat_grid(h, w)  # positions of every pixel of the last frame
    x, y = x.copy(), y.copy()
    for patch in reversed(steps):
        if patch is None:  # nothing moved in this step
            continue
        x0, y0, x1, y1 = patch.moving
        touched[y0:y1 + 1, x0:x1 + 1] = True  # still in place there, so reached
        candidates = np.flatnonzero(touched)
        candidates = candidates[patch.reaches(x[candidates], y[candidates])]
        step = patch.sample(x[candidates], y[candidates])
        x[candidates] -= step[0]
        y[candidates] -= step[1]
    moved = np.flatnonzero(touched)
    origin_x, origin_y = _flat_grid(h, w)
    out = np.zeros((2, h * w), np.float32)
    out[0, moved], out[1, moved] = origin_x[moved] - x[moved], origin_y[moved] - y[moved]
    return torch.from_numpy(out.reshape(2, h, w))


@functools.lru_cache(maxsize=8)
def _flat_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every pixel, flat float32, read-only (shared between calls)."""
    x, y = np.tile(np.arange(w, dtype=np.float32), h), np.repeat(np.arange(h, dtype=np.float32), w)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def sample_at(field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of field [(N,) C, H, W] at pixel positions points [(N,) 2, H', W'] (x, y),
    border-held."""
    if field.ndim == 3:
        return sample_at(field[None], points[None])[0]
    h, w = field.shape[-2:]
    grid = torch.stack([points[:, 0] / max(w - 1, 1) * 2 - 1, points[:, 1] / max(h - 1, 1) * 2 - 1], dim=-1)
    return F.grid_sample(field, grid.to(field.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def warp_back(frame: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Frame a [(N,) C, H, W] seen on frame b's grid through the motion a -> b [(N,) 2, H, W] (on b's
    grid): b(p) ~ a(p - m(p))."""
    h, w = frame.shape[-2:]
    return sample_at(frame, pixel_grid(h, w).to(motion.device) - motion)


@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> torch.Tensor:
    """[2, h, w] pixel coordinates (x, y), read-only (shared between calls)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys])


class ChainedMotionCache:
    """Chained motion targets kept in memory, each as the rectangle around its nonzero values: the
    seed reads every scene `dataset_repeat` (100) times an epoch, and chaining a scene's steps costs
    more than reading its frames. Bounded by `budget_bytes` (entries beyond it are not kept); one
    per dataset object, so one per DataLoader worker."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._entries: dict[object, tuple[tuple[int, ...], list[tuple[int, int, np.ndarray]]]] = {}

    def get(self, key: object) -> torch.Tensor | None:
        """The dense [T', 2, H, W] targets stored under `key`, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        shape, crops = entry
        out = np.zeros(shape, np.float32)
        for j, (top, left, crop) in enumerate(crops):
            out[j, :, top:top + crop.shape[1], left:left + crop.shape[2]] = crop
        return torch.from_numpy(out)

    def put(self, key: object, motion: torch.Tensor) -> None:
        """Keep `motion` [T', 2, H, W] if the budget allows."""
        crops = []
        for target in motion.numpy():
            nonzero = (target != 0).any(0)
            rows, cols = np.flatnonzero(nonzero.any(1)), np.flatnonzero(nonzero.any(0))
            if rows.size:
                crop = target[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
                crops.append((int(rows[0]), int(cols[0]), crop))
            else:
                crops.append((0, 0, np.zeros((2, 0, 0), np.float32)))
        size = sum(c.nbytes for _, _, c in crops)
        if self.used_bytes + size <= self.budget_bytes:
            self._entries[key] = (tuple(motion.shape), crops)
            self.used_bytes += size
