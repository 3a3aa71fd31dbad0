"""Sim-Physics recordings (seed `4-sim-physics.md`): one scene's frame files, read and made into
training targets.

```
<root>/<scene>/env_0/0/0/
    rgb/step_XXXX.png                  RGB frames
    motion_vectors/step_XXXX.npy       (H, W, 4) float32 per-pixel motion
    distance_to_camera/step_XXXX.npy   (H, W) float32 metres
```

**Motion convention** (Isaac Sim / Omniverse Replicator's `motion_vectors` as the seed's loader reads
it): file k holds, on frame k's pixel grid, the motion of each pixel from frame k-1 to frame k,
channel 0 along x (right), channel 1 along y (down), in pixels; channels 2-3 are not motion and are
not used. `motion_units: normalized` (fractions of the width / height) and `motion_sign` (e.g.
`[1, -1]` for a y-up source) adapt other recordings. The original loaded, for two sampled frames
2-3 simulator steps apart, only the last step's file; here the steps in between are chained
(`sim_physics_motion.accumulate_motion`), so the target is the whole displacement between the
sampled frames.

**Depth**: 0, inf, NaN and negative distances are invalid (the sky, a cleared buffer) and masked,
never turned into 1e6 metres as the original did.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldtune.data.errors import DataError


class BadScene(DataError):
    """A Sim-Physics scene that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class SceneFiles:
    """The frame files of one scene, in step order (the same steps in all three folders)."""

    scene: str  # the metadata CSV's `video`: the scene path relative to the root
    rgb: list[Path]
    motion: list[Path]
    depth: list[Path]

    @property
    def num_frames(self) -> int:
        return len(self.rgb)


_STEP = re.compile(r"(\d+)")


def _step_files(folder: Path, suffix: str) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix == suffix and _STEP.search(p.stem)]
    return sorted(files, key=lambda p: int(_STEP.findall(p.stem)[-1]))


def scene_files(root: Path, scene: str, folders: tuple[str, str, str]) -> SceneFiles:
    """The scene's rgb / motion / depth files; missing folders or differing counts are named."""
    base = root / scene
    if not base.is_dir():
        raise BadScene(base, "scene folder not found")
    lists = []
    for name, suffix in zip(folders, (".png", ".npy", ".npy"), strict=True):
        folder = base / name
        if not folder.is_dir():
            raise BadScene(folder, f"missing (a scene needs {', '.join(folders)})")
        files = _step_files(folder, suffix)
        if not files:
            raise BadScene(folder, f"no step_*{suffix} files")
        lists.append(files)
    counts = [len(files) for files in lists]
    if len(set(counts)) != 1:
        raise BadScene(base, f"{', '.join(f'{n} {c}' for n, c in zip(folders, counts, strict=True))} frames: they must match")
    return SceneFiles(scene, *lists)


def pick_frames(total: int, num_frames: int) -> list[int]:
    """`num_frames` indices spread evenly over `total` frames, first frame included (131 -> 49:
    0, 2, 5, 8, ..., 128, gaps of 2 and 3), as the seed's loader picks them."""
    if total < num_frames:
        raise ValueError(f"{total} frames, fewer than num_frames {num_frames}")
    return [i * total // num_frames for i in range(num_frames)]


# ----------------------------------------------------------------------------------- reading

def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise BadScene(path, f"unreadable image ({err})") from err


def read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # EOFError: a truncated or empty file
        raise BadScene(path, f"unreadable .npy ({err})") from err


def read_depth(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(depth [H, W] float32 metres with invalid pixels 0, valid [H, W] bool)."""
    depth = read_npy(path).astype(np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.shape != shape:
        raise BadScene(path, f"depth must be (H, W) = {shape}, got {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, depth, 0.0).astype(np.float32), valid


# ------------------------------------------------------------------------------- geometry

def cover_crop(height: int, width: int, source: tuple[int, int]) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """(scale, resized (h, w), crop offset (top, left)) that resize a source frame to cover
    height x width, aspect kept, then centre-crop it: the frames', the motion's and the depth's."""
    sh, sw = source
    scale = max(height / sh, width / sw)
    rh, rw = max(height, round(sh * scale)), max(width, round(sw * scale))
    return scale, (rh, rw), ((rh - height) // 2, (rw - width) // 2)


def resize_crop(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """[N, C, h, w] resized to cover height x width and centre-cropped ("bilinear" or "nearest")."""
    _, (rh, rw), (top, left) = cover_crop(height, width, tuple(x.shape[-2:]))
    if (rh, rw) != tuple(x.shape[-2:]):
        kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
        x = F.interpolate(x, size=(rh, rw), mode=mode, **kwargs)
    return x[..., top:top + height, left:left + width]


# ----------------------------------------------------------------------------- metadata

METADATA_COLUMNS = ("video", "prompt")


def scene_prompt(scene: str) -> str:
    """The seed's prompts: `test_ball_collide/env_0/0/0` -> "A physics simulation of ball collide"."""
    name = Path(scene).parts[0]
    name = re.sub(r"^test_", "", name).replace("_", " ").strip()
    return f"A physics simulation of {name}"


def find_scenes(root: Path, rgb_dir: str = "rgb") -> list[str]:
    """Every folder under `root` that holds an `rgb_dir` folder, as paths relative to root."""
    found = sorted({p.parent.relative_to(root).as_posix() for p in root.rglob(rgb_dir) if p.is_dir()})
    return [scene for scene in found if scene != "."]


def write_metadata(root: str | Path, out: str | Path, rgb_dir: str = "rgb") -> tuple[Path, int]:
    """`prepare sim-physics-metadata`: the metadata CSV (`video`, `prompt`) of every scene under root."""
    from worldtune.utils.atomic import write_text_atomic

    root = Path(root)
    if not root.is_dir():
        raise BadScene(root, "not a folder")
    scenes = find_scenes(root, rgb_dir)
    if not scenes:
        raise BadScene(root, f"no scene (a folder holding {rgb_dir}/) found")
    lines = [",".join(METADATA_COLUMNS)] + [_csv_row(scene, scene_prompt(scene)) for scene in scenes]
    return write_text_atomic(Path(out), "\n".join(lines) + "\n"), len(scenes)


def _csv_row(*values: str) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def read_metadata(path: Path) -> list[tuple[str, str]]:
    """(scene, prompt) rows of a metadata CSV."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in METADATA_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BadScene(path, f"metadata CSV needs columns {list(METADATA_COLUMNS)}, missing {missing}")
            return [(row["video"].strip(), (row["prompt"] or "").strip()) for row in reader if row["video"].strip()]
    except OSError as err:
        raise BadScene(path, f"cannot read the metadata CSV ({err})") from err
