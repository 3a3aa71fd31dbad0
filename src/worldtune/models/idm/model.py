"""`IDM`: Vidar's masked inverse dynamics model (upstream `idm/idm/idm.py`, `IDM("mask", ...)`).

`IDM` holds the normalisation statistics and wraps `MaskedRegressor` (upstream's `Mask`) as
`self.model`, so the state-dict names are upstream's: `model.mask_model.*`, `model.resnet_model.*`,
`train_mean`, `train_std`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import IDMConfig
from .resnet import ResNetRegressor
from .unet import MaskUNet

MaskedOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def soft_mask(logits: torch.Tensor) -> torch.Tensor:
    """`(1 + tanh(logits)) / 2`, in [0, 1]: how much of each pixel the regressor may see."""
    return (1 + torch.tanh(logits)) / 2


def straight_through(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply by the hard mask (`mask >= 0.5`) in the forward pass, but let the gradient flow as if
    by the soft mask: `(hard - mask).detach() + mask` equals `hard` in value, and its derivative with
    respect to `mask` is 1, so the regression loss still trains the U-Net."""
    hard = (mask >= 0.5).to(mask.dtype)
    return images * ((hard - mask).detach() + mask)


class MaskedRegressor(nn.Module):
    """Upstream's `Mask`: a U-Net picks the pixels, a ResNet regresses the (normalised) action from
    the masked frame. Outputs are in normalised units; `IDM` converts them."""

    def __init__(self, cfg: IDMConfig) -> None:
        super().__init__()
        self.output_dim = cfg.output_dim
        self.mask_model = MaskUNet(cfg.in_channels, 1, cfg.unet_base_channels, cfg.unet_num_layers)
        self.resnet_model = ResNetRegressor(cfg.output_dim, cfg.in_channels, cfg.resnet_stem_channels,
                                            tuple(cfg.resnet_stage_channels), tuple(cfg.resnet_blocks))

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """The soft mask `[B, 1, H, W]`."""
        return soft_mask(self.mask_model(images))

    def forward(self, images: torch.Tensor, return_mask: bool = False) -> MaskedOutput:
        mask = self.mask(images)
        outputs = self.resnet_model(straight_through(images, mask))
        return (outputs, mask) if return_mask else outputs


class IDM(nn.Module):
    """Frame `[B, 3, H, W]` (upstream: the tiled multi-view frame at 518x518, ImageNet-normalised)
    -> action `[B, output_dim]` in joint units.

    Normalisation, made explicit (upstream applies it the same way but only implicitly):
    - `forward` returns actions in joint units: the regressor's output times `train_std` plus
      `train_mean` (upstream's `IDM.forward`), so inference needs nothing else;
    - `forward_normalized` returns the regressor's raw output, in normalised units; the training
      loss compares it with `normalize(actions)`, so every dimension weighs the same in the loss
      whatever its range (a gripper in mm beside joints in radians).
    The statistics are persistent buffers: they travel in the state dict with the weights. A fresh
    model holds mean 0 / std 1 (the identity) until `set_normalization` is given the training split's.
    """

    def __init__(self, cfg: IDMConfig | None = None) -> None:
        super().__init__()
        cfg = IDMConfig() if cfg is None else cfg
        cfg.validate()
        self.config = cfg
        self.model = MaskedRegressor(cfg)
        self.register_buffer("train_mean", torch.zeros(cfg.output_dim))
        self.register_buffer("train_std", torch.ones(cfg.output_dim))

    @classmethod
    def published(cls, output_dim: int = 14) -> IDM:
        """Vidar's released size (about 92M parameters); `output_dim` 14 (bimanual) or 9 (Franka)."""
        return cls(IDMConfig.published(output_dim))

    @classmethod
    def tiny(cls, output_dim: int = 14, **overrides) -> IDM:
        """A few-hundred-k-parameter model for CPU tests at 64x64."""
        return cls(IDMConfig.tiny(output_dim, **overrides))

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    # ------------------------------------------------------------------ normalisation

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the training split's per-dimension action mean / std (checked: shape, finite, std > 0)."""
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        for name, value in (("mean", mean), ("std", std)):
            if tuple(value.shape) != (self.output_dim,):
                raise ValueError(f"action {name} has shape {tuple(value.shape)}, the IDM has output_dim "
                                 f"{self.output_dim}")
            if not torch.isfinite(value).all():
                raise ValueError(f"action {name} is not finite: {value.tolist()}")
        if (std <= 0).any():
            # A constant dimension has std 0; the caller picks a floor (dividing by 0 gives inf).
            raise ValueError(f"action std must be > 0 in every dimension, got {std.tolist()}")
        with torch.no_grad():
            self.train_mean.copy_(mean)
            self.train_std.copy_(std)

    def normalize(self, actions: torch.Tensor) -> torch.Tensor:
        """Joint units -> normalised units (the loss target); upstream's `IDM.normalize`."""
        return (actions - self.train_mean) / self.train_std

    def denormalize(self, outputs: torch.Tensor) -> torch.Tensor:
        """Normalised units -> joint units (what `forward` applies)."""
        return outputs * self.train_std + self.train_mean

    # ------------------------------------------------------------------ forward

    def _check_frames(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"IDM expects frames [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}")

    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """The soft mask `U(x)` `[B, 1, H, W]` in [0, 1] (what Vidarc's embodiment-aware loss weighs by)."""
        self._check_frames(images)
        return self.model.mask(images)

    get_mask = mask  # the seed's name (`idm.get_mask(frames)` in its Vidarc pseudo-code)

    def forward_normalized(self, images: torch.Tensor, return_mask: bool = False) -> MaskedOutput:
        """Actions in normalised units (for the loss); with `return_mask`, `(actions, soft mask)`."""
        self._check_frames(images)
        return self.model(images, return_mask=return_mask)

    def forward(self, images: torch.Tensor, return_mask: bool = False, normalized: bool = False) -> MaskedOutput:
        """Actions in joint units (`normalized`: in normalised units, for the loss); with
        `return_mask`, `(actions, soft mask [B, 1, H, W])`. Training calls this rather than
        `forward_normalized`: FSDP gathers the root's parameters in `forward`'s hook only."""
        out = self.forward_normalized(images, return_mask=return_mask)
        if normalized:
            return out
        if return_mask:
            actions, mask = out
            return self.denormalize(actions), mask
        return self.denormalize(out)
