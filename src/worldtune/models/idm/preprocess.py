"""What the IDM sees, and how its mask reaches a video VAE's latent grid.

- `preprocess`: frames in [-1, 1] (the project's video convention) -> the network's input, upstream's
  `Resize((518, 518))` (the whole tiled frame, aspect not kept) and ImageNet normalisation.
- `latent_mask`: Vidarc's `U(x)` for its embodiment-aware loss, the IDM's soft mask brought to the
  latent grid of a video VAE (upstream does not publish how; our choice is documented there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PUBLISHED_IMAGE_SIZE = 518


def preprocess(frames: torch.Tensor, image_size: int = PUBLISHED_IMAGE_SIZE) -> torch.Tensor:
    """`[B, 3, H, W]` in [-1, 1] -> `[B, 3, image_size, image_size]`, ImageNet-normalised.

    Bilinear with antialiasing, as torchvision's `Resize` on tensors; float32 whatever comes in."""
    x = (frames.float() + 1) / 2
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def latent_mask(idm: torch.nn.Module, video: torch.Tensor, latent_shape: tuple[int, int, int],
                temporal_stride: int = 4, image_size: int = PUBLISHED_IMAGE_SIZE,
                batch_frames: int = 16) -> torch.Tensor:
    """`U(x)`: the IDM's soft mask of every frame of `video [B, 3, T, H, W]` (in [-1, 1]) on the
    latent grid `latent_shape = (T', h, w)` of a video VAE -> `[B, 1, T', h, w]` in [0, 1].

    Our choice (upstream's is not public), so that the weight means "how much of this latent cell
    is robot":
    - space: the mask is computed at the network's size, resized back to the frame and averaged
      over each latent cell's pixels (area pooling), so a cell half covered by the arm gets 0.5;
    - time: a causal video VAE (Wan: `temporal_stride` 4) encodes frame 0 alone and then groups of
      `temporal_stride` frames; each latent frame takes the mean over the frames it encodes.
    The soft mask (not the hard one) is used: it is smooth where the network is unsure.
    """
    b, _, t, h, w = video.shape
    lt, lh, lw = latent_shape
    expected = 1 + -(-(t - 1) // temporal_stride) if temporal_stride > 1 else t
    if lt != expected:
        raise ValueError(f"a video of {t} frames gives {expected} latent frames at temporal stride "
                         f"{temporal_stride}, not {lt}")
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    masks = []
    for chunk in frames.split(batch_frames):
        soft = idm.mask(preprocess(chunk, image_size))  # [n, 1, S, S]
        masks.append(F.interpolate(soft.float(), size=(h, w), mode="bilinear", align_corners=False))
    per_frame = F.adaptive_avg_pool2d(torch.cat(masks), (lh, lw)).reshape(b, t, lh, lw)
    groups = [per_frame[:, :1]] + list(per_frame[:, 1:].split(temporal_stride, dim=1)) if temporal_stride > 1 \
        else list(per_frame.split(1, dim=1))
    return torch.stack([g.mean(dim=1) for g in groups], dim=1)[:, None]
