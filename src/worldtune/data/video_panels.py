"""Labelled comparison videos: one row per camera, columns truth | prediction | |difference|.

Tiny frames are unreadable in a player, so every pixel is repeated `upscale` times each way; the
difference column shows `|prediction - truth|` amplified (`diff_gain`, white = large error), so a
still background that drifts or hazes is visible at once. A caption strip under the panel says which
chunk and frame is shown, and the first frame of every chunk gets a coloured border (where the model
starts a new prediction from its own last frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from worldtune.data.video import from_model_range

COLUMNS = ("truth", "prediction", "|difference|")
_LABEL_COLOR = (235, 235, 235)
_BACKGROUND = (24, 24, 28)
_CHUNK_COLOR = np.array([255, 64, 64], dtype=np.uint8)


def _frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    return from_model_range(video.detach().float().cpu())


def _difference(prediction: torch.Tensor, truth: torch.Tensor, gain: float) -> np.ndarray:
    """|prediction - truth| averaged over colour, times `gain`, as grey uint8 [T, H, W, 3]."""
    diff = (prediction.float() - truth.float()).abs().mean(0) / 2 * gain  # [T, H, W] in [0, gain]
    grey = (diff.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return np.repeat(grey[..., None], 3, axis=-1)


def _upscaled(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str) -> None:
    draw.text(xy, text, fill=_LABEL_COLOR, font=ImageFont.load_default())


def comparison_panel(truth: Sequence[torch.Tensor], prediction: Sequence[torch.Tensor],
                     view_names: Sequence[str], chunk_starts: Sequence[int] = (), *, upscale: int = 1,
                     diff_gain: float = 4.0) -> np.ndarray:
    """A labelled video uint8 `[T, H', W', 3]` from per-view videos `[3, T, H, W]` in [-1, 1].

    `chunk_starts` are the frame indices where a new chunk begins (bordered, and counted in the
    caption); `upscale` repeats pixels; `diff_gain` amplifies the difference column.
    """
    if not (len(truth) == len(prediction) == len(view_names)) or not truth:
        raise ValueError("comparison_panel needs one truth, one prediction and one name per view")
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    rows = []
    for t_video, p_video in zip(truth, prediction, strict=True):
        if t_video.shape != p_video.shape:
            raise ValueError(f"truth {tuple(t_video.shape)} and prediction {tuple(p_video.shape)} differ")
        cells = [_frames(t_video), _frames(p_video), _difference(p_video, t_video, diff_gain)]
        rows.append([_upscaled(c, upscale) for c in cells])
    frames, height, width = rows[0][0].shape[:3]
    label_w, header_h, caption_h, gap = 92, 14, 14, 2
    panel_h = header_h + len(rows) * (height + gap) + caption_h
    panel_w = label_w + len(COLUMNS) * (width + gap)
    starts = sorted(set(chunk_starts))
    out = np.empty((frames, panel_h, panel_w, 3), dtype=np.uint8)
    for t in range(frames):
        image = Image.new("RGB", (panel_w, panel_h), _BACKGROUND)
        draw = ImageDraw.Draw(image)
        for c, name in enumerate(COLUMNS):
            _text(draw, (label_w + c * (width + gap) + 2, 1), name)
        for r, (name, cells) in enumerate(zip(view_names, rows, strict=True)):
            top = header_h + r * (height + gap)
            _text(draw, (2, top + height // 2 - 5), str(name)[:14])
            for c, cell in enumerate(cells):
                image.paste(Image.fromarray(cell[t]), (label_w + c * (width + gap), top))
        chunk = sum(1 for s in starts if s <= t)
        caption = f"frame {t + 1}/{frames}" + (f"  chunk {chunk}/{len(starts)}" if starts else "")
        _text(draw, (2, panel_h - caption_h + 1), caption)
        out[t] = np.asarray(image)
        if t in starts:  # a new chunk: the model starts again from its own last frame
            out[t, header_h - 2 : panel_h - caption_h, label_w - 2 : label_w] = _CHUNK_COLOR
            out[t, header_h - 2 : header_h, label_w:] = _CHUNK_COLOR
    return out
