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

    def __init__(self, patch: int = 1, channels: int = 3, time_patch: int = 1) -> None:
        super().__init__()
        if patch < 1 or time_patch < 1:
            raise ValueError(f"patch and time_patch must be >= 1, got {patch}, {time_patch}")
        self.patch = patch
        self.channels = channels
        self.time_patch = time_patch
        self.z_dim = channels * patch * patch * time_patch
        self.temporal_stride = time_patch
        self.spatial_stride = patch
        # The name converted Ctrl-World datasets record (a folder never mixes two latent spaces).
        extra = "" if channels == 3 else f", c{channels}"
        extra += "" if time_patch == 1 else f", t{time_patch}"
        self.identity = f"space_to_depth(factor={patch}{extra})"
        self.freeze()

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        check_frames(num_frames, height, width, self.time_patch, self.patch)
        frames = (num_frames - 1) // self.time_patch + 1
        return (self.z_dim, frames, height // self.patch, width // self.patch)

    def _fold_time(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, 1 + k*tp, h, w] -> [B, tp*C, 1 + k, h, w]: frame 0 alone (repeated, as Wan's causal
        VAE encodes it alone), then groups of `time_patch` frames, each group's frames as channels."""
        tp = self.time_patch
        b, c, _, h, w = z.shape
        seq = torch.cat([z[:, :, :1].expand(-1, -1, tp, -1, -1), z[:, :, 1:]], dim=2)
        groups = seq.view(b, c, -1, tp, h, w).permute(0, 3, 1, 2, 4, 5)
        return groups.reshape(b, tp * c, -1, h, w)

    def _unfold_time(self, z: torch.Tensor) -> torch.Tensor:
        tp = self.time_patch
        b, _, n, h, w = z.shape
        seq = z.view(b, tp, -1, n, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, n * tp, h, w)
        return seq[:, :, tp - 1:]  # group 0 holds frame 0 `tp` times: keep one

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.channels)
        b, c, t, h, w = video.shape
        check_frames(t, h, w, self.time_patch, self.patch)
        x = video.float()
        if self.patch > 1:
            frames = x.transpose(1, 2).reshape(b * t, c, h, w)
            folded = F.pixel_unshuffle(frames, self.patch)
            x = folded.reshape(b, t, c * self.patch**2, h // self.patch, w // self.patch).transpose(1, 2)
        return self._fold_time(x) if self.time_patch > 1 else x.clone()

    forward = encode

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> float32 video in [-1, 1] (clamped, as the VAE decoder does)."""
        check_video(latents, self.z_dim, name="latents")
        z = latents.float()
        if self.time_patch > 1:
            z = self._unfold_time(z)
        b, _, t, h, w = z.shape
        if self.patch > 1:
            frames = z.transpose(1, 2).reshape(b * t, self.channels * self.patch**2, h, w)
            z = F.pixel_shuffle(frames, self.patch).reshape(
                b, t, self.channels, h * self.patch, w * self.patch
            )
            z = z.transpose(1, 2)
        return z.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return self.identity
