"""3D rotary position embedding of the Wan DiT.

The head dimension is split into frequency bands for time, height and width as upstream does
(`d - 4*(d//6)`, `2*(d//6)`, `2*(d//6)` channels), with tables computed in float64 and applied in
float32. `frame_offset` shifts the time positions (used by the causal model, whose blocks start
at later frames).
"""

from __future__ import annotations

import torch

MAX_POSITIONS = 1024


def _band(num_positions: int, channels: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles [num_positions, channels/2] in float64, on the CPU whatever the default device: a
    model built under `torch.device("meta")` must still get real tables (they are in no checkpoint)."""
    exponents = torch.arange(0, channels, 2, dtype=torch.float64, device="cpu") / channels
    inv = 1.0 / torch.pow(theta, exponents)
    return torch.outer(torch.arange(num_positions, dtype=torch.float64, device="cpu"), inv)


class Rope3D:
    """Rotary tables for a head dimension, cached per (grid, device). Not a module: never cast,
    never moved to meta; `cos_sin` copies them to the device of the tokens."""

    def __init__(self, head_dim: int) -> None:
        self.head_dim = head_dim
        w = h = 2 * (head_dim // 6)
        t = head_dim - h - w
        self.bands = (_band(MAX_POSITIONS, t), _band(MAX_POSITIONS, h), _band(MAX_POSITIONS, w))
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def angles(self, frames: int, height: int, width: int, frame_offset: int = 0) -> torch.Tensor:
        """Angles [F*H*W, head_dim/2] in the token order (frame, row, column)."""
        if frame_offset + frames > MAX_POSITIONS or height > MAX_POSITIONS or width > MAX_POSITIONS:
            raise ValueError(f"grid {frames}+{frame_offset}x{height}x{width} exceeds {MAX_POSITIONS} positions")
        bt, bh, bw = self.bands
        ft = bt[frame_offset:frame_offset + frames].view(frames, 1, 1, -1).expand(frames, height, width, -1)
        fh = bh[:height].view(1, height, 1, -1).expand(frames, height, width, -1)
        fw = bw[:width].view(1, 1, width, -1).expand(frames, height, width, -1)
        return torch.cat([ft, fh, fw], dim=-1).reshape(frames * height * width, -1)

    def frame_angles(self, positions: list[int], height: int, width: int) -> torch.Tensor:
        """Angles for frames at arbitrary time positions (a causal model's cache after eviction keeps
        its sink frames at their first positions): `[len(positions)*H*W, head_dim/2]`."""
        parts = [self.angles(1, height, width, frame_offset=p) for p in positions]
        return torch.cat(parts) if parts else self.angles(0, height, width)

    def cos_sin_frames(self, positions: list[int], height: int, width: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`cos_sin` for frames at `positions` (cached like it)."""
        key = ("frames", tuple(positions), height, width, str(device))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            angles = self.frame_angles(list(positions), height, width)
            self._cache[key] = (torch.cos(angles).float().unsqueeze(1).to(device),
                                torch.sin(angles).float().unsqueeze(1).to(device))
        return self._cache[key]

    def cos_sin(self, grid: tuple[int, int, int], device: torch.device,
                frame_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (cos, sin), each [L, 1, head_dim/2] for broadcasting over heads."""
        key = (*grid, frame_offset, str(device))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            angles = self.angles(*grid, frame_offset=frame_offset)
            self._cache[key] = (torch.cos(angles).float().unsqueeze(1).to(device),
                                torch.sin(angles).float().unsqueeze(1).to(device))
        return self._cache[key]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, heads, head_dim] (computed in float32, returned in x's dtype)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def rope_1d(positions: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (cos, sin), each [positions, 1, head_dim/2]: rotary tables over one axis (a temporal
    attention's frames), computed when needed, never stored in a module (nothing to cast or save)."""
    angles = _band(positions, head_dim)
    return torch.cos(angles).float().unsqueeze(1).to(device), torch.sin(angles).float().unsqueeze(1).to(device)
