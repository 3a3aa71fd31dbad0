"""Frozen encoders: Wan VAE (2.1 / 2.2), UMT5 text, CLIP vision, and an identity pixel space.

All are `nn.Module`s that stay in eval mode with frozen parameters and run under `no_grad`; each
loads from a local folder (original Wan release files or diffusers / transformers layouts) and has
a tiny random constructor for tests.
"""

from .clip import CLIP_MEAN, CLIP_STD, ClipImageEncoder
from .common import EncoderLoadError, FrozenModule, LatentSpace
from .original import hf_clip_to_wan, hf_t5_to_wan, wan_clip_to_hf, wan_t5_to_hf
from .pixel import PixelLatents
from .prompt_cache import PromptCache
from .text import TEXT_LEN, WanTextEncoder, clean_prompt, pad_to
from .tiny import (
    tiny_clip,
    tiny_clip_config,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_umt5_config,
    tiny_vae_config,
    tiny_wan_vae,
)
from .vae import WanVAE, load_original_vae

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TEXT_LEN",
    "ClipImageEncoder",
    "EncoderLoadError",
    "FrozenModule",
    "LatentSpace",
    "PixelLatents",
    "PromptCache",
    "WanTextEncoder",
    "WanVAE",
    "clean_prompt",
    "hf_clip_to_wan",
    "hf_t5_to_wan",
    "load_original_vae",
    "pad_to",
    "tiny_clip",
    "tiny_clip_config",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_umt5_config",
    "tiny_vae_config",
    "tiny_wan_vae",
    "wan_clip_to_hf",
    "wan_t5_to_hf",
]
