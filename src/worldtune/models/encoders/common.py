"""What every frozen encoder shares: always-eval modules, the latent-space protocol, path lookup;
reading and loading weights is `utils/weights.py`'s, with errors raised as EncoderLoadError."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from worldtune.utils.weight_files import WEIGHT_SUFFIXES, CheckpointError, find_file
from worldtune.utils.weights import load_weights, read_weights

__all__ = ["CHECKPOINT_SUFFIXES", "EncoderLoadError", "FrozenModule", "LatentSpace", "find_file", "load_into",
           "read_state_dict"]

PathLike = str | os.PathLike[str]

# Suffixes of a single-file checkpoint (original Wan releases ship .pth, ComfyUI repacks .safetensors).
CHECKPOINT_SUFFIXES = WEIGHT_SUFFIXES


class EncoderLoadError(RuntimeError):
    """A checkpoint was found but could not be loaded; the message names the path."""


@runtime_checkable
class LatentSpace(Protocol):
    """What every latent space gives the code that trains on or converts into it.

    `encode(video [B, 3, T, H, W] in [-1, 1]) -> latents [B, z_dim, T', H / spatial_stride, ...]`
    (already scaled for the model) and `decode` back to float32 video in [-1, 1]. `WanVAE`
    (`temporal_stride` 4), `SVDVaeLatents` and `PixelLatents` (frame by frame: `temporal_stride` 1)
    satisfy it; `latent_spaces.encode_frames` / `decode_frames` use a per-frame one on `[T, ...]` frames.
    `identity` names the space and every setting that changes its latents: equal identities give
    equal latents, so a converted dataset records it and never mixes two.
    """

    z_dim: int
    temporal_stride: int
    spatial_stride: int
    identity: str

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]: ...


class FrozenModule(nn.Module):
    """An `nn.Module` that never trains: parameters frozen, dropout off, whatever a parent asks.

    A trainer calls `model.train()` on the whole tree; an encoder inside it must stay in eval mode,
    so `train()` is a no-op here.
    """

    def freeze(self) -> FrozenModule:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FrozenModule:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for tensor in self.parameters():
            return tensor.dtype
        return torch.float32


def check_video(video: torch.Tensor, channels: int, name: str = "video") -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 5:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{name} must be a [B, C, T, H, W] tensor, got {shape}")
    if video.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels in dim 1, got shape {tuple(video.shape)}")


def check_frames(num_frames: int, height: int, width: int, t_stride: int, s_stride: int) -> None:
    """Wan-style causal video VAEs take 1 + k*t_stride frames and sides divisible by the stride."""
    if num_frames < 1 or (num_frames - 1) % t_stride:
        raise ValueError(f"num_frames must be 1 + {t_stride}*k, got {num_frames}")
    if height % s_stride or width % s_stride:
        raise ValueError(f"height and width must be multiples of {s_stride}, got {height}x{width}")


def batch_chunks(x: torch.Tensor, chunk: int | None) -> Sequence[torch.Tensor]:
    if not chunk or chunk >= x.shape[0]:
        return (x,)
    return x.split(chunk)


def find_component(root: Path, subfolder: str | None, marker: str = "config.json") -> Path | None:
    """`root/subfolder` if it holds `marker` (a diffusers pipeline folder), else `root` if it does."""
    if subfolder and (root / subfolder / marker).is_file():
        return root / subfolder
    if (root / marker).is_file():
        return root
    return None


def missing_path_error(path: PathLike, looked_for: str, allow_download: bool = False) -> FileNotFoundError:
    hint = "" if allow_download else " (a hub id is only fetched with allow_download=True)"
    return FileNotFoundError(
        f"{path}: not found or not a recognised checkpoint; looked for {looked_for}{hint}"
    )


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """A flat tensor dict from one checkpoint file (any format `utils.weight_files` reads), loaded
    without executing code; a file that cannot be read raises EncoderLoadError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        return read_weights(path)
    except CheckpointError as exc:
        raise EncoderLoadError(str(exc)) from exc


def empty_weights():
    """Build big models without allocating or initialising weights: parameters on `meta`, buffers
    (e.g. CLIP's non-persistent `position_ids`) real, so `load_into` can assign the checkpoint."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: PathLike) -> None:
    """A strict load (the model may sit on `meta`: it takes `state`'s tensors, no copy), with
    errors naming `path`."""
    try:
        load_weights(model, state, strict=True, assign=True)
    except CheckpointError as exc:
        raise EncoderLoadError(f"{path}: weights do not match the model: {exc}") from exc
