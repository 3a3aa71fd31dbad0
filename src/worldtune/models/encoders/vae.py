"""Frozen Wan video VAE (2.1: 16 channels, stride 4x8x8; 2.2: 48 channels, stride 4x16x16).

Wraps `diffusers.AutoencoderKLWan`. Diffusers returns raw latents and leaves the per-channel
normalisation to its pipelines; this wrapper applies it, so `encode` gives exactly what the Wan DiT
trains on and `decode` takes it back:

* encode: posterior mean (upstream `WanVAE_.encode` returns `mu`, never a sample), then
  `(z - latents_mean) / latents_std` per channel, in float32;
* decode: `z * latents_std + latents_mean`, then the decoder; pixels clamped to [-1, 1] (as upstream).

Original single-file checkpoints: `Wan2.1_VAE.pth` (and its ComfyUI `.safetensors` repack) loads
offline through diffusers' own key converter with the published Wan2.1 config (the
`AutoencoderKLWan` defaults). `Wan2.2_VAE.pth` cannot: diffusers' single-file mapping covers the
Wan2.1 layout only and its Wan2.2 converter script downloads from the hub, so a Wan2.2 `.pth` raises
`NotImplementedError` saying what to use instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan

from .common import (
    CHECKPOINT_SUFFIXES,
    EncoderLoadError,
    FrozenModule,
    PathLike,
    batch_chunks,
    check_frames,
    check_video,
    empty_weights,
    find_component,
    find_file,
    load_into,
    missing_path_error,
    read_state_dict,
)

# File names in the original Wan release folders (`wan/configs/*.py: vae_checkpoint`).
ORIGINAL_VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")

Size = int | tuple[int, int]


def _pair(value: Size) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class WanVAE(FrozenModule):
    """`encode(video [B,3,T,H,W] in [-1,1]) -> normalised latents [B,z,T',H',W']` and back.

    Options (changeable later with `configure`):
      tiled: encode/decode in overlapping spatial tiles (diffusers' tiling; saves memory on large
        frames, differs from the untiled result near tile seams);
      tile_size / tile_stride: tile side and step in pixels, (height, width) or one int;
      batch_chunk: videos per VAE call (the VAE's cache works per call, so chunking bounds memory).
    """

    def __init__(
        self,
        vae: AutoencoderKLWan,
        *,
        tiled: bool = False,
        tile_size: Size = 256,
        tile_stride: Size = 192,
        batch_chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.vae = vae
        cfg = vae.config
        self.z_dim = int(cfg.z_dim)
        # Strides from the architecture itself: older config.json files lack `scale_factor_*`.
        self.temporal_stride = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
        self.spatial_stride = 2 ** (len(cfg.dim_mult) - 1) * int(cfg.patch_size or 1)
        # Kept as plain float32 tensors, not buffers, so `.to(dtype=bf16)` cannot round them.
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if self._mean.shape[1] != self.z_dim or self._std.shape[1] != self.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need {self.z_dim} values, got "
                f"{self._mean.shape[1]}/{self._std.shape[1]}"
            )
        self.tiled = False
        self.tile_size = self.tile_stride = (0, 0)
        self.batch_chunk: int | None = None
        self.configure(tiled=tiled, tile_size=tile_size, tile_stride=tile_stride, batch_chunk=batch_chunk)
        self.freeze()

    # ------------------------------------------------------------------ options

    def configure(
        self,
        *,
        tiled: bool | None = None,
        tile_size: Size | None = None,
        tile_stride: Size | None = None,
        batch_chunk: int | None = None,
    ) -> WanVAE:
        size = _pair(tile_size) if tile_size is not None else self.tile_size
        stride = _pair(tile_stride) if tile_stride is not None else self.tile_stride
        for name, value in (("tile_size", size), ("tile_stride", stride)):
            if any(v <= 0 or v % self.spatial_stride for v in value):
                raise ValueError(f"{name} must be positive multiples of {self.spatial_stride}, got {value}")
        if any(st > sz for st, sz in zip(stride, size, strict=True)):
            raise ValueError(f"tile_stride {stride} must not exceed tile_size {size}")
        if batch_chunk is not None and batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1, got {batch_chunk}")
        self.tile_size, self.tile_stride = size, stride
        if tiled is not None:
            self.tiled = bool(tiled)
        if batch_chunk is not None:
            self.batch_chunk = batch_chunk
        return self

    @property
    def identity(self) -> str:
        """The name and settings that decide the latents (tiling changes them near seams)."""
        name = self.vae.config.get("_name_or_path") or "unnamed"
        tiles = f", tiles {self.tile_size} step {self.tile_stride}" if self.tiled else ""
        return f"wan_vae({name}, z{self.z_dim}, x{self.spatial_stride}, t{self.temporal_stride}{tiles})"

    def _sync_tiling(self) -> None:
        # Diffusers keeps tiling as mutable model state; set it per call so options stay ours.
        vae = self.vae
        vae.use_tiling = self.tiled
        vae.use_slicing = False
        vae.tile_sample_min_height, vae.tile_sample_min_width = self.tile_size
        vae.tile_sample_stride_height, vae.tile_sample_stride_width = self.tile_stride

    # ------------------------------------------------------------------ shapes

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        check_frames(num_frames, height, width, self.temporal_stride, self.spatial_stride)
        t = (num_frames - 1) // self.temporal_stride + 1
        return (self.z_dim, t, height // self.spatial_stride, width // self.spatial_stride)

    # ------------------------------------------------------------------ coding

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean.to(device), self._std.to(device)

    @torch.no_grad()
    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """The unnormalised posterior mean, as `AutoencoderKLWan.encode(...).latent_dist.mode()`."""
        check_video(video, 3)
        _, _, t, h, w = video.shape
        check_frames(t, h, w, self.temporal_stride, self.spatial_stride)
        self._sync_tiling()
        param = next(self.vae.parameters())
        outs = []
        for chunk in batch_chunks(video, self.batch_chunk):
            chunk = chunk.to(device=param.device, dtype=param.dtype)
            outs.append(self.vae.encode(chunk).latent_dist.mode().float())
        return torch.cat(outs)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        z = self.encode_raw(video)
        mean, std = self._stats(z.device)
        return (z - mean) / std

    forward = encode

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> float32 video [B,3,T,H,W] in [-1, 1]."""
        check_video(latents, self.z_dim, name="latents")
        self._sync_tiling()
        param = next(self.vae.parameters())
        mean, std = self._stats(param.device)
        outs = []
        for chunk in batch_chunks(latents, self.batch_chunk):
            z = chunk.to(device=param.device, dtype=torch.float32) * std + mean
            outs.append(self.vae.decode(z.to(param.dtype)).sample.float().clamp_(-1.0, 1.0))
        return torch.cat(outs)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        subfolder: str = "vae",
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        config: Mapping[str, Any] | PathLike | None = None,
        allow_download: bool = False,
        **options: Any,
    ) -> WanVAE:
        """Load from a diffusers folder (`<root>/vae/` or a folder holding `config.json`), an
        original Wan folder or file (`Wan2.1_VAE.pth`), or, with `allow_download`, a hub id.

        `config` (dict or folder with `config.json`) overrides the architecture assumed for a
        single-file checkpoint; by default the published Wan2.1 one.
        """
        root = Path(path)
        if root.is_file():
            vae = load_original_vae(root, config)
        elif root.is_dir():
            folder = find_component(root, subfolder)
            original = find_file(root, ORIGINAL_VAE_FILES)
            if folder is not None:
                vae = _load_diffusers(folder, dtype)
            elif original is not None:
                vae = load_original_vae(original, config)
            else:
                raise missing_path_error(
                    root, f"{subfolder}/config.json, config.json or one of {ORIGINAL_VAE_FILES}"
                )
        elif allow_download:
            vae = _load_diffusers(str(path), dtype, subfolder=subfolder, local=False)
        else:
            raise missing_path_error(path, "a diffusers VAE folder or a Wan VAE checkpoint file")
        vae = vae.to(device=device, dtype=dtype)
        return cls(vae, **options)


def _load_diffusers(
    where: PathLike, dtype: torch.dtype, subfolder: str | None = None, local: bool = True
) -> AutoencoderKLWan:
    try:
        return AutoencoderKLWan.from_pretrained(
            str(where), subfolder=subfolder, torch_dtype=dtype, local_files_only=local
        )
    except Exception as exc:  # noqa: BLE001 - re-raised naming the path
        raise EncoderLoadError(f"{where}: cannot load AutoencoderKLWan: {exc}") from exc


def _config_dict(config: Mapping[str, Any] | PathLike | None) -> dict[str, Any]:
    if config is None:
        return {}  # the AutoencoderKLWan defaults are the published Wan2.1 VAE
    if isinstance(config, Mapping):
        return dict(config)
    folder = Path(config)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{config}: no config.json for the VAE")
    return {k: v for k, v in AutoencoderKLWan.load_config(str(folder)).items() if not k.startswith("_")}


def load_original_vae(path: PathLike, config: Mapping[str, Any] | PathLike | None = None) -> AutoencoderKLWan:
    """An `AutoencoderKLWan` from a single original-format Wan2.1 VAE file (offline)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    path = Path(path)
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise EncoderLoadError(f"{path}: not a checkpoint file (expected one of {CHECKPOINT_SUFFIXES})")
    state = read_state_dict(path)
    head = state.get("conv1.weight", state.get("quant_conv.weight"))
    if head is None:
        raise EncoderLoadError(f"{path}: not a Wan VAE checkpoint (no conv1.weight / quant_conv.weight)")
    z_dim = head.shape[0] // 2
    cfg = _config_dict(config)
    if z_dim == 48 and "conv1.weight" in state:
        raise NotImplementedError(
            f"{path}: original Wan2.2 VAE checkpoints cannot be converted offline (diffusers' "
            "single-file key mapping covers the Wan2.1 layout only). Use the `vae/` folder of "
            "Wan-AI/Wan2.2-TI2V-5B-Diffusers, or convert this file once with diffusers' "
            "scripts/convert_wan_to_diffusers.py (--model_type Wan2.2-TI2V-5B) and pass the output folder."
        )
    if int(cfg.get("z_dim", 16)) != z_dim:
        raise EncoderLoadError(f"{path}: checkpoint has z_dim {z_dim}, config says {cfg.get('z_dim', 16)}")
    with empty_weights():
        vae = AutoencoderKLWan(**cfg)
    load_into(vae, convert_wan_vae_to_diffusers(state), path)
    return vae.eval()
