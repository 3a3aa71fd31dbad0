"""Top-down orthographic renderer for the planar pushing world (see `worldtune.data.pushworld`).

A view is an axis-aligned window of the table plane, so pixel centres form a separable grid: one
x per column and one y per row (row 0 is the far side, larger y). Everything is drawn from signed
distances with a one-sub-pixel linear edge ramp and then box-averaged over `supersample` x
`supersample` sub-pixels: edges are anti-aliased and a sub-pixel motion changes the image, while a
pixel that no moving shape comes near keeps exactly the value of the static background.

The static table (`Backdrop`) is a pure function of table coordinates: a procedural texture (sums
of random sinusoids; the "texture" style passes them through a steep tanh, giving a sharp,
high-contrast camouflage pattern), painted distractor shapes, and a plain floor off the table. The
fixed camera caches it per image size; the wrist camera evaluates it at its moving window every
frame (a few matrix products, since sin(a + b) splits into row and column factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CAMERA_NAMES = ("cam_high", "cam_left_wrist")
WRIST_EXTENT = 0.35  # side of the eye-in-hand window, in table units
FLOOR_COLOR = np.array([58.0, 52.0, 50.0], dtype=np.float32)
RIM_COLOR = np.array([25.0, 25.0, 30.0], dtype=np.float32)
RIM_WIDTH = 0.006
PUSHER_COLOR = np.array([45.0, 45.0, 52.0], dtype=np.float32)
PUSHER_CAP_COLOR = np.array([235.0, 235.0, 235.0], dtype=np.float32)  # a light centre: position is plain

# Backdrop styles: spatial frequency range (cycles per table unit), tanh gain (contrast / sharpness),
# amplitude of the two colour tints, and of a fine linear grain.
STYLES: dict[str, dict[str, tuple[float, float] | float]] = {
    "texture": {"freq": (4.0, 16.0), "gain": 2.5, "tint": 100.0, "grain": 18.0},
    "soft": {"freq": (2.0, 8.0), "gain": 1.0, "tint": 45.0, "grain": 6.0},
    "plain": {"freq": (0.5, 1.5), "gain": 1.0, "tint": 12.0, "grain": 0.0},
}
_WAVES = 8  # sinusoids per field


@dataclass(frozen=True)
class Shape:
    """A flat shape: `kind` "disc" (size = radius), "box" (size = half side) or "ring"."""

    kind: str
    x: float
    y: float
    size: float
    color: np.ndarray  # float32 (3,)
    angle: float = 0.0  # boxes only
    rim: float = 0.0  # width of a dark outline

    @property
    def reach(self) -> float:
        """Radius of a disc around the centre that contains the shape."""
        return self.size * (math.sqrt(2.0) if self.kind == "box" else 1.0) + 0.01

    def sdf(self, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
        dx, dy = gx - self.x, gy - self.y
        if self.kind == "box":
            c, s = math.cos(self.angle), math.sin(self.angle)
            qx = np.abs(c * dx + s * dy) - self.size
            qy = np.abs(c * dy - s * dx) - self.size
            outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
            return outside + np.minimum(np.maximum(qx, qy), 0.0)
        dist = np.hypot(dx, dy)
        if self.kind == "ring":
            return np.abs(dist - self.size) - 0.3 * self.size
        return dist - self.size


def _coverage(sd: np.ndarray, px: float) -> np.ndarray:
    return np.clip(0.5 - sd / px, 0.0, 1.0).astype(np.float32)


def draw(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, px: float, shape: Shape) -> None:
    """Blend `shape` into `img` [H, W, 3] in place, touching only the pixels near it."""
    r = shape.reach + 2 * px
    j0, j1 = np.searchsorted(xs, shape.x - r), np.searchsorted(xs, shape.x + r, side="right")
    i0, i1 = np.searchsorted(-ys, -(shape.y + r)), np.searchsorted(-ys, -(shape.y - r), side="right")
    if j0 >= j1 or i0 >= i1:
        return
    sd = shape.sdf(xs[None, j0:j1], ys[i0:i1, None])
    color = shape.color
    if shape.rim > 0:
        color = RIM_COLOR + _coverage(sd + shape.rim, px)[..., None] * (shape.color - RIM_COLOR)
    sub = img[i0:i1, j0:j1]
    sub += _coverage(sd, px)[..., None] * (color - sub)


@dataclass(frozen=True)
class Backdrop:
    """The static table: texture fields, colours and painted distractors (table coordinates)."""

    waves: np.ndarray  # [3, _WAVES, 4]: per field (fx, fy, phase, amplitude); field 2 is the grain
    base: np.ndarray  # float32 (3,)
    tints: np.ndarray  # float32 [3, 3]: colour per field
    gain: float
    distractors: tuple[Shape, ...]

    def paint(self, xs: np.ndarray, ys: np.ndarray, px: float) -> np.ndarray:
        """float32 [len(ys), len(xs), 3] colours of the table (and floor) at the grid points."""
        fields = []
        for k, waves in enumerate(self.waves):
            fx, fy, phase, amp = (w[:, None] for w in waves.T)
            p = 2 * np.pi * fx * xs[None, :]  # [waves, W]
            q = 2 * np.pi * fy * ys[None, :] + phase  # [waves, H]
            # sin(p + q) = sin q cos p + cos q sin p: one [H, 2n] @ [2n, W] product per field.
            rows = np.concatenate([amp * np.sin(q), amp * np.cos(q)]).T.astype(np.float32)
            field = rows @ np.concatenate([np.cos(p), np.sin(p)]).astype(np.float32)
            fields.append(field if k == 2 else np.tanh(np.float32(self.gain) * field))
        img = np.stack(fields, axis=-1) @ self.tints + self.base  # [H, W, 3] float32
        for shape in self.distractors:
            draw(img, xs, ys, px, shape)
        # Anti-aliased table edge: the unit square's signed distance is separable into max(row, col).
        sd = np.maximum(np.abs(xs - 0.5)[None, :], np.abs(ys - 0.5)[:, None]) - 0.5
        return FLOOR_COLOR + _coverage(sd, px)[..., None] * (img - FLOOR_COLOR)


def random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    """An RGB colour (0-255, float32) from a random hue, saturation and value (HSV)."""
    h, s, v = rng.uniform(0.0, 1.0), rng.uniform(*sat), rng.uniform(*val)
    channel = np.clip(np.abs((h * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    return (255.0 * v * (1.0 - s + s * channel)).astype(np.float32)


def _waves(rng: np.random.Generator, freq: tuple[float, float]) -> np.ndarray:
    f = rng.uniform(*freq, size=_WAVES)
    theta = rng.uniform(0.0, np.pi, size=_WAVES)
    a = rng.uniform(0.5, 1.0, size=_WAVES)
    a *= math.sqrt(2.0 / np.sum(a**2))  # unit variance whatever the draw
    return np.stack([f * np.cos(theta), f * np.sin(theta), rng.uniform(0, 2 * np.pi, _WAVES), a], axis=1)


def make_backdrop(rng: np.random.Generator, style: str, num_distractors: int) -> Backdrop:
    """A random static table of `style` (see `STYLES`) with `num_distractors` painted shapes."""
    st = STYLES[style]
    high = (st["freq"][1], 1.6 * st["freq"][1])  # the grain is finer than the pattern
    waves = np.stack([_waves(rng, st["freq"]), _waves(rng, st["freq"]), _waves(rng, high)])
    base = random_color(rng, (0.1, 0.35), (0.5, 0.65))
    # Each field changes brightness (a luminance part, of opposite signs) and hue (a random part).
    hue = rng.normal(size=(2, 3))
    hue -= hue.mean(
        axis=1, keepdims=True
    )  # pure hue: no brightness, so the contrast is the same for any draw
    hue /= np.linalg.norm(hue, axis=1, keepdims=True)
    tints = np.stack(
        [
            st["tint"] * (0.45 + 0.8 * hue[0]),
            st["tint"] * (-0.35 + 0.8 * hue[1]),
            np.full(3, st["grain"]),
        ]
    ).astype(np.float32)
    distractors = tuple(
        Shape(
            kind=str(rng.choice(["disc", "box", "ring"])),
            x=float(rng.uniform(0.05, 0.95)),
            y=float(rng.uniform(0.05, 0.95)),
            size=float(rng.uniform(0.03, 0.1)),
            color=random_color(rng, (0.2, 0.7), (0.3, 0.95)),
            angle=float(rng.uniform(0.0, np.pi / 2)),
        )
        for _ in range(num_distractors)
    )
    return Backdrop(waves, base.astype(np.float32), tints, float(st["gain"]), distractors)


def view_grid(centre: tuple[float, float], extent: float, h: int, w: int, s: int):
    """Sub-pixel centre coordinates (xs [s*w], ys [s*h]) and sub-pixel size of a window."""
    px = extent / min(h, w) / s
    xs = centre[0] + (np.arange(s * w) + 0.5 - s * w / 2) * px
    ys = centre[1] - (np.arange(s * h) + 0.5 - s * h / 2) * px
    return xs, ys, px


def downsample(img: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return img
    # Summing the s * s strided sub-images is several times faster than a reshaped mean.
    total = sum(img[i::s, j::s] for i in range(s) for j in range(s))
    return total * np.float32(1.0 / (s * s))


def to_uint8(img: np.ndarray, rng: np.random.Generator | None, noise: float, flicker: float) -> np.ndarray:
    """Quantise; with an `rng`, first apply a global brightness flicker and per-pixel sensor noise."""
    if rng is not None and (noise > 0 or flicker > 0):
        gain = 1.0 + flicker * rng.standard_normal()
        img = img * gain + noise * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class Renderer:
    """Renders the scene at one image size; caches the fixed camera's background."""

    def __init__(self, backdrop: Backdrop, h: int, w: int, supersample: int):
        self.backdrop, self.h, self.w, self.s = backdrop, h, w, supersample
        self._high: np.ndarray | None = None

    def _grid(self, camera: str, pusher: np.ndarray):
        if camera == "cam_high":
            return view_grid((0.5, 0.5), 1.0, self.h, self.w, self.s)
        return view_grid((float(pusher[0]), float(pusher[1])), WRIST_EXTENT, self.h, self.w, self.s)

    def background(self, camera: str, pusher: np.ndarray) -> np.ndarray:
        """The static table seen by `camera` (a fresh array, safe to draw on)."""
        xs, ys, px = self._grid(camera, pusher)
        if camera != "cam_high":
            return self.backdrop.paint(xs, ys, px)
        if self._high is None:
            self._high = self.backdrop.paint(xs, ys, px)
            self._high.flags.writeable = False  # shared by copies of the environment
        return self._high.copy()

    def render(self, camera: str, pusher: np.ndarray, shapes: list[Shape]) -> np.ndarray:
        """float32 [h, w, 3] view of `camera` (before noise and quantisation); shapes drawn in order."""
        xs, ys, px = self._grid(camera, pusher)
        img = self.background(camera, pusher)
        for shape in shapes:
            draw(img, xs, ys, px, shape)
        return downsample(img, self.s)
