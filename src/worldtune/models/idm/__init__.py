"""Vidar's masked inverse dynamics model (IDM): frame -> robot action, through a learned pixel mask.

Structure and parameter names follow the released code (`idm/idm/{idm,unet,resnet}.py`) so that the
published `idm.pt` loads (`load_idm_state`):

- `IDM` (`train_mean`, `train_std` buffers) wraps `MaskedRegressor` as `model`;
- `model.mask_model`: `MaskUNet` (3 -> 1 channels, base width 64, 5 max-pool levels, bilinear
  `align_corners=True` upsampling to each skip's size, 1x1 output conv);
- `model.resnet_model`: `ResNetRegressor`, ResNet-50 bottlenecks [3, 4, 6, 3] from scratch,
  `fc` 2048 -> output_dim.

Forward: `m = (1 + tanh(unet(x))) / 2`; the regressor sees `x * hard(m)` with a straight-through
gradient into `m`; its output is de-normalised with the stored statistics (see `IDM`). The loss
(Huber on normalised actions + lambda * mean |m|) belongs to the recipe, not here.
"""

from .config import IDMConfig
from .load import load_idm_state
from .model import IDM, MaskedRegressor, soft_mask, straight_through
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, PUBLISHED_IMAGE_SIZE, latent_mask, preprocess
from .resnet import BottleneckBlock, ResNetRegressor
from .unet import MaskUNet

__all__ = [
    "IDM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PUBLISHED_IMAGE_SIZE",
    "BottleneckBlock",
    "IDMConfig",
    "MaskUNet",
    "MaskedRegressor",
    "ResNetRegressor",
    "latent_mask",
    "load_idm_state",
    "preprocess",
    "soft_mask",
    "straight_through",
]
