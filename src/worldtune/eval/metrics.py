"""Image and video metrics on frames in [-1, 1]: PSNR and SSIM, overall and per stacked view."""

from __future__ import annotations

from collections.abc import Callable

import torch


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR in dB over frames of videos in [-1, 1] (pixel range 2)."""
    mse = ((prediction - target) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def ssim(prediction: torch.Tensor, target: torch.Tensor, window: int = 7) -> float:
    """Mean SSIM over frames [T, 3, H, W] in [-1, 1], Gaussian window (sigma 1.5), per channel."""
    x, y = (prediction + 1) / 2, (target + 1) / 2
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(z, kernel, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())


def split_views(video: torch.Tensor, views: int) -> list[torch.Tensor]:
    """A decoded video [3, T, V*H, W] (views stacked along height) -> V videos [3, T, H, W]."""
    return list(video.chunk(views, dim=2))


def view_metrics(prediction: torch.Tensor, target: torch.Tensor, views: int,
                 lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[dict[str, float]]:
    """PSNR / SSIM (and, given an LPIPS network, the mean LPIPS over frames) per view of decoded videos
    [3, T, V*H, W] (views stacked along height)."""
    rows = []
    for pred_view, true_view in zip(split_views(prediction, views), split_views(target, views), strict=True):
        p, t = pred_view.permute(1, 0, 2, 3), true_view.permute(1, 0, 2, 3)
        row = {"psnr": psnr(p, t), "ssim": ssim(p, t)}
        if lpips is not None:
            row["lpips"] = float(lpips(p, t).mean())
        rows.append(row)
    return rows
