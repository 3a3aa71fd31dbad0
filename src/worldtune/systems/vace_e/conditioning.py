"""Everything the VACE-E DiT reads, encoded from a batch: latents, VACE context, VACE-E condition.

VACE's control (Wan2.1 `vace_encode_frames` / `vace_encode_masks`, DiffSynth's VACE unit): the
control video is split by the binarised mask into the part to keep (`inactive`, mask 0) and the
part to generate (`reactive`, mask 1); both are VAE-encoded (2 x 16 channels) and the pixel mask
is folded into the latent grid (one channel per pixel of a VAE-stride x VAE-stride cell: 64),
96 channels in all. A reference image (here the embodiment image) is one more latent frame in front
of the control (its reactive half and its mask zero) and of the video latents, as DiffSynth trains
it; generation drops that frame.

The mask enters in [0, 1] in training and at inference alike (the original left it in [-1, 1] on
its batched training path, so `inactive` / `reactive` were wrong there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from worldtune.systems.wan_parts import pad_text


@dataclass
class Encoded:
    """One batch, ready for the DiT."""

    latents: torch.Tensor  # [B, 16, refs + T', h, w] clean target (reference frame first)
    vace_context: torch.Tensor  # [B, 96, refs + T', h, w]
    text: torch.Tensor  # [B, text_len, text_dim] for the DiT's cross-attention
    condition: dict[str, torch.Tensor] | None  # the VACE-E branch's inputs (None: branch off)
    reference_frames: int


def fold_mask(mask: torch.Tensor, stride: int, latent_frames: int) -> torch.Tensor:
    """Pixel mask [B, 1, T, H, W] -> [B, stride^2, T', H/stride, W/stride]: each latent cell's
    stride x stride pixels as channels, frames resampled to the latent count (nearest-exact)."""
    b, _, t, h, w = mask.shape
    cells = mask.reshape(b, t, h // stride, stride, w // stride, stride)
    cells = cells.permute(0, 3, 5, 1, 2, 4).reshape(b, stride * stride, t, h // stride, w // stride)
    return F.interpolate(cells, size=(latent_frames, h // stride, w // stride), mode="nearest-exact")


@torch.no_grad()
def vace_context(vae, control: torch.Tensor, mask: torch.Tensor,
                 reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context [B, 2z + s^2, refs + T', h, w], reference latent [B, z, 1, h, w] or None).
    control [B, 3, T, H, W] in [-1, 1]; mask [B, 1, T, H, W] in [0, 1]; reference [B, 3, 1, H, W]."""
    binary = (mask > 0.5).to(control.dtype)
    inactive = vae.encode(control * (1 - binary)).float()
    reactive = vae.encode(control * binary).float()
    z = torch.cat([inactive, reactive], dim=1)
    folded = fold_mask(binary.float(), vae.spatial_stride, z.shape[2])
    ref_latent = None
    if reference is not None:
        ref_latent = vae.encode(reference).float()
        z = torch.cat([torch.cat([ref_latent, torch.zeros_like(ref_latent)], dim=1), z], dim=2)
        folded = torch.cat([torch.zeros_like(folded[:, :, :1]), folded], dim=2)
    return torch.cat([z, folded.to(z.dtype)], dim=1), ref_latent


def text_features(embeds: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 outputs (each [len_i, dim]) -> ([B, length, dim] zero-padded, valid [B, length])."""
    padded = pad_text(embeds, length)
    lengths = torch.tensor([min(e.shape[0], length) for e in embeds], device=padded.device)
    return padded, torch.arange(length, device=padded.device)[None] < lengths[:, None]


def condition(batch: dict[str, Any], text: torch.Tensor, text_mask: torch.Tensor,
              embodiment: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The branch's inputs from a collated batch (`collate_vace_e`) and the encoded prompt / image."""
    cond = {"text": text, "text_mask": text_mask, "hand_motion": batch["hand_motion"].float(),
            "hand_mask": batch["hand_mask"].bool(), "objects": batch["objects"].float(),
            "object_ids": batch["object_ids"].long(), "object_mask": batch["object_mask"].bool()}
    if embodiment is not None:
        cond["embodiment"] = embodiment
        cond["embodiment_mask"] = batch["has_reference"].bool()[:, None].expand(embodiment.shape[:2]).contiguous()
    return cond


def drop_condition(cond: dict[str, torch.Tensor], dropped: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same condition with every token of the `dropped` samples ([B] bool) marked invalid: the
    branch then reads only its null token (the unconditional half of guidance)."""
    out = dict(cond)
    for key in [k for k in cond if k.endswith("_mask")]:
        keep = (~dropped).view(-1, *([1] * (cond[key].ndim - 1)))
        out[key] = cond[key] & keep
    return out


def swap_trajectories(cond: dict[str, torch.Tensor], donor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`cond` with the hand motion and objects of `donor` (task_alignment: another episode's)."""
    out = dict(cond)
    for key in ("hand_motion", "hand_mask", "objects", "object_ids", "object_mask"):
        out[key] = donor[key]
    return out
