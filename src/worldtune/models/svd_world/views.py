"""Multi-view images as one: views stacked along height (view 0 on top)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stack_views(views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Views `[..., C, h, w]` -> one image `[..., C, V*h, w]` (stacked along height, view 0 on top)."""
    return torch.cat(list(views), dim=-2)


def split_views(x: torch.Tensor, num_views: int) -> list[torch.Tensor]:
    """Inverse of `stack_views`: `[..., C, V*h, w]` -> `V` tensors `[..., C, h, w]`."""
    if x.shape[-2] % num_views:
        raise ValueError(f"height {x.shape[-2]} is not a multiple of {num_views} views")
    return list(x.chunk(num_views, dim=-2))
