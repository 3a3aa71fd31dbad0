"""The seed's validation metrics, defined (the seed names them; the original never computed them):

- `video_quality/psnr`, `video_quality/ssim`: the generated video against the target, all pixels.
- `motion_accuracy/psnr`: PSNR inside the hands mask only, where the hands must be generated (the
  rest of the frame is given by VACE's control and says little about the demonstration).
- `task_alignment/psnr_gain`: `motion_accuracy` with the episode's own trajectories minus the same
  with another episode's (same noise, same prompt and image): positive when the model follows the
  hand and object trajectories, about zero when it ignores them.

Videos are [B, 3, T, H, W] in [-1, 1]; masks [B, 1, T, H, W] in [0, 1].
"""

from __future__ import annotations

import torch

from worldtune.eval.metrics import psnr, ssim


def frames(video: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B*T, C, H, W]."""
    return video.transpose(1, 2).flatten(0, 1)


def masked_psnr(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per video PSNR (dB, pixel range 2) over the pixels where mask > 0.5 (every pixel when the
    mask is empty)."""
    inside = (mask > 0.5).expand_as(prediction).float()
    empty = inside.flatten(1).sum(1) == 0
    inside[empty] = 1.0
    mse = (((prediction - target) ** 2) * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
    return 10 * torch.log10(4.0 / mse.clamp(min=1e-10))


def sample_metrics(video: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   swapped: torch.Tensor | None = None) -> dict[str, float]:
    video, target, mask = video.float().cpu(), target.float().cpu(), mask.float().cpu()
    own = masked_psnr(video, target, mask)
    out = {"video_quality/psnr": psnr(frames(video), frames(target)),
           "video_quality/ssim": ssim(frames(video), frames(target)),
           "motion_accuracy/psnr": float(own.mean())}
    if swapped is not None:
        out["task_alignment/psnr_gain"] = float((own - masked_psnr(swapped.float().cpu(), target, mask)).mean())
    return out
