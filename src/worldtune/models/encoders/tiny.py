"""Tiny random encoders and an in-process tokenizer: real code paths, CPU sizes, no downloads.

Sizes are the ones diffusers and transformers use in their own tests. Weights are drawn from a
private RNG (`seed`), so building one never disturbs the caller's random state.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLWan
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

from .clip import ClipImageEncoder
from .text import WanTextEncoder
from .vae import WanVAE

TINY_VOCAB_SIZE = 99

_WORDS = (
    "a the robot arm hand gripper picks up puts down places moves pushes pulls opens closes "
    "red green blue yellow cube block cup bowl drawer door towel table left right into onto on "
    "from to of and slowly quickly camera view scene video . ,"
).split()


def tiny_vae_config(version: str = "2.1", *, normalised: bool = True) -> dict[str, Any]:
    """`AutoencoderKLWan` kwargs for a tiny Wan2.1 (z 16, 4x8x8) or Wan2.2 (z 48, 4x16x16) VAE.

    `normalised=True` sets non-trivial `latents_mean` / `latents_std` so that tests see the
    normalisation act.
    """
    common = dict(
        base_dim=3, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    if version == "2.1":
        cfg = dict(common, z_dim=16)
    elif version == "2.2":
        cfg = dict(
            common,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
        )
    else:
        raise ValueError(f"version must be '2.1' or '2.2', got {version!r}")
    z = cfg["z_dim"]
    if normalised:
        cfg["latents_mean"] = torch.linspace(-0.5, 0.5, z).tolist()
        cfg["latents_std"] = torch.linspace(0.5, 2.0, z).tolist()
    else:
        cfg["latents_mean"], cfg["latents_std"] = [0.0] * z, [1.0] * z
    return cfg


def tiny_wan_vae(version: str = "2.1", *, seed: int = 0, normalised: bool = True, **options: Any) -> WanVAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**tiny_vae_config(version, normalised=normalised))
    return WanVAE(vae, **options)


def tiny_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with UMT5's special ids (`<pad>`=0, `</s>`=1, `<unk>`=2) that appends
    `</s>` like the real one; lower-cases and splits on whitespace and punctuation."""
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in dict.fromkeys(words or _WORDS)])}
    if len(vocab) > TINY_VOCAB_SIZE:
        raise ValueError(f"tiny vocabulary holds at most {TINY_VOCAB_SIZE} tokens, got {len(vocab)}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def tiny_umt5_config() -> UMT5Config:
    return UMT5Config(
        vocab_size=TINY_VOCAB_SIZE,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
    )


def tiny_text_encoder(*, seed: int = 0, **options: Any) -> WanTextEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(tiny_umt5_config())
    return WanTextEncoder(model, tiny_tokenizer(), **options)


def tiny_clip_config(patch_size: int = 1) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=4,
        projection_dim=4,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        intermediate_size=16,
        patch_size=patch_size,
    )


def tiny_clip(*, seed: int = 0, with_projection: bool = True, patch_size: int = 1,
              **options: Any) -> ClipImageEncoder:
    model_cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(tiny_clip_config(patch_size))
    return ClipImageEncoder(model, **options)
