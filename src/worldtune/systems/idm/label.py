"""`worldtune idm label`: the action sequence an IDM reads from a video, or from every episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from worldtune.config import ConfigError
from worldtune.data.formats.episode_files import detect_cameras
from worldtune.data.formats.episodes import EpisodeClipDataset, EpisodeDataConfig
from worldtune.data.video import probe_video, read_frames
from worldtune.systems.idm.inference import OpenedIdm, check_frame_size, open_idm, predict
from worldtune.utils.atomic import atomic_path
from worldtune.utils.logging import get_logger

log = get_logger()


def label(idm_path: str | Path, target: str | Path, out: str | Path, batch_size: int = 32) -> list[Path]:
    """Label one video (`out` is an .npy file, `[T, action_dim]`) or every episode of a DATA_DIR of
    the Vidar layout (`out` is a folder: `<episode>.npy` each). Returns the files written."""
    idm, target, out = open_idm(idm_path), Path(target), Path(out)
    if target.is_file():
        if out.suffix != ".npy":
            raise ConfigError(f"--out {out}: labelling one video writes an .npy file")
        return [save(out, label_video(idm, target, batch_size))]
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no such video or episode folder")
    return label_episodes(idm, target, out, batch_size)


def label_video(idm: OpenedIdm, video: Path, batch_size: int = 32) -> np.ndarray:
    """Every frame of one (already tiled) video -> `[T, action_dim]`."""
    info = probe_video(video)
    check_frame_size(idm, video, info.height, info.width)
    frames = torch.from_numpy(read_frames(video, range(info.num_frames))).permute(0, 3, 1, 2).float()
    return predict(idm, frames / 127.5 - 1, batch_size)


def label_episodes(idm: OpenedIdm, data_dir: Path, out_dir: Path, batch_size: int = 32) -> list[Path]:
    """Every episode of `data_dir`, its cameras tiled as in training."""
    if idm.frame is None:
        raise ConfigError(f"{idm.source}: holds no frame settings (upstream's file?); label single tiled videos")
    f = idm.frame
    cfg = EpisodeDataConfig(data_dir=str(data_dir), split="all", num_frames=1, fps=f["fps"], height=f["height"],
                            width=f["width"], stride=1, cameras=list(f["cameras"]),
                            camera_layout=f["camera_layout"], action_dim=None)
    dataset = EpisodeClipDataset(cfg)
    written = []
    for info in dataset.episodes:
        found = detect_cameras(info.dir)
        if f["cameras"] and not set(f["cameras"]) <= set(found):
            raise ConfigError(f"{info.dir}: cameras {list(found)}, the IDM was trained on {f['cameras']}")
        video = dataset._decode(info, list(range(info.num_frames)))  # [3, T, H, W]
        written.append(save(out_dir / f"{info.name}.npy", predict(idm, video.permute(1, 0, 2, 3), batch_size)))
        log.info("idm label: %s (%d frames)", info.name, info.num_frames)
    return written


def save(path: Path, actions: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, actions.astype(np.float32))
    return path
