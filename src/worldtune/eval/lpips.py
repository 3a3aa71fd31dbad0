"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric")
with the AlexNet backbone, from weight files the user supplies.

The `lpips` package needs torchvision, which does not install beside every torch build, so the network
is defined here with torchvision's AlexNet parameter names (`features.0.weight`, ...): the user passes
torchvision's `alexnet-owt-7be5be79.pth` (the backbone) and the `lpips` package's `weights/v0.1/alex.pth`
(the per-layer linear weights `lin0.model.1.weight` ...). Nothing is downloaded.

    metric = LPIPS.from_files("alexnet-owt-7be5be79.pth", "alex.pth")
    distance = metric(prediction, target)   # [N] for frames [N, 3, H, W] in [-1, 1]
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Channel shift / scale the LPIPS linear layers were trained with (ImageNet statistics in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's five ReLU outputs the metric compares
_EPS = 1e-10
# AlexNet's strides and pools leave nothing of images much smaller than this; LPIPS was trained on
# 64 x 64 patches. Smaller images are upsampled (bilinear) until their short side is 64.
MIN_SIZE = 64


def alexnet_features() -> nn.Sequential:
    """torchvision's `AlexNet().features` (same layers, same indices, so its state dict loads)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


# The outputs compared: after features[1], [4], [7], [9], [11] (relu1 .. relu5).
_TAPS = (1, 4, 7, 9, 11)


class _Linear(nn.Module):
    """One LPIPS layer weighting: `model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))` as the
    `lpips` package names it (dropout is off at evaluation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPS(nn.Module):
    """Learned perceptual distance between images in [-1, 1]: 0 for identical images, larger is further."""

    def __init__(self) -> None:
        super().__init__()
        self.features = alexnet_features()
        for index, channels in enumerate(_CHANNELS):
            self.add_module(f"lin{index}", _Linear(channels))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, backbone: str | Path, linear: str | Path) -> LPIPS:
        """Torchvision AlexNet weights (whole model or `features.*` only) and the `lpips` linear weights."""
        metric = cls()
        state = _read(backbone)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not features:
            raise ValueError(f"{backbone}: no `features.*` weights (expected torchvision's AlexNet)")
        _load(metric.features, features, backbone)
        lin = _read(linear)
        _load(metric, {k: v for k, v in lin.items() if k.startswith("lin")}, linear, prefix="lin")
        return metric

    def layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five unit-normalised (over channels) feature maps of `images` [N, 3, H, W] in [-1, 1]."""
        x = (images - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS))
            if index == _TAPS[-1]:
                break
        return out

    @torch.no_grad()
    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`[N]` distances between frames `[N, 3, H, W]` in [-1, 1]."""
        if prediction.shape != target.shape or prediction.ndim != 4 or prediction.shape[1] != 3:
            raise ValueError(f"LPIPS compares [N, 3, H, W] images of one shape, got {tuple(prediction.shape)} "
                             f"and {tuple(target.shape)}")
        prediction, target = _at_least(prediction, MIN_SIZE), _at_least(target, MIN_SIZE)
        total = prediction.new_zeros(prediction.shape[0])
        pairs = zip(self.layers(prediction), self.layers(target), strict=True)
        for index, (a, b) in enumerate(pairs):
            weighted = getattr(self, f"lin{index}").model((a - b).pow(2))
            total = total + weighted.mean(dim=(1, 2, 3))
        return total


def _at_least(images: torch.Tensor, size: int) -> torch.Tensor:
    short = min(images.shape[-2:])
    if short >= size:
        return images
    scale = size / short
    out_hw = (round(images.shape[-2] * scale), round(images.shape[-1] * scale))
    return torch.nn.functional.interpolate(images, size=out_hw, mode="bilinear", align_corners=False)


def _read(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LPIPS weight file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return state


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, prefix: str = "") -> None:
    wanted = {k for k in module.state_dict() if k.startswith(prefix)}
    missing = sorted(wanted - set(state))
    if missing:
        raise ValueError(f"{path}: missing LPIPS weights, e.g. {missing[:3]}")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape that does not fit
        raise ValueError(f"{path}: weights do not fit LPIPS-AlexNet: {str(err).splitlines()[-1].strip()}") from None
