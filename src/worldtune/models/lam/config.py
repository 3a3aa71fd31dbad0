"""`LamConfig`: sizes of the VVAE latent action model (an OmegaConf-friendly config section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LamConfig:
    """Hyper-parameters of `VVAELatentActionVQVAE`; names and defaults follow the seed.

    Defaults: VVAE latents `[B, 16, 64, 64]`, 4x4 patches (16x16 = 256 patches of width 256), a
    512-wide transformer of 3 + 3 blocks, and 3 codes from a 12-entry codebook per action
    (12^3 = 1,728 discrete actions).
    """

    in_channels: int = 16
    latent_size: int = 64  # H = W of the latent frames
    adapter_patch: int = 4  # Conv2d kernel = stride of the input / output adapters
    patch_dim: int = 256  # adapter output channels = width of a patch token
    embed_dim: int = 512
    num_heads: int = 8
    encoder_depth: int = 3
    decoder_depth: int = 3
    mlp_ratio: float = 4.0
    num_codes: int = 3  # codes per action
    num_embeddings: int = 12  # codebook size; num_embeddings ** num_codes actions
    codebook_dim: int = 128
    commitment_weight: float = 0.25
    # Training forward calls a code may go unused before it is restarted from an encoder output;
    # 0 disables the restart.
    dead_code_threshold: int = 100
    # The decoder predicts x_{t+1} - x_t, which is added to x_t (see the package docstring).
    predict_delta: bool = True
    dropout: float = 0.0

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.latent_size // self.adapter_patch

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_actions(self) -> int:
        return self.num_embeddings**self.num_codes

    def validate(self) -> None:
        if self.latent_size % self.adapter_patch:
            raise ValueError(f"latent_size {self.latent_size} is not a multiple of adapter_patch {self.adapter_patch}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.num_codes < 1 or self.num_embeddings < 2:
            raise ValueError("num_codes must be >= 1 and num_embeddings >= 2")
        if self.dead_code_threshold < 0:
            raise ValueError("dead_code_threshold must be >= 0")

    @classmethod
    def tiny(cls, **overrides) -> LamConfig:
        """A ~0.2M-parameter model for CPU tests (4 x 16 x 16 latents, 16 patches of width 32)."""
        values = dict(
            in_channels=4, latent_size=16, adapter_patch=4, patch_dim=32, embed_dim=64, num_heads=4,
            encoder_depth=2, decoder_depth=2, codebook_dim=16,
        )
        values.update(overrides)
        return cls(**values)
