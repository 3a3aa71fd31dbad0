"""Fréchet Video Distance (Unterthiner et al. 2018) from a video feature network the user supplies.

FVD is the Fréchet distance between Gaussians fitted to the features of real and of generated
videos. The usual network is the I3D port distributed as TorchScript (`i3d_torchscript.pt`, called
with `rescale=False, resize=True, return_features=True` on videos in [-1, 1]); any TorchScript module
mapping `[N, 3, T, H, W]` in [-1, 1] to features `[N, D]` works. Nothing is downloaded.

    detector = VideoFeatures("i3d_torchscript.pt")
    fvd = frechet_distance(*gaussian(detector(real)), *gaussian(detector(fake)))
"""

from __future__ import annotations

from pathlib import Path

import torch

# Keyword arguments of the common I3D TorchScript port; plain feature networks are called without them.
I3D_KWARGS = {"rescale": False, "resize": True, "return_features": True}


class VideoFeatures:
    """A TorchScript video feature network, batched; features come back as float64 on the CPU."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", batch_size: int = 8) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: FVD feature network (TorchScript) not found")
        try:
            self.network = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:
            raise ValueError(f"{path}: not a TorchScript module ({str(err).splitlines()[0]})") from None
        self.path, self.device, self.batch_size = path, torch.device(device), batch_size
        self._kwargs: dict | None = None

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """`[N, 3, T, H, W]` in [-1, 1] -> `[N, D]` features."""
        out = [self._features(videos[i:i + self.batch_size].to(self.device)) for i in range(0, len(videos),
                                                                                           self.batch_size)]
        return torch.cat(out).double().cpu()

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        if self._kwargs is None:  # find out once whether it is the I3D port
            try:
                features = self.network(batch, **I3D_KWARGS)
                self._kwargs = I3D_KWARGS
                return features
            except RuntimeError:
                self._kwargs = {}
        features = self.network(batch, **self._kwargs)
        if features.ndim != 2 or features.shape[0] != batch.shape[0]:
            raise ValueError(f"{self.path}: expected features [N, D], got {tuple(features.shape)}")
        return features


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean `[D]` and covariance `[D, D]` (unbiased) of features `[N, D]`, in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FVD needs at least 2 videos' features [N, D], got {tuple(features.shape)}")
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """`|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`; the trace of the square root is the sum of the
    square roots of the eigenvalues of `S1 S2` (real and non-negative for covariances)."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    eigenvalues = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)
    distance = (mu1 - mu2).pow(2).sum() + sigma1.trace() + sigma2.trace() - 2 * eigenvalues.sqrt().sum()
    return float(distance.clamp(min=0))


def fvd(real: torch.Tensor, generated: torch.Tensor, network: VideoFeatures) -> float:
    """FVD between two sets of videos `[N, 3, T, H, W]` in [-1, 1]."""
    return frechet_distance(*gaussian(network(real)), *gaussian(network(generated)))
