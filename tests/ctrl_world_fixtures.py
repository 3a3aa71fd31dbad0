"""Ctrl-World test recordings: ALOHA-style HDF5 files (raw or JPEG frames, with injected faults) and a
converted dataset, shared by the converter and reader tests."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from worldtune.models.encoders.common import LatentSpace
from worldtune.models.encoders.pixel import PixelLatents
from worldtune.systems.ctrl_world.convert import convert_recordings

CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
T, H, W, D = 16, 48, 64, 7


def make_frames(seed: int, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """Smooth-ish uint8 frames (JPEG keeps them recognisable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, size=3)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        for c in range(3):
            frames[i, :, :, c] = (base[c] + 3 * i + xx * (c + 1) + yy * 2) % 256
    return frames


def jpeg(frame: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def decode_jpeg(data: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))


def write_recording(
    path: Path,
    seed: int = 0,
    *,
    t: int = T,
    h: int = H,
    w: int = W,
    encoding: str = "raw",
    cameras: tuple[str, ...] = CAMS,
    instruction: str | None = "pick up the cube",
    action_len: int | None = None,
    drop: str | None = None,
    nan_action_at: int | None = None,
    inf_state_at: int | None = None,
    bad_jpeg: tuple[str, int] | None = None,
) -> dict:
    rng = np.random.default_rng(seed + 1000)
    states = rng.normal(size=(t, D)).cumsum(axis=0).astype(np.float32)
    actions = rng.normal(size=(action_len or t, D)).astype(np.float32)
    if nan_action_at is not None:
        actions[nan_action_at, 2] = np.nan
    if inf_state_at is not None:
        states[inf_state_at, 0] = np.inf
    frames = {}
    with h5py.File(path, "w") as f:
        if instruction is not None:
            f.attrs["instruction"] = instruction
        f.attrs["fps"] = 30.0
        for k, cam in enumerate(cameras):
            if drop == cam:
                continue
            fr = make_frames(seed * 10 + k, t, h, w)
            key = f"observations/images/{cam}"
            if encoding == "raw":
                f.create_dataset(key, data=fr)
                frames[cam] = fr
            else:
                ds = f.create_dataset(key, (t,), dtype=h5py.vlen_dtype(np.uint8))
                decoded = []
                for i in range(t):
                    data = jpeg(fr[i])
                    if bad_jpeg == (cam, i):
                        data = np.frombuffer(b"not a jpeg at all", dtype=np.uint8)
                    ds[i] = data
                    decoded.append(decode_jpeg(data) if bad_jpeg != (cam, i) else None)
                frames[cam] = decoded
        if drop != "qpos":
            f.create_dataset("observations/qpos", data=states)
        if drop != "action":
            f.create_dataset("action", data=actions)
    return {"states": states, "actions": actions, "frames": frames}


def make_recordings(folder: Path, n: int, **kw) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_recording(folder / f"rec_{i:02d}.hdf5", seed=i, **kw) for i in range(n)]


def tree(*roots: Path) -> set[str]:
    base = roots[0].parent
    return {str(p.relative_to(base)) for root in roots for p in root.rglob("*") if p.is_file()}


def convert(inp: Path, out: Path, space: LatentSpace | None = None, **kw):
    kw.setdefault("dataset_name", "flexiv_1113")
    kw.setdefault("height", H)
    kw.setdefault("width", W)
    kw.setdefault("progress", False)
    return convert_recordings(inp, out, space or PixelLatents(patch=4), **kw)


def convert_two(base: Path):
    """Two raw recordings under `base`, converted with space-to-depth latents at their native size:
    (base, output folder, the recordings' arrays, the converter's stats)."""
    recs = make_recordings(base / "recordings", 2)
    out = base / "flexiv_data"
    stats = convert(base / "recordings", out)
    return base, out, recs, stats
