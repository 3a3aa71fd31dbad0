"""Ctrl-World: an action-conditioned, multi-view world model on Stable Video Diffusion's UNet.

- `FrameLevelUNet`: diffusers' `UNetSpatioTemporalConditionModel` (same weights) whose `forward` can
  give each frame's spatial cross-attention only its own context token(s) (`frame_level=True`).
- `ActionEncoder`: per-frame action MLP (+ the instruction's text embedding) -> one token per frame.
- `CtrlWorldModel`: history frames + channel-concatenated current frame + per-frame actions -> the
  UNet's output; `CtrlWorldConfig` holds its conditioning settings. Its EDM loss and sampler are in
  `worldtune.systems.ctrl_world.world_edm` (over `worldtune.diffusion.edm`).
- `stack_views` / `split_views`.

Shapes: latents `[B, H + F, C, h, w]` (H history frames, frame H = current observation), actions
`[B, H + F, A]`; the model predicts frames `H .. H+F-1` (the current frame included, as upstream).
Multi-view images are the views stacked along height.
"""

from .action import ActionEncoder
from .model import SVD_LATENT_SCALE, CtrlWorldConfig, CtrlWorldModel
from .unet import FrameLevelUNet, svd_unet_config, tiny_unet_config
from .views import split_views, stack_views

__all__ = [
    "SVD_LATENT_SCALE",
    "ActionEncoder",
    "CtrlWorldConfig",
    "CtrlWorldModel",
    "FrameLevelUNet",
    "split_views",
    "stack_views",
    "svd_unet_config",
    "tiny_unet_config",
]
