"""The heads' losses on valid pixels: motion (end-point error, L1 or MSE), depth on log metres
(scale-invariant, L1 or MSE), and the warp term (the predicted depth of one target frame, carried
onto the next by the true motion, against the next frame's true depth), all masked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldtune.data.formats.sim_physics_motion import warp_back


def upsample(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, T, h, w] -> [B, C, T, H, W] bilinear (values are already in output units)."""
    b, c, t, h, w = pred.shape
    if (h, w) == tuple(size):
        return pred
    frames = pred.transpose(1, 2).flatten(0, 1)
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False).view(b, t, c, *size).transpose(1, 2)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def motion_loss(pred: torch.Tensor, target: torch.Tensor, frame_valid: torch.Tensor, kind: str,
                balanced: bool = False) -> torch.Tensor:
    """pred / target [B, 2, T, H, W]; frame_valid [B, T]. `balanced`: the mean over moving pixels
    (over half a pixel) and the mean over still ones count alike, so that a few moving pixels are
    not outvoted by a still background (which pulls an L1-like loss to predicting no motion)."""
    mask = frame_valid[:, None, :, None, None]
    if kind == "epe":
        error = (pred - target).square().sum(1, keepdim=True).add(1e-9).sqrt()
    else:
        diff = pred - target
        error = diff.abs() if kind == "l1" else diff.square()
    if not balanced:
        return _masked_mean(error, mask)
    moving = moving_pixels(target)
    parts = [_masked_mean(error, mask & m) for m in (moving, ~moving) if bool((mask & m).any())]
    return torch.stack(parts).mean() if parts else error.sum() * 0


MOVING_PX = 0.5  # a pixel "moves" when its true motion is over half a pixel


def moving_pixels(target: torch.Tensor) -> torch.Tensor:
    """[B, 2, T, H, W] motion -> [B, 1, T, H, W] bool: the pixels whose true motion is over MOVING_PX."""
    return target.square().sum(1, keepdim=True) > MOVING_PX ** 2


def end_point_error(pred: torch.Tensor, target: torch.Tensor, frame_valid: torch.Tensor,
                    pixels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error over the valid frames (and, given, the `pixels` [B, 1, T, H, W] only)."""
    mask = frame_valid[:, None, :, None, None]
    if pixels is not None:
        mask = mask & pixels
    return _masked_mean((pred - target).square().sum(1, keepdim=True).sqrt(), mask)


def depth_loss(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, kind: str, lam: float = 0.85) -> torch.Tensor:
    """log_pred [B, 1, T, H, W] log metres; depth metres with valid [B, 1, T, H, W]."""
    d = torch.where(valid, log_pred - depth.clamp(min=1e-6).log(), torch.zeros_like(log_pred))
    if kind == "l1":
        return _masked_mean(d.abs(), valid)
    if kind == "mse":
        return _masked_mean(d.square(), valid)
    count = valid.flatten(1).sum(1).clamp(min=1)  # scale-invariant log error per clip (Eigen et al.)
    mean_sq, mean = d.square().flatten(1).sum(1) / count, d.flatten(1).sum(1) / count
    per_clip = (mean_sq - lam * mean.square()).clamp(min=0)
    has = valid.flatten(1).any(1)  # clips without a valid pixel (or not counted) do not dilute the mean
    return per_clip[has].mean() if bool(has.any()) else per_clip.sum() * 0


def warp_loss(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """|warp(pred log depth of frame k-1 by the true motion k-1 -> k) - true log depth of frame k|,
    every (clip, k) pair in one batched warp."""
    b, _, t, h, w = log_pred.shape
    if t < 2:
        return log_pred.new_zeros(())

    def pairs(x: torch.Tensor, frames: slice) -> torch.Tensor:  # [B, C, T, H, W] -> [B*(T-1), C, H, W]
        return x[:, :, frames].transpose(1, 2).flatten(0, 1)

    carried = warp_back(pairs(log_pred, slice(0, t - 1)), pairs(motion, slice(1, t)).to(log_pred.dtype))
    target = pairs(depth, slice(1, t)).clamp(min=1e-6).log()
    return _masked_mean((carried - target).abs(), pairs(valid, slice(1, t)))


def depth_metrics(log_pred: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """AbsRel and delta < 1.25 of exp(log_pred), and of each clip's median true depth (the baseline)."""
    pred = log_pred.exp()
    median = torch.stack([depth[b][valid[b]].median() for b in range(depth.shape[0])]).view(-1, 1, 1, 1, 1)
    out = {}
    for name, guess in (("", pred), ("median_", median.expand_as(depth))):
        ratio = torch.maximum(guess / depth.clamp(min=1e-6), depth / guess.clamp(min=1e-6))
        out[f"{name}abs_rel"] = float(_masked_mean((guess - depth).abs() / depth.clamp(min=1e-6), valid))
        out[f"{name}delta1"] = float(_masked_mean((ratio < 1.25).float(), valid))
    return out
