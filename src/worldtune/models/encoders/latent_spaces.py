"""Per-frame latent spaces shared by the Ctrl-World data converter and world model.

A latent space turns frames into ``[T, C, h, w]`` latents (already scaled for the model) and back:

- :class:`SVDVaeLatents` wraps SVD's VAE (``diffusers.AutoencoderKLTemporalDecoder``): 4 channels,
  8x downsampling for the released weights. Encoding follows upstream Ctrl-World's
  ``extract_latent.py`` (``latent_dist.sample() * scaling_factor``; ``posterior="mode"`` takes the
  posterior mean instead); decoding divides by the scaling factor and runs the temporal decoder,
  which needs ``num_frames``, in chunks.
- :class:`SpaceToDepthLatents` folds each ``factor x factor`` pixel block into channels
  (``3 * factor**2`` channels): lossless, so ``decode(encode(x)) == x`` exactly, and cheap enough for
  CPU demos and tests.

``encode`` takes uint8 frames ``[T, H, W, 3]`` (numpy or torch) or float frames ``[T, 3, H, W]`` in
``[-1, 1]``; ``decode`` returns float32 ``[T, 3, H, W]`` in ``[-1, 1]`` on the CPU. ``identity`` is a
readable string naming the latent space and its settings, so a converted dataset can record which
latent space produced it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

PathLike = str | os.PathLike[str]

SVD_HUB_ID = "stabilityai/stable-video-diffusion-img2vid"


@runtime_checkable
class LatentSpace(Protocol):
    """What the converter and the world model need from a latent space."""

    channels: int  # C of the latents
    downsample: int  # spatial factor: latents are (H / downsample) x (W / downsample)
    identity: str  # readable name + settings; equal identities produce the same latents

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: str | torch.device) -> LatentSpace: ...


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


def _check_divisible(h: int, w: int, factor: int, what: str) -> None:
    if h % factor or w % factor:
        raise ValueError(f"{what}: frame size {h}x{w} must be a multiple of the downsampling factor {factor}")


def _check_latents(latents: torch.Tensor, channels: int) -> None:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != channels:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be [T, {channels}, h, w], got {shape}")


# --------------------------------------------------------------------------------- space to depth


class SpaceToDepthLatents:
    """Lossless pixel latents: ``pixel_unshuffle`` of the frame in [-1, 1] (``3 * factor**2`` channels)."""

    def __init__(self, factor: int = 4) -> None:
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = factor
        self.channels = 3 * factor * factor
        self.downsample = factor
        self.identity = f"space_to_depth(factor={factor})"

    def to(self, device: str | torch.device) -> SpaceToDepthLatents:
        return self  # nothing to move: the fold is done on the frames' device

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = frames_to_model_range(frames).float()
        _check_divisible(x.shape[-2], x.shape[-1], self.factor, self.identity)
        return F.pixel_unshuffle(x, self.factor).cpu() if self.factor > 1 else x.clone().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.channels)
        x = F.pixel_shuffle(latents.float(), self.factor) if self.factor > 1 else latents.float()
        return x.clamp(-1.0, 1.0).cpu()

    def __repr__(self) -> str:
        return f"SpaceToDepthLatents(factor={self.factor})"


# ---------------------------------------------------------------------------------------- SVD VAE


class SVDVaeLatents:
    """SVD's VAE (``AutoencoderKLTemporalDecoder``) as a latent space; latents are scaled.

    ``posterior="sample"`` (upstream's choice) draws from the posterior with a generator seeded by
    ``seed`` on every ``encode`` call, so the same frames always give the same latents;
    ``posterior="mode"`` uses the posterior mean. Frames are encoded ``encode_chunk`` at a time and
    decoded ``decode_chunk`` at a time (each decode chunk is one clip for the temporal decoder).

    ``encoder_batch`` (default None: the whole chunk, as before) runs the encoder on that many frames
    per call within a chunk; the posterior of the chunk is still drawn in one go, with the same noise.
    On a CPU small batches are much faster: the activations of 32 frames of 192x320 are 250 MB each,
    so every elementwise op and norm streams them from memory (tiny 8x VAE, 2 cores: 6.4 frames/s at
    32 per call, 14.7 at 2). It is not the default because the CPU kernels depend on the batch size
    and memory layout: other batches can change latents in the last bit (measured: 1e-6), so a
    setting is part of ``identity`` and a converted folder never mixes two.
    """

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
        if posterior not in ("sample", "mode"):
            raise ValueError(f"posterior must be 'sample' or 'mode', got {posterior!r}")
        if encode_chunk < 1 or decode_chunk < 1 or (encoder_batch is not None and encoder_batch < 1):
            raise ValueError("encode_chunk, decode_chunk and encoder_batch must be >= 1")
        self.encoder_batch = encoder_batch
        self.vae = vae.eval().requires_grad_(False)
        self.posterior = posterior
        self.seed = seed
        self.encode_chunk = encode_chunk
        self.decode_chunk = decode_chunk
        config = vae.config
        self.channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.scaling_factor = float(config.scaling_factor)
        name = source or config.get("_name_or_path") or "unnamed"
        blocks = "-".join(str(c) for c in config.block_out_channels)
        self.identity = (
            f"svd_vae({name}, blocks {blocks}, z{self.channels}, x{self.downsample}, "
            f"scale {self.scaling_factor:g}, {posterior}, seed {seed}"
            + (f", encoder batch {encoder_batch})" if encoder_batch else ")")
        )

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SVDVaeLatents:
        self.vae.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = frames_to_model_range(frames)
        _check_divisible(x.shape[-2], x.shape[-1], self.downsample, self.identity)
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for i in range(0, x.shape[0], self.encode_chunk):
            batch = x[i : i + self.encode_chunk].to(self.device, self.dtype)
            dist = self._posterior(batch)
            z = dist.sample(generator=generator) if self.posterior == "sample" else dist.mode()
            out.append(z.float().mul_(self.scaling_factor).cpu())
        if not out:
            h, w = x.shape[-2] // self.downsample, x.shape[-1] // self.downsample
            return torch.zeros(0, self.channels, h, w)
        return torch.cat(out)

    def _posterior(self, batch: torch.Tensor) -> Any:
        """The VAE's posterior of ``batch`` (a diffusers ``DiagonalGaussianDistribution``), the encoder
        run ``encoder_batch`` frames at a time and the moments joined into one distribution."""
        if not self.encoder_batch or batch.shape[0] <= self.encoder_batch:
            return self.vae.encode(batch).latent_dist
        dists = [self.vae.encode(part).latent_dist for part in batch.split(self.encoder_batch)]
        return type(dists[0])(torch.cat([d.parameters for d in dists]))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        _check_latents(latents, self.channels)
        out = []
        for i in range(0, latents.shape[0], self.decode_chunk):
            z = latents[i : i + self.decode_chunk].to(self.device, self.dtype) / self.scaling_factor
            out.append(self.vae.decode(z, num_frames=z.shape[0]).sample.float().clamp(-1.0, 1.0).cpu())
        if not out:
            h, w = latents.shape[-2] * self.downsample, latents.shape[-1] * self.downsample
            return torch.zeros(0, 3, h, w)
        return torch.cat(out)

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

    def __repr__(self) -> str:
        return f"SVDVaeLatents({self.identity})"


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


def build_latent_space(
    kind: str, *, svd_path: PathLike | None = None, factor: int = 4, **options: Any
) -> LatentSpace:
    """``"svd"`` (needs ``svd_path``) or ``"space_to_depth"``; for CLIs and configs."""
    if kind == "svd":
        if svd_path is None:
            raise ValueError("latent space 'svd' needs the SVD folder (svd_path / --vae_path)")
        return SVDVaeLatents.from_pretrained(svd_path, **options)
    if kind in ("space_to_depth", "pixels"):
        return SpaceToDepthLatents(factor)
    raise ValueError(f"unknown latent space {kind!r}: expected 'svd' or 'space_to_depth'")
