"""Stable Video Diffusion's VAE (``diffusers.AutoencoderKLTemporalDecoder``) as a latent space.

It encodes frame by frame (``temporal_stride`` 1): 4 channels, 8x downsampling for the released
weights. Encoding follows upstream Ctrl-World's ``extract_latent.py`` (``latent_dist.sample() *
scaling_factor``; ``posterior="mode"`` takes the posterior mean instead); decoding divides by the
scaling factor and runs the temporal decoder, which needs ``num_frames``, on chunks of each clip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .common import FrozenModule, check_frames, check_video

PathLike = str | os.PathLike[str]

SVD_HUB_ID = "stabilityai/stable-video-diffusion-img2vid"


class SVDVaeLatents(FrozenModule):
    """SVD's VAE as a `LatentSpace`; latents are scaled by the VAE's scaling factor.

    ``posterior="sample"`` (upstream's choice) draws from the posterior with a generator seeded by
    ``seed`` on every ``encode`` call, so the same frames always give the same latents;
    ``posterior="mode"`` uses the posterior mean. Frames are encoded ``encode_chunk`` at a time and
    decoded ``decode_chunk`` at a time (each decode chunk is one clip for the temporal decoder).

    ``encoder_batch`` (default None: the whole chunk) runs the encoder on that many frames per call
    within a chunk; the posterior of the chunk is still drawn in one go, with the same noise. On a CPU
    small batches are much faster: the activations of 32 frames of 192x320 are 250 MB each, so every
    elementwise op and norm streams them from memory (tiny 8x VAE, 2 cores: 6.4 frames/s at 32 per
    call, 14.7 at 2). It is not the default because the CPU kernels depend on the batch size and
    memory layout: other batches can change latents in the last bit (measured: 1e-6), so a setting is
    part of ``identity`` and a converted folder never mixes two.
    """

    temporal_stride = 1

    def __init__(
        self,
        vae: Any,
        *,
        posterior: str = "sample",
        seed: int = 0,
        encode_chunk: int = 64,
        decode_chunk: int = 14,
        encoder_batch: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
        if encode_chunk < 1 or decode_chunk < 1 or (encoder_batch is not None and encoder_batch < 1):
            raise ValueError("encode_chunk, decode_chunk and encoder_batch must be >= 1")
        self.vae = vae
        self.posterior, self.seed = posterior, seed
        self.encode_chunk, self.decode_chunk, self.encoder_batch = encode_chunk, decode_chunk, encoder_batch
        config = vae.config
        self.z_dim = int(config.latent_channels)
        self.spatial_stride = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        name = source or config.get("_name_or_path") or "unnamed"
        blocks = "-".join(str(c) for c in config.block_out_channels)
        self.identity = (
            f"svd_vae({name}, blocks {blocks}, z{self.z_dim}, x{self.spatial_stride}, "
            f"scale {self.scaling_factor:g}, {posterior}, seed {seed}"
            + (f", encoder batch {encoder_batch})" if encoder_batch else ")")
        )
        self.freeze()

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        check_frames(num_frames, height, width, 1, self.spatial_stride)
        return (self.z_dim, num_frames, height // self.spatial_stride, width // self.spatial_stride)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> scaled latents [B, z, T, H/s, W/s] (float32, the VAE's device);
        the B*T frames are encoded in order, so one call draws one noise stream for all of them."""
        check_video(video, 3)
        b, _, t, h, w = video.shape
        check_frames(max(t, 1), h, w, 1, self.spatial_stride)
        frames = video.transpose(1, 2).reshape(b * t, 3, h, w)
        generator = torch.Generator().manual_seed(self.seed)
        out = [torch.zeros(0, self.z_dim, h // self.spatial_stride, w // self.spatial_stride, device=self.device)]
        for i in range(0, frames.shape[0], self.encode_chunk):
            batch = frames[i : i + self.encode_chunk].to(self.device, self.dtype)
            dist = self._posterior(batch)
            z = dist.sample(generator=generator) if self.posterior == "sample" else dist.mode()
            out.append(z.float().mul_(self.scaling_factor))
        z = torch.cat(out)
        return z.reshape(b, t, *z.shape[1:]).transpose(1, 2)

    forward = encode

    def _posterior(self, batch: torch.Tensor) -> Any:
        """The VAE's posterior of ``batch`` (a diffusers ``DiagonalGaussianDistribution``), the encoder
        run ``encoder_batch`` frames at a time and the moments joined into one distribution."""
        if not self.encoder_batch or batch.shape[0] <= self.encoder_batch:
            return self.vae.encode(batch).latent_dist
        dists = [self.vae.encode(part).latent_dist for part in batch.split(self.encoder_batch)]
        return type(dists[0])(torch.cat([d.parameters for d in dists]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, z, T, h, w] -> float32 video [B, 3, T, h*s, w*s] in [-1, 1]; each clip's frames are
        decoded ``decode_chunk`` at a time by the temporal decoder."""
        check_video(latents, self.z_dim, name="latents")
        b, _, t, h, w = latents.shape
        s = self.spatial_stride
        clips = []
        for clip in latents.transpose(1, 2):  # [T, z, h, w]
            out = [torch.zeros(0, 3, h * s, w * s, device=self.device)]
            for i in range(0, t, self.decode_chunk):
                z = clip[i : i + self.decode_chunk].to(self.device, self.dtype) / self.scaling_factor
                out.append(self.vae.decode(z, num_frames=z.shape[0]).sample.float().clamp(-1.0, 1.0))
            clips.append(torch.cat(out))
        return torch.stack(clips).transpose(1, 2)

    @classmethod
    def from_pretrained(
        cls,
        svd_dir: PathLike,
        *,
        allow_download: bool = False,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        **options: Any,
    ) -> SVDVaeLatents:
        """Load the VAE from a local SVD folder (``svd_dir/vae``, or ``svd_dir`` itself if it is the VAE).

        A hub id such as ``stabilityai/stable-video-diffusion-img2vid`` is only tried with
        ``allow_download=True``; otherwise a missing folder is an error naming the paths looked at.
        """
        from diffusers import AutoencoderKLTemporalDecoder

        root = Path(svd_dir)
        candidates = [root / "vae", root]
        for path in candidates:
            if (path / "config.json").is_file():
                try:
                    vae = AutoencoderKLTemporalDecoder.from_pretrained(str(path), torch_dtype=torch_dtype)
                except Exception as e:  # diffusers raises several types for a broken folder
                    raise OSError(f"{path}: cannot load the SVD VAE ({type(e).__name__}: {e})") from e
                return cls(vae.to(device), source=str(path), **options)
        if allow_download and not root.exists():
            vae = AutoencoderKLTemporalDecoder.from_pretrained(
                str(svd_dir), subfolder="vae", torch_dtype=torch_dtype
            )
            return cls(vae.to(device), source=str(svd_dir), **options)
        looked = " or ".join(str(p / "config.json") for p in candidates)
        hint = "" if allow_download else " (pass allow_download=True to fetch a hub id)"
        raise FileNotFoundError(f"{svd_dir}: no SVD VAE found: expected {looked}{hint}")

    def extra_repr(self) -> str:
        return self.identity


def tiny_svd_vae(
    *, seed: int = 0, latent_channels: int = 4, block_out_channels: tuple[int, ...] = (32, 32)
) -> Any:
    """A randomly initialised, CPU-fast ``AutoencoderKLTemporalDecoder`` for tests (downsample 2 by default).

    Channel counts must be multiples of 32 (the blocks' GroupNorm uses 32 groups).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        vae = AutoencoderKLTemporalDecoder(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            latent_channels=latent_channels,
        )
    return vae.eval()
