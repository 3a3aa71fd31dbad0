"""`ActionEncoder`: per-frame action tokens (plus the instruction's text embedding) for the UNet context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn


class ActionEncoder(nn.Module):
    """`actions [B, T, action_dim]` (+ `text_emb [B, text_dim]`) -> `[B, T, hidden]`, one token per frame.

    MLP `action_dim -> widths[0] -> widths[1] -> hidden` with SiLU (Ctrl-World: `7 -> 1024 -> 1024 -> 1024`);
    the first two layers get Kaiming-normal (fan-in) init, as upstream. `hidden` is the UNet's
    `cross_attention_dim`.

    Text (`text_dim` set): the instruction's embedding is added to every frame token. `text_proj`:
    - `"repeat"`: tile it `hidden // text_dim` times (upstream: CLIP ViT-B/32's 512-d projection repeated
      twice to 1024). Parameter-free, so upstream checkpoints load. Needs `hidden % text_dim == 0`.
    - `"linear"`: a learned `Linear(text_dim, hidden)`.
    - `"auto"` (default): `"repeat"` when `hidden` is a multiple of `text_dim`, else `"linear"`.
    """

    def __init__(
        self,
        action_dim: int,
        hidden: int,
        widths: Sequence[int] = (1024, 1024),
        text_dim: int | None = None,
        text_proj: Literal["auto", "repeat", "linear"] = "auto",
    ) -> None:
        super().__init__()
        if len(widths) != 2:
            raise ValueError(f"widths must hold the two hidden widths, got {widths}")
        self.action_dim, self.hidden, self.text_dim = action_dim, hidden, text_dim
        self.action_encode = nn.Sequential(
            nn.Linear(action_dim, widths[0]),
            nn.SiLU(),
            nn.Linear(widths[0], widths[1]),
            nn.SiLU(),
            nn.Linear(widths[1], hidden),
        )
        for i in (0, 2):
            nn.init.kaiming_normal_(self.action_encode[i].weight, mode="fan_in", nonlinearity="relu")

        self.text_mode: str | None = None
        self.text_linear: nn.Linear | None = None
        if text_dim is not None:
            if text_proj == "auto":
                text_proj = "repeat" if hidden % text_dim == 0 else "linear"
            if text_proj == "repeat":
                if hidden % text_dim:
                    raise ValueError(f"cannot repeat text_dim={text_dim} to hidden={hidden}")
            elif text_proj == "linear":
                self.text_linear = nn.Linear(text_dim, hidden)
            else:
                raise ValueError(f"unknown text_proj {text_proj!r}")
            self.text_mode = text_proj

    def embed_text(self, text_emb: torch.Tensor) -> torch.Tensor:
        """`[B, text_dim] -> [B, 1, hidden]`."""
        if self.text_mode is None:
            raise ValueError("this ActionEncoder was built without text_dim")
        if self.text_linear is not None:
            out = self.text_linear(text_emb)
        else:
            out = text_emb.repeat(1, self.hidden // text_emb.shape[-1])
        return out[:, None]

    def forward(self, actions: torch.Tensor, text_emb: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.action_encode(actions.to(self.action_encode[0].weight.dtype))
        if text_emb is not None:
            tokens = tokens + self.embed_text(text_emb.to(tokens.dtype))
        return tokens
