"""A trained IDM for labelling: opened from a run directory or an `idm.pt` (ours or upstream's),
and run over frames in batches.

Our export carries the network's sizes, the input size and how the training frames were tiled, so
that a video of another size or tiling is refused; upstream's released file holds only the weights
(`model_state_dict`): it is the published size, input 518, and no frame check is possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldtune.config import ConfigError
from worldtune.models.idm import IDM, PUBLISHED_IMAGE_SIZE, IDMConfig, load_idm_state, preprocess
from worldtune.models.idm.load import UPSTREAM_KEY
from worldtune.utils.weight_files import CheckpointError

_FC = "model.resnet_model.fc.weight"


@dataclass
class OpenedIdm:
    model: IDM
    image_size: int
    frame: dict[str, Any] | None  # height, width, cameras, camera_layout, fps of training; None: unknown
    groups: dict[str, list[int]]
    source: Path
    run_config: Any = None  # the run's IdmRunConfig when opened from a run directory


def open_idm(path: str | Path, device: str | torch.device = "cpu") -> OpenedIdm:
    """A run directory (its newest checkpoint, EMA weights when it kept them) or an `idm.pt` file."""
    path = Path(path)
    if path.is_dir():
        return _from_run(path, device)
    from worldtune.models.idm.load import _read  # mapped, weights-only

    payload = _read(path)
    if not isinstance(payload, dict):
        raise CheckpointError(path, "not an IDM checkpoint (expected a dict)")
    if "idm_config" in payload:
        cfg = IDMConfig(**payload["idm_config"])
        image_size = int(payload.get("image_size", PUBLISHED_IMAGE_SIZE))
        frame, groups = payload.get("frame"), payload.get("action_groups")
    else:  # upstream's released file: the published size, output_dim from its head
        state = payload.get(UPSTREAM_KEY, payload)
        if _FC not in state:
            raise CheckpointError(path, f"no {_FC}: not an IDM checkpoint")
        cfg, image_size, frame, groups = IDMConfig.published(int(state[_FC].shape[0])), PUBLISHED_IMAGE_SIZE, None, None
    model = load_idm_state(IDM(cfg), payload)
    groups = groups or {"all": list(range(cfg.output_dim))}
    return OpenedIdm(model.to(device).eval(), image_size, frame, groups, path)


def _from_run(run_dir: Path, device) -> OpenedIdm:
    from worldtune.systems.idm.recipe import RECIPE
    from worldtune.train.run import load_run

    run = load_run(run_dir, RECIPE)
    d = run.cfg.data
    frame = {"height": d.height, "width": d.width, "cameras": list(d.cameras), "camera_layout": d.camera_layout,
             "fps": float(d.fps)}
    return OpenedIdm(run.model(device=device), run.cfg.model.image_size, frame, run.cfg.model.groups(), run_dir,
                     run.cfg)


@torch.no_grad()
def predict(idm: OpenedIdm, frames: torch.Tensor, batch_size: int = 32, with_mask: bool = False):
    """Frames `[N, 3, H, W]` in [-1, 1] -> actions `[N, D]` in joint units (float32 numpy); with
    `with_mask`, also the soft masks `[N, 1, S, S]`."""
    device = next(idm.model.parameters()).device
    actions, masks = [], []
    for chunk in frames.split(batch_size):
        out = idm.model(preprocess(chunk.to(device), idm.image_size), return_mask=with_mask)
        if with_mask:
            out, mask = out
            masks.append(mask.float().cpu())
        actions.append(out.float().cpu())
    result = torch.cat(actions).numpy() if actions else np.zeros((0, idm.model.output_dim), np.float32)
    return (result, torch.cat(masks)) if with_mask else result


def check_frame_size(idm: OpenedIdm, video: Path, height: int, width: int) -> None:
    """Refuse a video whose frames are not the size the IDM was trained on (our exports know it)."""
    if idm.frame is None:
        return
    want = (idm.frame["height"], idm.frame["width"])
    if (height, width) != want:
        cams = idm.frame["cameras"]
        tiling = f"{len(cams)} cameras tiled by {idm.frame['camera_layout']!r}" if cams else "one camera"
        raise ConfigError(f"{video}: frames are {height}x{width}, the IDM ({idm.source}) was trained on "
                          f"{want[0]}x{want[1]} frames ({tiling}); label an episode folder to tile its cameras")
