"""Frames in and out of a `LatentSpace`, and the latent spaces a config or CLI names.

The one protocol is `common.LatentSpace` (video ``[B, 3, T, H, W]``). Ctrl-World's converter and
world model work on one clip of frames at a time, with a space that encodes frame by frame
(``temporal_stride`` 1): `encode_frames` takes uint8 frames ``[T, H, W, 3]`` (numpy or torch) or
float frames ``[T, 3, H, W]`` in ``[-1, 1]`` and gives ``[T, C, h, w]``; `decode_frames` goes back
to float32 ``[T, 3, H, W]`` on the CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .common import LatentSpace
from .pixel import PixelLatents
from .svd_vae import SVDVaeLatents

PathLike = str | os.PathLike[str]

LATENT_SPACES = ("svd", "space_to_depth")


def frames_to_model_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` in [-1, 1]; float ``[T, 3, H, W]`` passes through."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise TypeError(f"numpy frames must be uint8 [T, H, W, 3], got {frames.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.dtype == torch.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
        return frames.permute(0, 3, 1, 2).to(torch.float32).div_(127.5).sub_(1.0)
    if not frames.is_floating_point():
        raise TypeError(f"frames must be uint8 or floating point, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"float frames must be [T, 3, H, W] in [-1, 1], got shape {tuple(frames.shape)}")
    return frames


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Float ``[T, 3, H, W]`` in [-1, 1] (clamped) -> uint8 ``[T, H, W, 3]``."""
    x = (frames.detach().to("cpu", torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5
    return x.round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _per_frame(space: LatentSpace) -> None:
    if space.temporal_stride != 1:
        raise ValueError(f"{space.identity} folds {space.temporal_stride} frames into one latent frame; "
                         "per-frame latents need a space with temporal_stride 1")


def encode_frames(space: LatentSpace, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One clip's frames -> latents ``[T, C, h, w]`` on the space's device (float32)."""
    _per_frame(space)
    x = frames_to_model_range(frames)
    h, w = x.shape[-2:]
    if h % space.spatial_stride or w % space.spatial_stride:
        raise ValueError(f"{space.identity}: frame size {h}x{w} must be a multiple of the downsampling "
                         f"factor {space.spatial_stride}")
    return space.encode(x.transpose(0, 1)[None])[0].transpose(0, 1)


def decode_frames(space: LatentSpace, latents: torch.Tensor) -> torch.Tensor:
    """Latents ``[T, C, h, w]`` -> float32 frames ``[T, 3, H, W]`` in [-1, 1], on the CPU."""
    _per_frame(space)
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != space.z_dim:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be [T, {space.z_dim}, h, w], got {shape}")
    return space.decode(latents.transpose(0, 1)[None])[0].transpose(0, 1).float().cpu()


def build_latent_space(kind: str, *, svd_path: PathLike | None = None, factor: int = 4,
                       **options: Any) -> LatentSpace:
    """``"svd"`` (needs ``svd_path``) or ``"space_to_depth"`` (``PixelLatents(patch=factor)``); for CLIs
    and configs."""
    if kind == "svd":
        if svd_path is None:
            raise ValueError("latent space 'svd' needs the SVD folder (svd_path / --vae_path)")
        return SVDVaeLatents.from_pretrained(svd_path, **options)
    if kind in ("space_to_depth", "pixels"):
        return PixelLatents(patch=factor)
    raise ValueError(f"unknown latent space {kind!r}: expected one of {', '.join(LATENT_SPACES)}")
