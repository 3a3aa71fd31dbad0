"""VVAE latent action model: a VQ-VAE over transitions between consecutive video-VAE latent frames.

Shapes at the seed defaults (`LamConfig()`): a latent frame `[B, 16, 64, 64]` is patchified by
`VVAEtoLAMAdapter` (Conv2d, kernel = stride = 4) into 16x16 = 256 patch tokens of width 256.

- Encoder: `num_codes` learned action queries + the patches of x_t and x_{t+1} (projected to
  `embed_dim`, learned per-patch position and per-frame embeddings) through `encoder_depth` pre-norm
  blocks; the query outputs are projected to `codebook_dim` and quantised (`VectorQuantizer`: one
  codebook of `num_embeddings` codes shared by the `num_codes` slots, straight-through estimator,
  separate codebook / commitment losses, dead-code restart).
- Decoder: the patches of x_t (own projection and position embeddings) + the quantised codes
  (projected to `embed_dim`, with a per-slot embedding) through `decoder_depth` blocks; the patch
  tokens are projected back to `patch_dim` and unpatchified by `LAMtoVVAEAdapter` (ConvTranspose2d).
- An action is the code tuple; `action_ids` maps it to one integer in [0, num_embeddings ** num_codes)
  (1,728 at the defaults), `action_codes` maps back, `codes_to_quantised` gives the decoder input.

`predict_delta` (default on): the decoder outputs x_{t+1} - x_t, which is added to x_t. Consecutive
latent frames are mostly equal, so the copy of x_t comes for free instead of being relearned through
the patchify / transformer / unpatchify path; the decoder's output stays small, and the only thing
left to explain is the change, which is what the action codes should carry.

The latents are not normalised (the seed: VVAE latents need no layer norm); the LayerNorms are the
transformer's own. The transformer blocks are `nn.ModuleList`s (`encoder.blocks`, `decoder.blocks`),
one module per layer, for FSDP wrapping and activation checkpointing. See `quantizer` for how the
dead-code restart behaves under data parallelism (training runs restart from outside the model,
`recipes/lam_restart.py`).
"""

from .config import LamConfig
from .model import (
    LamDecoder,
    LamEncoder,
    LamOutput,
    LAMtoVVAEAdapter,
    VVAELatentActionVQVAE,
    VVAEtoLAMAdapter,
)
from .quantizer import VectorQuantizer, VQOutput

__all__ = [
    "LAMtoVVAEAdapter",
    "LamConfig",
    "LamDecoder",
    "LamEncoder",
    "LamOutput",
    "VQOutput",
    "VVAELatentActionVQVAE",
    "VVAEtoLAMAdapter",
    "VectorQuantizer",
]
