"""Vectorised numpy ray caster for the toy world (see `worldtune.data.toyenv`).

Every solid is a set of planar faces (rectangles); a camera is a pinhole with per-pixel ray
directions. A face is drawn by intersecting the rays inside its projected bounding box with its
plane, with a depth buffer for occlusion, Lambert-like shading per face normal and darker edges.
The table plane (z = 0) is textured: an 8x8 checker with a colour gradient (red grows to the right,
blue toward the far side), so that every camera motion is visible. `table="gradient"` (the CPU
demo's) lowers the checker's contrast and strengthens the gradient: at 16x16 pixels a checker that
slides several pixels a frame is noise, while a colour that follows the gripper's position is a
motion a tiny world model can learn to predict from the actions. Soft shadows, growing and
fading with height, are painted on the table below the gripper and carried blocks.

Cameras (the ALOHA names; the toy has a single arm):

- `cam_high`: fixed, above the near edge of the table, looking down at it (slightly oblique);
- `cam_left_wrist`: on the gripper, looking along its approach axis; it turns with the gripper's
  roll / pitch / yaw and zooms in as the gripper descends; the fingers are in view;
- `cam_right_wrist`: fixed side view from the right of the table (heights are visible).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from worldtune.data.toyenv_world import (
    COLUMN_HALF,
    FINGER_HALF,
    PALM_HALF,
    PALM_Z,
    WRIST_CAMERA_Z,
    ToyWorld,
    rotation_matrix,
)

CAMERA_NAMES = ("cam_high", "cam_left_wrist", "cam_right_wrist")
WRIST_CAMERA = "cam_left_wrist"
_LIGHT = np.array([-0.3, -0.5, 1.0]) / math.sqrt(0.09 + 0.25 + 1.0)
_NEAR = 0.01
_WRIST_TAN_HALF = 0.7

_FINGER_COLORS = ((240, 240, 240), (55, 55, 62))  # +x finger light, -x finger dark: yaw is unambiguous
# A saturated orange body: at 16 pixels a grey gripper over a light table is a faint blur that neither a
# small world model nor a viewer can follow from the fixed camera.
_PALM_COLOR = (245, 120, 25)
_COLUMN_COLOR = (200, 90, 20)


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: `tan_half` is tan(half field of view) across the smaller image side."""

    origin: np.ndarray
    forward: np.ndarray
    right: np.ndarray
    up: np.ndarray
    tan_half: float


@dataclass(frozen=True)
class Face:
    """A planar rectangle: centre, unit in-plane axes `e1`, `e2`, outward unit normal, half sizes."""

    centre: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    normal: np.ndarray  # e1 x e2
    a: float
    b: float
    color: tuple[int, int, int]
    border: float = 0.0  # width of the darkened rim (table units)
    tag: str = ""


def look_at(
    origin: tuple[float, float, float], target: tuple[float, float, float], tan_half: float
) -> Camera:
    o, t = np.asarray(origin, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = (t - o) / np.linalg.norm(t - o)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return Camera(o, forward, right, np.cross(right, forward), tan_half)


FIXED_CAMERAS: dict[str, Camera] = {
    "cam_high": look_at((0.5, -0.2, 1.45), (0.5, 0.46, 0.0), 0.37),
    "cam_right_wrist": look_at((1.45, 0.5, 0.62), (0.5, 0.5, 0.04), 0.56),
}


def wrist_camera(world: ToyWorld) -> Camera:
    """The camera on the gripper: above the finger tips, looking along the gripper's -z axis."""
    rot = rotation_matrix(*world.pose[3:6])
    origin = world.pose[:3] + rot[:, 2] * WRIST_CAMERA_Z
    return Camera(origin, -rot[:, 2], rot[:, 0], rot[:, 1], _WRIST_TAN_HALF)


def box_faces(
    centre: np.ndarray, rot: np.ndarray, half: tuple[float, float, float], color, *, border=0.0, tag=""
) -> list[Face]:
    """The six faces of a box with centre `centre`, orientation `rot` (3x3) and half extents."""
    faces = []
    for k in range(3):
        k1, k2 = (k + 1) % 3, (k + 2) % 3
        for sign in (1.0, -1.0):
            e1, e2, a, b = (rot[:, k1], rot[:, k2], half[k1], half[k2])
            if sign < 0:
                e1, e2, a, b = e2, e1, b, a
            normal = sign * rot[:, k]
            faces.append(Face(centre + sign * half[k] * rot[:, k], e1, e2, normal, a, b, color, border, tag))
    return faces


def scene_faces(world: ToyWorld) -> list[Face]:
    """All faces of the blocks and the gripper (tags "block", "finger", "body")."""
    faces: list[Face] = []
    for block in world.blocks:
        centre = np.array([block.xy[0], block.xy[1], block.z + block.height / 2])
        half = (block.half, block.half, block.height / 2)
        rot = rotation_matrix(0.0, 0.0, block.yaw)
        faces += box_faces(centre, rot, half, block.color, border=0.008, tag="block")
    rot = rotation_matrix(*world.pose[3:6])
    tcp = world.pose[:3]
    sep = world.finger_separation()
    for sign, color in zip((1.0, -1.0), _FINGER_COLORS, strict=True):
        centre = tcp + rot @ np.array([sign * sep / 2, 0.0, FINGER_HALF[2]])
        faces += box_faces(centre, rot, FINGER_HALF, color, border=0.004, tag="finger")
    faces += box_faces(tcp + rot[:, 2] * PALM_Z, rot, PALM_HALF, _PALM_COLOR, border=0.005, tag="body")
    column_z = PALM_Z + PALM_HALF[2] + COLUMN_HALF[2]
    faces += box_faces(tcp + rot[:, 2] * column_z, rot, COLUMN_HALF, _COLUMN_COLOR, tag="body")
    return faces


def scene_shadows(world: ToyWorld) -> list[tuple[float, float, float, float]]:
    """Soft round shadows `(x, y, radius, strength)` below the gripper and lifted blocks."""
    gz = float(world.pose[2])
    shadows = [(float(world.pose[0]), float(world.pose[1]), 0.07 + 0.2 * gz, 0.55 / (1 + 3 * gz))]
    for block in world.blocks:
        if block.z > 1e-4:
            shadows.append((float(block.xy[0]), float(block.xy[1]), 1.2 * block.half + 0.1 * block.z, 0.5))
    return shadows


# --------------------------------------------------------------------------- rays and background


def _tans(cam: Camera, h: int, w: int) -> tuple[float, float]:
    if w >= h:
        return cam.tan_half * w / h, cam.tan_half
    return cam.tan_half, cam.tan_half * h / w


def plane_points(camera: str, height: int, width: int, z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel's ray of a fixed camera meets the plane at height `z`: (x, y), each [H, W]
    (a calibrated camera: pixel -> table position, e.g. to locate a block seen in a frame)."""
    cam = FIXED_CAMERAS[camera]
    dirs = _ray_dirs(cam, height, width)
    t = (z - cam.origin[2]) / dirs[2]
    return cam.origin[0] + t * dirs[0], cam.origin[1] + t * dirs[1]


def _ray_dirs(cam: Camera, h: int, w: int) -> np.ndarray:
    """Unnormalised ray directions `[3, H, W]` (unit forward component)."""
    tan_x, tan_y = _tans(cam, h, w)
    xs = ((np.arange(w) + 0.5) / w * 2 - 1) * tan_x
    ys = (1 - (np.arange(h) + 0.5) / h * 2) * tan_y
    return (
        cam.forward[:, None, None]
        + xs[None, None, :] * cam.right[:, None, None]
        + ys[None, :, None] * cam.up[:, None, None]
    )


TABLES = ("wood", "gradient")


def table_colors(px: np.ndarray, py: np.ndarray, table: str = "wood") -> np.ndarray:
    """Colours `[..., 3]` (float, 0-255) of the table plane at points (px, py) (see the module docstring)."""
    checker = (np.floor(px * 8) + np.floor(py * 8)) % 2
    if table == "wood":
        base = np.where(checker[..., None] > 0, np.array([176.0, 140, 98]), np.array([214.0, 188, 142]))
        tint = np.stack([0.8 + 0.3 * px, np.full_like(px, 0.95), 0.75 + 0.4 * py], axis=-1)
    elif table == "gradient":
        base = np.where(checker[..., None] > 0, 178.0, 202.0) * np.ones(3)
        tint = np.stack([0.45 + 0.9 * px, 0.7 + 0.3 * (1 - px) * (1 - py), 0.45 + 0.9 * py], axis=-1)
    else:
        raise ValueError(f"unknown table {table!r}; expected one of {list(TABLES)}")
    color = np.clip(base * tint, 0, 255)
    on_table = (px >= 0) & (px <= 1) & (py >= 0) & (py <= 1)
    rim = on_table & ((np.minimum(px, 1 - px) < 0.012) | (np.minimum(py, 1 - py) < 0.012))
    color[rim] = (95, 62, 40)
    floor_checker = (np.floor(px * 4) + np.floor(py * 4)) % 2
    floor = np.array([62.0, 64, 74]) * (0.9 + 0.15 * floor_checker[..., None])
    return np.where(on_table[..., None], color, floor)


def _background(
    cam: Camera, dirs: np.ndarray, table: str = "wood"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Table / floor / wall image `[H, W, 3]`, depth `[H, W]` and table hit points px, py."""
    dz = dirs[2]
    hit = dz < -1e-9
    t = np.where(hit, -cam.origin[2] / np.where(hit, dz, -1.0), np.inf)
    tt = np.where(hit, t, 0.0)
    px = cam.origin[0] + tt * dirs[0]
    py = cam.origin[1] + tt * dirs[1]
    wall = np.array([150.0, 165, 190]) + 60 * np.clip(dz, 0, 1)[..., None]
    img = np.where(hit[..., None], table_colors(px, py, table), wall)
    return img.astype(np.float32), t, np.where(hit, px, np.nan), np.where(hit, py, np.nan)


@functools.lru_cache(maxsize=16)
def _static_view(name: str, h: int, w: int, table: str = "wood") -> tuple[np.ndarray, ...]:
    cam = FIXED_CAMERAS[name]
    dirs = _ray_dirs(cam, h, w)
    arrays = (dirs, *_background(cam, dirs, table))
    for array in arrays:
        array.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------- drawing


def _bbox(cam: Camera, points: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Pixel rows / columns [i0, i1) x [j0, j1) covering `points` [N, 3]; None when off-screen."""
    rel = points - cam.origin
    depth = rel @ cam.forward
    if np.any(depth <= _NEAR):
        return 0, h, 0, w
    tan_x, tan_y = _tans(cam, h, w)
    j = ((rel @ cam.right) / depth / tan_x + 1) / 2 * w - 0.5
    i = (1 - (rel @ cam.up) / depth / tan_y) / 2 * h - 0.5
    i0, i1 = max(0, math.floor(i.min()) - 1), min(h, math.ceil(i.max()) + 2)
    j0, j1 = max(0, math.floor(j.min()) - 1), min(w, math.ceil(j.max()) + 2)
    if i0 >= i1 or j0 >= j1:
        return None
    return i0, i1, j0, j1


def _draw_face(img: np.ndarray, zbuf: np.ndarray, cam: Camera, dirs: np.ndarray, face: Face) -> None:
    normal = face.normal
    to_cam = cam.origin - face.centre
    if normal @ to_cam <= 0:  # back face
        return
    corners = np.array(
        [face.centre + sa * face.a * face.e1 + sb * face.b * face.e2 for sa in (-1, 1) for sb in (-1, 1)]
    )
    h, w = zbuf.shape
    box = _bbox(cam, corners, h, w)
    if box is None:
        return
    i0, i1, j0, j1 = box
    d = dirs[:, i0:i1, j0:j1]
    denom = normal[0] * d[0] + normal[1] * d[1] + normal[2] * d[2]
    facing = denom < -1e-12
    t = (normal @ -to_cam) / np.where(facing, denom, -1.0)
    u = face.e1 @ to_cam + t * (face.e1[0] * d[0] + face.e1[1] * d[1] + face.e1[2] * d[2])
    v = face.e2 @ to_cam + t * (face.e2[0] * d[0] + face.e2[1] * d[1] + face.e2[2] * d[2])
    zb = zbuf[i0:i1, j0:j1]
    inside = facing & (t > _NEAR) & (t < zb) & (np.abs(u) <= face.a) & (np.abs(v) <= face.b)
    if not inside.any():
        return
    shade = 0.55 + 0.45 * max(0.0, float(normal @ _LIGHT))
    color = np.asarray(face.color, dtype=np.float32) * shade
    patch = img[i0:i1, j0:j1]
    patch[inside] = color
    if face.border > 0:
        rim = inside & ((np.abs(u) > face.a - face.border) | (np.abs(v) > face.b - face.border))
        patch[rim] = color * 0.6
    zb[inside] = t[inside]


def _draw_shadows(img, cam, px, py, shadows) -> None:
    h, w = px.shape
    for x, y, radius, strength in shadows:
        corners = np.array([[x + sx * radius, y + sy * radius, 0.0] for sx in (-1, 1) for sy in (-1, 1)])
        box = _bbox(cam, corners, h, w)
        if box is None:
            continue
        i0, i1, j0, j1 = box
        dist = np.hypot(px[i0:i1, j0:j1] - x, py[i0:i1, j0:j1] - y)
        alpha = strength * np.clip((radius - dist) / (0.5 * radius), 0.0, 1.0)
        alpha = np.nan_to_num(alpha, nan=0.0).astype(np.float32)
        img[i0:i1, j0:j1] *= 1 - alpha[..., None]


def render_views(
    world: ToyWorld,
    cameras: tuple[str, ...] | list[str],
    height: int,
    width: int,
    supersample: int = 1,
    table: str = "wood",
) -> dict[str, np.ndarray]:
    """Render `cameras` of `world`, each as uint8 RGB `[height, width, 3]`.

    With `supersample` s > 1 a view is rendered at s times the size and box-filtered down
    (anti-aliasing: sub-pixel motion then changes the image).
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    h, w = height * supersample, width * supersample
    all_faces = scene_faces(world)
    shadows = scene_shadows(world)
    views = {}
    for camera in cameras:
        faces = all_faces
        if camera == WRIST_CAMERA:
            cam = wrist_camera(world)
            dirs = _ray_dirs(cam, h, w)
            img, zbuf, px, py = _background(cam, dirs, table)
            faces = [f for f in faces if f.tag != "body"]  # the camera sits inside the palm
        elif camera in FIXED_CAMERAS:
            cam = FIXED_CAMERAS[camera]
            dirs, img, zbuf, px, py = _static_view(camera, h, w, table)
            img, zbuf = img.copy(), zbuf.copy()
        else:
            raise ValueError(f"unknown camera {camera!r}; the toy world has {list(CAMERA_NAMES)}")
        _draw_shadows(img, cam, px, py, shadows)
        for face in faces:
            _draw_face(img, zbuf, cam, dirs, face)
        if supersample > 1:
            img = img.reshape(height, supersample, width, supersample, 3).mean(axis=(1, 3))
        views[camera] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return views


def render_view(
    world: ToyWorld, camera: str, height: int, width: int, supersample: int = 1, table: str = "wood"
) -> np.ndarray:
    """Render one camera of `world` as uint8 RGB `[height, width, 3]` (see `render_views`)."""
    return render_views(world, (camera,), height, width, supersample, table)[camera]
