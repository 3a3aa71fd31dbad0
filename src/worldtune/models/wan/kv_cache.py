"""The causal Wan DiT's key / value cache: one fixed-size buffer per transformer block.

Slots hold whole latent frames, in the order they were written; each remembers its absolute frame
index (its RoPE position, baked into the cached keys). Writing frames that follow the last one
appends them; writing the last frames again (the same positions) overwrites them in place, which is
how a block's noisy keys from its denoising steps are replaced by its clean ones (the re-run at
t = 0). When the buffer is full, the oldest frames after the first `sink_size` are evicted: the
rest move left inside the same buffer (no reallocation), the sink frames stay with their original
positions, as in Self-Forcing's rolling cache.

Keys are stored after `norm_k` and RoPE, values as projected (Vidarc's official code does the same).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, frame_tokens: int, num_heads: int, head_dim: int,
                 capacity_frames: int, sink_size: int = 0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        if capacity_frames < 1:
            raise ValueError(f"kv_cache_length must be at least 1 frame, got {capacity_frames}")
        if not 0 <= sink_size < capacity_frames:
            raise ValueError(f"kv_cache_length ({capacity_frames}) must be at least sink_size + 1 "
                             f"(sink_size {sink_size})")
        self.frame_tokens, self.capacity, self.sink_size = frame_tokens, capacity_frames, sink_size
        shape = (num_layers, batch, capacity_frames * frame_tokens, num_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.positions: list[int] = []  # absolute frame index of each filled slot
        self.evicted = 0  # frames evicted so far

    @property
    def num_frames(self) -> int:
        return len(self.positions)

    @property
    def end_frame(self) -> int:
        """The absolute index of the frame after the last one written (0 when empty)."""
        return self.positions[-1] + 1 if self.positions else 0

    def place(self, positions: list[int]) -> int:
        """Make room for frames at `positions` (consecutive) and return their first slot. They must
        either follow the last cached frame or be exactly the last cached frames (a re-run)."""
        n = len(positions)
        if positions != list(range(positions[0], positions[0] + n)):
            raise ValueError(f"frames written to the cache must be consecutive, got {positions}")
        if self.positions[-n:] == positions:
            return self.num_frames - n
        if positions[0] != self.end_frame:
            raise ValueError(f"frames {positions[0]}..{positions[-1]} neither follow the cache (next frame "
                             f"{self.end_frame}) nor repeat its last {n} frames")
        overflow = self.num_frames + n - self.capacity
        if overflow > max(self.num_frames - self.sink_size, 0):
            raise ValueError(f"{n} new frames do not fit a cache of {self.capacity} frames holding "
                             f"{self.num_frames} ({self.sink_size} of them sink frames)")
        if overflow > 0:
            self._evict(overflow)
        self.positions.extend(positions)
        return self.num_frames - n

    def _evict(self, frames: int) -> None:
        """Drop the `frames` oldest frames after the sink; the later ones move left in the buffer."""
        t, keep_from = self.frame_tokens, self.sink_size + frames
        start, end = self.sink_size * t, self.num_frames * t
        moved = end - keep_from * t
        for buf in (self.k, self.v):
            buf[:, :, start : start + moved] = buf[:, :, keep_from * t : end].clone()
        self.positions = self.positions[: self.sink_size] + self.positions[keep_from:]
        self.evicted += frames

    def write(self, layer: int, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one layer's keys / values `[B, n*frame_tokens, H, D]` from frame slot `slot`."""
        start = slot * self.frame_tokens
        self.k[layer, :, start : start + k.shape[1]] = k.detach().to(self.k.dtype)
        self.v[layer, :, start : start + v.shape[1]] = v.detach().to(self.v.dtype)

    def keys(self, layer: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the first `frames` slots' keys and values of one layer (no copy)."""
        end = frames * self.frame_tokens
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def drop_last(self, frames: int) -> None:
        """Forget the last `frames` frames (the closed loop replaces predicted frames by observed ones)."""
        if not 0 <= frames <= self.num_frames - self.sink_size * (self.evicted > 0):
            raise ValueError(f"cannot drop {frames} of the cache's {self.num_frames} frames")
        self.positions = self.positions[: self.num_frames - frames]

    def reset(self) -> None:
        self.positions, self.evicted = [], 0
