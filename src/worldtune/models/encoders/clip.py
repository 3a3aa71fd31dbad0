"""Frozen CLIP vision tower returning the penultimate hidden states, as Wan i2v conditions on.

Upstream (`wan/modules/clip.py: CLIPModel.visual`): frames in [-1, 1] are resized straight to
224x224 with bicubic `F.interpolate` (no aspect-preserving crop, no antialias), mapped to [0, 1],
normalised with the OpenAI CLIP mean/std, and run through all but the last transformer block
(`use_31_block=True`), without the post-norm. In transformers terms that is
`model(..., output_hidden_states=True).hidden_states[-2]`, which is also what diffusers'
`WanImageToVideoPipeline.encode_image` returns (its preprocessing is `CLIPImageProcessor`'s
shortest-side resize + centre crop instead; `resize="center_crop"` gives that geometry).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from .common import (
    EncoderLoadError,
    FrozenModule,
    PathLike,
    empty_weights,
    find_component,
    find_file,
    load_into,
    missing_path_error,
    read_state_dict,
)
from .original import CLIP_VIT_H14_CONFIG, WAN_CLIP_FILE, wan_clip_to_hf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("stretch", "center_crop")


class ClipImageEncoder(FrozenModule):
    """`encode(images [B,3,H,W] in [-1,1]) -> [B, 1 + patches, hidden]` (hidden state `layer`)."""

    def __init__(
        self,
        model: CLIPVisionModel | CLIPVisionModelWithProjection,
        *,
        image_size: int | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        resize: str = "stretch",
        layer: int = -2,
    ) -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.model = model
        self.image_size = int(image_size or model.config.image_size)
        self.resize = resize
        self.layer = layer
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.freeze()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> normalised `pixel_values` [B, 3, S, S] in float32."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor in [-1, 1], got {shape}")
        x = images.float()
        size = self.image_size
        if self.resize == "center_crop":
            h, w = x.shape[-2:]
            scale = size / min(h, w)
            x = F.interpolate(
                x,
                size=(max(size, round(h * scale)), max(size, round(w * scale))),
                mode="bicubic",
                align_corners=False,
            )
            top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
            x = x[..., top : top + size, left : left + size]
        elif x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        x = x.mul(0.5).add(0.5)
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device))
        out = self.model(pixel_values=pixels.to(self.dtype), output_hidden_states=True)
        return out.hidden_states[self.layer]

    forward = encode

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        *,
        subfolder: str = "image_encoder",
        dtype: torch.dtype = torch.float16,
        device: str | torch.device | None = None,
        config: Mapping[str, Any] | None = None,
        allow_download: bool = False,
        **options: Any,
    ) -> ClipImageEncoder:
        """Load from a diffusers Wan i2v folder (`image_encoder/`), a transformers CLIP folder, an
        original Wan folder or file (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`),
        or, with `allow_download`, a hub id. `config` overrides the ViT-H/14 architecture assumed
        for an original file. Default dtype float16, as upstream (`clip_dtype`).
        """
        root = Path(path)
        folder = find_component(root, subfolder) if root.is_dir() else None
        if folder is not None:
            model = _load_hf(folder, dtype, _pick_class(folder / "config.json"))
        elif root.exists():
            weights = root if root.is_file() else find_file(root, [WAN_CLIP_FILE])
            if weights is None:
                raise missing_path_error(root, f"{subfolder}/config.json, config.json or {WAN_CLIP_FILE}")
            model = _load_original_clip(weights, config)
        elif allow_download:
            model = _load_hf(str(path), dtype, CLIPVisionModelWithProjection, subfolder, local=False)
        else:
            raise missing_path_error(path, "a CLIP vision folder or a Wan CLIP checkpoint file")
        model = model.to(device=device, dtype=dtype)
        return cls(model, **options)


def _pick_class(config_file: Path):
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as exc:
        raise EncoderLoadError(f"{config_file}: unreadable config: {exc}") from exc
    return (
        CLIPVisionModelWithProjection if "CLIPVisionModelWithProjection" in architectures else CLIPVisionModel
    )


def _load_hf(
    where: PathLike, dtype: torch.dtype, model_cls, subfolder: str | None = None, local: bool = True
):
    try:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return model_cls.from_pretrained(str(where), dtype=dtype, local_files_only=local, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the path
        raise EncoderLoadError(f"{where}: cannot load {model_cls.__name__}: {exc}") from exc


def _load_original_clip(path: Path, config: Mapping[str, Any] | None) -> CLIPVisionModelWithProjection:
    state = read_state_dict(path)
    try:
        state = wan_clip_to_hf(state)
    except KeyError as exc:
        raise EncoderLoadError(f"{path}: not a Wan CLIP checkpoint: {exc}") from exc
    if not state:
        raise EncoderLoadError(f"{path}: no `visual.*` weights (not a Wan CLIP checkpoint)")
    cfg = CLIPVisionConfig(**{**CLIP_VIT_H14_CONFIG, **(config or {})})
    with empty_weights():
        model = CLIPVisionModelWithProjection(cfg)
    load_into(model, state, path)
    return model.eval()
