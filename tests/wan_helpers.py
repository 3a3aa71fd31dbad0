"""Tiny Wan models for tests: ours (original key names) and the diffusers twin with the same weights."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

from worldtune.models.wan.convert import diffusers_to_original, original_config_to_diffusers
from worldtune.models.wan.dit import WanModel
from worldtune.models.wan.sizes import WanConfig, wan_config
from worldtune.models.wan.vace import WanVaceModel


def tiny_config(model_type: str = "t2v", **overrides) -> WanConfig:
    extra: dict = {}
    if model_type == "i2v":
        extra = {"in_dim": 20, "image_dim": 12}
    if model_type == "vace":
        extra = {"vace_layers": (0, 1), "vace_in_dim": 6}
    return wan_config("tiny", model_type=model_type, **{**extra, **overrides})


def build_ours(config: WanConfig) -> torch.nn.Module:
    return WanVaceModel(config) if config.model_type == "vace" else WanModel(config)


def diffusers_twin(config: WanConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(diffusers model with random weights, our model loaded with the same weights)."""
    torch.manual_seed(seed)
    kwargs = original_config_to_diffusers(config.to_dict())
    cls = WanVACETransformer3DModel if kwargs.pop("_class_name") == "WanVACETransformer3DModel" else WanTransformer3DModel
    theirs = cls(**kwargs).eval()
    with torch.no_grad():  # diffusers zero-inits some outputs: randomise everything so parity means something
        for param in theirs.parameters():
            param.copy_(torch.randn_like(param) * 0.2)
    ours = build_ours(config).eval()
    missing, unexpected = ours.load_state_dict(diffusers_to_original(theirs.state_dict()), strict=True)
    assert not missing and not unexpected
    return theirs, ours


@torch.no_grad()
def run_forward(model: torch.nn.Module, seed: int = 7) -> torch.Tensor:
    """One forward on a small latent grid, whatever the variant: a loader's test runs what it loaded
    (a tensor left on meta, or a wrong dtype, fails here rather than at a user's first step)."""
    config = model.config
    dtype = model.patch_embedding.weight.dtype
    g = torch.Generator().manual_seed(seed)
    channels = config.in_dim
    kwargs = {}
    if config.model_type == "i2v":
        channels = config.in_dim - 4
        kwargs["y"] = torch.randn(1, 4, 2, 4, 4, generator=g).to(dtype)
        kwargs["clip_fea"] = torch.randn(1, 3, config.image_dim, generator=g).to(dtype)
    if config.model_type == "vace":
        vace_in = config.vace_in_dim if config.vace_in_dim is not None else config.in_dim
        kwargs["vace_context"] = torch.randn(1, vace_in, 2, 4, 4, generator=g).to(dtype)
    x = torch.randn(1, channels, 2, 4, 4, generator=g).to(dtype)
    context = torch.randn(1, 3, config.text_dim, generator=g).to(dtype)
    out = model(x, torch.tensor([500.0]), context, **kwargs)
    assert out.shape == (1, config.out_dim, 2, 4, 4) and torch.isfinite(out).all()
    return out
