"""VACE: hint blocks that read a control video and add their hints to chosen DiT blocks.

Upstream (`wan/modules/vace_model.py`): the control latents go through `vace_patch_embedding`,
then through `vace_blocks` (full DiT blocks); block 0 first adds `before_proj(c)` to the video
tokens; each VACE block emits `after_proj(c)` as the hint for main block `vace_layers[i]`, added
after that block times `context_scale`. Both projections start at zero, so a fresh VACE model
equals its base model.
"""

from __future__ import annotations

import torch
from torch import nn

from worldtune.models.wan.dit import BlockInputs, WanModel, WanOutput
from worldtune.models.wan.layers import WanBlock


class VaceBlock(WanBlock):
    def __init__(self, *args, first: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        dim = self.modulation.shape[-1]
        if first:
            self.before_proj = nn.Linear(dim, dim)
        self.after_proj = nn.Linear(dim, dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, inputs: BlockInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(next c, hint). The module's own forward, so that what wraps a block's call (FSDP2's
        unshard, activation checkpointing) wraps this one too."""
        if hasattr(self, "before_proj"):
            c = self.before_proj(c) + x
        c = WanBlock.forward(self, c, inputs.e0, inputs.context, inputs.rope, inputs.image_context, inputs.mask)
        return c, self.after_proj(c.to(self.after_proj.weight.dtype))


class WanVaceModel(WanModel):
    def _make_extra_modules(self) -> None:
        c = self.config
        self.vace_layers = c.resolved_vace_layers
        if 0 not in self.vace_layers or any(i >= c.num_layers for i in self.vace_layers):
            raise ValueError(f"vace_layers {self.vace_layers} must include 0 and lie below {c.num_layers}")
        self.vace_blocks = nn.ModuleList(
            VaceBlock(c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps, first=i == 0)
            for i in range(len(self.vace_layers))
        )
        vace_in = c.vace_in_dim if c.vace_in_dim is not None else c.in_dim
        self.vace_patch_embedding = nn.Conv3d(vace_in, c.dim, kernel_size=c.patch_size, stride=c.patch_size)

    def _init_rule(self, module_name: str, module: nn.Module, attr: str):
        if module_name.startswith("vace_blocks.") and module_name.endswith((".before_proj", ".after_proj")):
            return lambda t, g: t.zero_()  # the hints start at zero: a fresh VACE model is its base model
        return super()._init_rule(module_name, module, attr)

    def vace_hints(self, vace_context: torch.Tensor, tokens: torch.Tensor, inputs: BlockInputs) -> dict[int, torch.Tensor]:
        """Hint per main-block index from the control latents [B, vace_in_dim, F, H, W]."""
        c = self.vace_patch_embedding(vace_context.to(self.vace_patch_embedding.weight.dtype))
        c = c.flatten(2).transpose(1, 2).contiguous()
        if c.shape[1] != tokens.shape[1]:
            raise ValueError(f"vace_context gives {c.shape[1]} tokens, the video {tokens.shape[1]}")
        hints = {}
        for layer, block in zip(self.vace_layers, self.vace_blocks, strict=True):
            c, hints[layer] = block(c, tokens, inputs)
        return hints

    def collect_hints(self, tokens: torch.Tensor, inputs: BlockInputs, grid: tuple[int, int, int],
                      vace_context: torch.Tensor | None, vace_context_scale: float,
                      **extra) -> dict[int, torch.Tensor]:
        """{main-block index: hint}; subclasses (VACE-E) add their own from `extra` forward kwargs."""
        if extra:
            raise TypeError(f"{type(self).__name__}.forward got unexpected arguments {sorted(extra)}")
        if vace_context is None:
            return {}
        return {i: h * vace_context_scale for i, h in self.vace_hints(vace_context, tokens, inputs).items()}

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | list[torch.Tensor], *,
                vace_context: torch.Tensor | None = None, vace_context_scale: float = 1.0,
                extra_hints: dict[int, torch.Tensor] | None = None, hint_scale: float = 1.0,
                frame_offset: int = 0, return_hidden_states: bool = False, **kwargs) -> torch.Tensor | WanOutput:
        """`kwargs`: `y`, `clip_fea`, and what a subclass's `collect_hints` reads (VACE-E's `vace_e`)."""
        tokens, grid = self.embed_video(x, kwargs.pop("y", None))
        e, e0 = self.embed_time(timestep, tokens.shape[1])
        inputs = self.block_inputs(e0, context, grid, tokens.device, kwargs.pop("clip_fea", None), frame_offset)
        hints = self.collect_hints(tokens, inputs, grid, vace_context, vace_context_scale, **kwargs)
        for index, extra in (extra_hints or {}).items():
            hints[index] = hints[index] + extra * hint_scale if index in hints else extra * hint_scale
        tokens, hidden = self.run_blocks(tokens, inputs, hints, 1.0, return_hidden_states)
        sample = self.unpatchify(self.head(tokens, e), grid).float()
        return WanOutput(sample, hidden, grid) if return_hidden_states else sample
