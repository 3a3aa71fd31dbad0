"""An identity "VAE" for tiny runs and CPU demos: pixels are the latents, optionally folded into
patches (space-to-depth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import FrozenModule, check_frames, check_video


class PixelLatents(FrozenModule):
    """The `LatentSpace` of raw pixels (`--latent_space space_to_depth --factor N` is `patch=N`).

    `patch` > 1 folds each `patch x patch` block of a frame into channels (space-to-depth), so
    `z_dim = 3 * patch**2` and the spatial stride is `patch`; time is never folded
    (`temporal_stride = 1`). `decode(encode(x)) == x` exactly for `x` in [-1, 1].
    """

    def __init__(self, patch: int = 1, channels: int = 3) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.patch = patch
        self.channels = channels
        self.z_dim = channels * patch * patch
        self.temporal_stride = 1
        self.spatial_stride = patch
        # The name converted Ctrl-World datasets record (a folder never mixes two latent spaces).
        extra = "" if channels == 3 else f", c{channels}"
        self.identity = f"space_to_depth(factor={patch}{extra})"
        self.freeze()

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        check_frames(num_frames, height, width, 1, self.patch)
        return (self.z_dim, num_frames, height // self.patch, width // self.patch)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.channels)
        b, c, t, h, w = video.shape
        check_frames(t, h, w, 1, self.patch)
        x = video.float()
        if self.patch == 1:
            return x.clone()
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        folded = F.pixel_unshuffle(frames, self.patch)
        return folded.reshape(b, t, self.z_dim, h // self.patch, w // self.patch).transpose(1, 2)

    forward = encode

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> float32 video in [-1, 1] (clamped, as the VAE decoder does)."""
        check_video(latents, self.z_dim, name="latents")
        b, _, t, h, w = latents.shape
        z = latents.float()
        if self.patch > 1:
            frames = z.transpose(1, 2).reshape(b * t, self.z_dim, h, w)
            z = F.pixel_shuffle(frames, self.patch).reshape(
                b, t, self.channels, h * self.patch, w * self.patch
            )
            z = z.transpose(1, 2)
        return z.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return self.identity
